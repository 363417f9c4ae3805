// The spacesim page: sign in, list spaces, join one, hear it, and act as its rules allow.
// Everything goes through the documented protocol (docs/protocol.md); the server decides,
// the page shows the server's answer (a refusal's reason goes to the notice line).

import { Api, ApiError } from "./api.js";
import { Audio } from "./rtc.js";

const REACTIONS = ["💯", "✋", "👍", "👏", "😂", "❤️", "🔥", "🙏", "😢", "🎉"];
const SPEAKING = 0.01; // RMS above which a slot counts as speaking
const STAGE_ROLES = ["host", "cohost", "speaker"];

const api = new Api();
const $ = (id) => document.getElementById(id);

// h("button", {onclick, class: "x"}, "text", child...) -> an element
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  el.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

function notice(text, kind = "info") {
  const el = $("notice");
  el.textContent = text;
  el.dataset.kind = kind;
}

// Run an API call from a button; a refusal shows its reason and code.
async function attempt(fn) {
  try {
    return await fn();
  } catch (err) {
    notice(`${err.message}${err.code ? ` (${err.code})` : ""}`, "error");
    return undefined;
  }
}

// ------------------------------------------------------------------ sign in and lobby

async function signIn(event) {
  event.preventDefault();
  const user = $("login-user").value.trim();
  const token = $("login-token").value.trim();
  const ok = await attempt(async () => {
    if (token) api.setToken(token);
    else await api.devLogin(user, $("login-moderator").checked);
    return true;
  });
  if (!ok) return;
  sessionStorage.setItem("spacesim-login", JSON.stringify({ user, token, moderator: $("login-moderator").checked }));
  showLobby();
}

let lobbyTimer = null;

function showLobby() {
  $("login").hidden = true;
  $("room").hidden = true;
  $("lobby").hidden = false;
  $("whoami").textContent = `${api.user}${api.grants.includes("moderate") ? " (moderator)" : ""}`;
  const wanted = new URLSearchParams(location.hash.slice(1)).get("space");
  if (wanted) {
    enterRoom(wanted);
    return;
  }
  refreshLobby();
  clearInterval(lobbyTimer);
  lobbyTimer = setInterval(refreshLobby, 3000);
}

async function refreshLobby() {
  const data = await attempt(() => api.spaces());
  if (!data) return;
  const rows = data.spaces.map((s) =>
    h(
      "li",
      { dataset: { space: s.id, status: s.status } },
      h("span", { class: `badge ${s.status}` }, s.status),
      h("strong", {}, s.title || s.id),
      ` hosted by ${s.host} · ${s.counts.participants} here`,
      s.scheduled_for ? ` · for ${new Date(s.scheduled_for * 1000).toLocaleString()}` : "",
      h("button", { onclick: () => enterRoom(s.id, s.title) }, s.host === api.user ? "Open" : "Join"),
    ),
  );
  $("spaces").replaceChildren(...(rows.length ? rows : [h("li", {}, "No live or scheduled spaces.")]));
}

async function createSpace(event) {
  event.preventDefault();
  const body = { title: $("new-title").value.trim(), captions: $("new-captions").checked };
  const minutes = Number($("new-in").value);
  if (minutes > 0) body.scheduled_for = Date.now() / 1000 + minutes * 60;
  const space = await attempt(() => api.call("POST", "/v1/spaces", body));
  if (space) enterRoom(space.id, body.title);
}

// ------------------------------------------------------------------ the room

let room = null; // {id, space, audio, ws, slots, reactions, captions, reports, timers}

async function enterRoom(id, title = "") {
  clearInterval(lobbyTimer);
  location.hash = `space=${id}`;
  $("lobby").hidden = true;
  $("room").hidden = false;
  const here = { id, title, space: null, audio: null, ws: null, holders: [], reports: [], partial: {}, timers: [], over: false };
  room = here;
  notice("Joining…");
  const space = await attempt(() => api.space(id));
  if (room !== here) return; // left while asking
  if (!space) return leaveRoom(false, true);
  here.space = space;
  follow();
  here.audio = new Audio(api, id);
  const joined = await attempt(() => here.audio.join(space.slots));
  if (room !== here || here.over) return; // left, removed or ended while joining
  if (!joined) return render();
  here.space = joined.space;
  notice(`Joined as ${joined.role}.`);
  watchAudio(here);
  await syncMic();
  here.timers.push(setInterval(pollSlots, 500), setInterval(renderLevels, 100));
  refreshListeners();
  render();
}

// A connection that drops (the network, a server restart) is joined again with a new
// offer, as docs/protocol.md says: the role is kept. Chromium reports "disconnected"
// within seconds of the other side going quiet, "failed" later.
function watchAudio(here) {
  const pc = here.audio.pc;
  pc.addEventListener("connectionstatechange", () => {
    if (pc.connectionState !== "disconnected" && pc.connectionState !== "failed") return;
    setTimeout(() => {
      if (room === here && !here.over && here.audio.pc === pc && pc.connectionState !== "connected") rejoinAudio(here);
    }, 2000);
  });
}

async function rejoinAudio(here) {
  if (here.rejoining) return;
  here.rejoining = true;
  notice("Reconnecting…");
  here.audio.close();
  here.audio = new Audio(api, here.id);
  try {
    const joined = await here.audio.join(here.space.slots);
    if (room !== here || here.over) return;
    here.space = joined.space;
    notice("Reconnected.");
    watchAudio(here);
    await syncMic();
    render();
  } catch (err) {
    // the server is not back yet (no answer, or a 5xx): try again; a refusal is final
    const retry = !(err instanceof ApiError) || err.status >= 500;
    notice(`${err.message}${err.code ? ` (${err.code})` : ""}`, "error");
    if (retry) setTimeout(() => room === here && !here.over && rejoinAudio(here), 2000);
  } finally {
    here.rejoining = false;
  }
}

function follow() {
  const ws = api.events(room.id);
  room.ws = ws;
  ws.onmessage = (msg) => onMessage(JSON.parse(msg.data));
  ws.onclose = async (ev) => {
    if (room?.ws !== ws || room.over) return;
    // 4401: the token expired; 4429: we sent too much; 1006: the connection dropped.
    // A normal close (1000) comes after an error message that says why (removed, ended).
    if (ev.code === 4401 || ev.code === 4429 || ev.code === 1006) {
      await new Promise((resolve) => setTimeout(resolve, 1000));
      if (ev.code === 4401 && api.devUser) await attempt(() => api.devLogin(api.devUser, api.devModerator));
      if (room?.ws === ws && !room.over) follow();
    }
  };
}

// At most one GET of the space in flight per burst of events (a mute_all, a crowd
// raising hands): the first event schedules it, the others ride along.
let refreshing = null;

function refreshSoon() {
  if (refreshing) return;
  refreshing = setTimeout(async () => {
    refreshing = null;
    if (!room || room.over) return;
    const space = await attempt(() => api.space(room.id));
    if (space && room && !room.over) {
      room.space = space;
      await syncMic();
      render();
    }
  }, 100);
}

function onMessage(msg) {
  if (!room) return;
  if (msg.type === "hello") {
    room.space = msg.space;
    render();
    return;
  }
  if (msg.type === "error") {
    if (msg.error === "removed" || msg.error === "space_ended") over(msg.reason ?? msg.error);
    return;
  }
  if (msg.type !== "event") return;
  const a = msg.attrs ?? {};
  switch (msg.kind) {
    case "reaction":
      addReaction(msg.participant, a.emoji);
      return;
    case "caption":
      addCaption(a);
      return;
    case "audience":
      if (room.space) Object.assign(room.space.counts, { participants: a.participants, listeners: a.listeners });
      refreshListeners();
      render();
      return;
    case "report_filed":
      room.reports.push({ id: a.report_id, target: msg.participant, reporter: msg.actor, reason: a.reason, type: a.target_type });
      render();
      return;
    case "removed":
      if (msg.participant === api.user) over(`You were ${a.reason === "blocked" ? "blocked" : "removed"} from the space.`);
      else refreshSoon();
      refreshListeners();
      return;
    case "space_ended":
      over("The space has ended.");
      return;
    case "participant_joined":
    case "participant_left":
      refreshListeners();
      break;
  }
  refreshSoon();
}

function over(text) {
  if (!room || room.over) return;
  room.over = true;
  room.timers.forEach(clearInterval);
  room.audio?.close();
  room.ws?.close();
  notice(text, "over");
  $("room").dataset.over = "true";
  render();
}

async function leaveRoom(post = true, keepNotice = false) {
  if (room && !room.over && post) await attempt(() => api.call("POST", `/v1/spaces/${room.id}/leave`));
  if (room) {
    room.over = true;
    room.timers.forEach(clearInterval);
    room.audio?.close();
    room.ws?.close();
  }
  room = null;
  delete $("room").dataset.over;
  delete $("room").dataset.audio;
  history.replaceState(null, "", location.pathname);
  if (!keepNotice) notice("");
  showLobby();
}

function myRole() {
  const me = room?.space?.stage.find((m) => m.user === api.user);
  return me ? me.role : "listener";
}

// On stage and the space live: the microphone goes into the publish section.
async function syncMic() {
  if (!room?.audio?.pc || room.over) return; // over: the connection is closed
  const onStage = STAGE_ROLES.includes(myRole()) && room.space.status !== "ended";
  const audio = room.audio;
  try {
    if (onStage) await audio.startMic();
    else await audio.stopMic();
  } catch (err) {
    if (room?.audio === audio && !room.over) notice(`microphone: ${err.message}`, "error");
  }
}

async function pollSlots() {
  try {
    room.holders = (await api.call("GET", `/v1/spaces/${room.id}/slots`)).slots;
  } catch {
    // the space ended or we left: the event stream says so
  }
}

// The first page of listeners (100), at most once a second however many join or leave.
let listing = null;

function refreshListeners() {
  if (listing || !room || room.over) return;
  const here = room;
  listing = setTimeout(async () => {
    listing = null; // events from now on schedule the next look
    const data = await attempt(() => api.call("GET", `/v1/spaces/${here.id}/participants?role=listener&limit=100`));
    if (data && room === here && !here.over) {
      here.listeners = data.participants.map((p) => p.user);
      render();
    }
  }, 1000);
}

function addReaction(user, emoji) {
  const item = h("li", { dataset: { user, emoji } }, `${user} ${emoji}`);
  $("reactions").prepend(item);
  while ($("reactions").children.length > 12) $("reactions").lastChild.remove();
}

function addCaption(a) {
  if (a.final) {
    delete room.partial[a.speaker];
    if (a.text) {
      $("captions").append(h("p", { dataset: { speaker: a.speaker } }, h("b", {}, a.speaker), ` ${a.text}`));
      while ($("captions").children.length > 8) $("captions").firstChild.remove();
    }
  } else {
    room.partial[a.speaker] = a.text;
  }
  $("partial").textContent = Object.entries(room.partial).map(([s, t]) => `${s}: ${t}…`).join("  ");
}

// Speaking: the server says who holds each slot; the page measures each slot's level.
function speakingUsers() {
  const out = new Set();
  if (!room?.audio) return out;
  const { slots, mic } = room.audio.levels();
  slots.forEach((level, k) => {
    if (level > SPEAKING && room.holders[k]) out.add(room.holders[k]);
  });
  if (mic > SPEAKING && !room.space.muted.includes(api.user)) out.add(api.user);
  return out;
}

function renderLevels() {
  if (!room?.audio) return;
  $("room").dataset.audio = room.audio.pc?.connectionState ?? "none"; // "connected": hearing
  const { slots, mic } = room.audio.levels();
  $("meters").replaceChildren(
    ...slots.map((level, k) =>
      h("meter", { min: 0, max: 0.3, value: level, title: `slot ${k + 1}: ${room.holders[k] ?? "nobody"}`, dataset: { slot: k, level: level.toFixed(4) } }),
    ),
    room.audio.mic ? h("meter", { min: 0, max: 0.3, value: mic, title: "your microphone", dataset: { mic: "", level: mic.toFixed(4) } }) : "",
  );
  const speaking = speakingUsers();
  for (const li of document.querySelectorAll("#stage li")) li.classList.toggle("speaking", speaking.has(li.dataset.user));
}

// ------------------------------------------------------------------ rendering

function render() {
  if (!room) return;
  const s = room.space;
  const me = api.user;
  const role = myRole();
  const mod = role === "host" || role === "cohost";
  $("room").dataset.role = role;
  if (!s) return;
  $("room-title").textContent = `${room.title || s.id} · hosted by ${s.host}`;
  $("room-status").textContent = `${s.status} · ${s.counts.participants} here · ${s.counts.listeners} listening${s.recording ? " · recording" : ""}${s.captions ? " · captions on" : ""}`;
  $("room").dataset.status = s.status;
  const act = (action, fields) => () => attempt(() => api.act(room.id, action, fields));
  const live = !room.over;

  // my controls
  const mine = [h("button", { id: "leave", onclick: () => leaveRoom() }, room.over ? "Back to spaces" : role === "host" ? "Leave (ends the space)" : "Leave")];
  if (live && role === "host") {
    if (s.status === "scheduled") mine.push(h("button", { onclick: () => attempt(() => api.call("POST", `/v1/spaces/${room.id}/start`)) }, "Start"));
    mine.push(h("button", { onclick: () => attempt(() => api.call("POST", `/v1/spaces/${room.id}/end`)) }, "End space"));
    mine.push(h("button", { onclick: act(s.captions ? "captions_off" : "captions_on") }, s.captions ? "Captions off" : "Captions on"));
  }
  if (live && mod) mine.push(h("button", { onclick: act("mute_all") }, "Mute all"));
  if (live && role === "listener") {
    const raised = s.hands.includes(me);
    mine.push(h("button", { id: "hand", onclick: act(raised ? "lower_hand" : "raise_hand") }, raised ? "Lower hand" : "Raise hand"));
    if (s.invites[me]) {
      mine.push(h("button", { onclick: act("accept_invite") }, `Accept ${s.invites[me]}'s invite`));
      mine.push(h("button", { onclick: act("decline_invite") }, "Decline invite"));
    }
  }
  if (live && STAGE_ROLES.includes(role)) {
    const muted = s.muted.includes(me);
    mine.push(h("button", { onclick: act(muted ? "unmute" : "mute", { target: me }) }, muted ? "Unmute me" : "Mute me"));
    if (role === "speaker") mine.push(h("button", { onclick: act("demote", { target: me }) }, "Step down"));
    if (role === "cohost") mine.push(h("button", { onclick: act("remove_cohost", { target: me }) }, "Step down as co-host"));
  }
  if (live) mine.push(h("button", { onclick: act("report", {}) }, "Report space"));
  $("controls").replaceChildren(...mine);
  $("react").replaceChildren(...(live ? REACTIONS.map((e) => h("button", { onclick: act("react", { emoji: e }), dataset: { emoji: e } }, e)) : []));

  // people: stage, hands, listeners
  const others = (user, theirRole) => {
    if (!live || user === me) return [];
    const b = [];
    if (mod && theirRole === "listener") b.push(h("button", { onclick: act("invite", { target: user }) }, "Invite"));
    if (mod && (theirRole === "speaker" || theirRole === "cohost") && !s.muted.includes(user)) b.push(h("button", { onclick: act("mute", { target: user }) }, "Mute"));
    if (mod && theirRole === "speaker") b.push(h("button", { onclick: act("demote", { target: user }) }, "To audience"));
    if (role === "host" && theirRole === "speaker") b.push(h("button", { onclick: act("add_cohost", { target: user }) }, "Make co-host"));
    if (role === "host" && theirRole === "cohost") b.push(h("button", { onclick: act("remove_cohost", { target: user }) }, "Remove co-host"));
    if (mod && theirRole !== "host") b.push(h("button", { onclick: act("remove", { target: user }) }, "Remove"));
    b.push(h("button", { onclick: act("block", { target: user }) }, "Block"));
    b.push(h("button", { onclick: act("report", { target: user }) }, "Report"));
    return b;
  };
  $("stage").replaceChildren(
    ...s.stage.map((m) =>
      h("li", { dataset: { user: m.user, role: m.role } }, h("span", { class: "name" }, m.user), h("span", { class: "role" }, m.role), s.muted.includes(m.user) ? h("span", { class: "muted" }, "muted") : "", ...others(m.user, m.role)),
    ),
  );
  $("hands").replaceChildren(
    ...s.hands.map((u) =>
      h("li", { dataset: { user: u } }, h("span", { class: "name" }, u), live && mod ? [h("button", { class: "approve", onclick: act("approve", { target: u }) }, "Approve"), h("button", { onclick: act("decline", { target: u }) }, "Decline")] : []),
    ),
  );
  $("hands-count").textContent = s.counts.hands;
  const listeners = (room.listeners ?? []).filter((u) => !s.stage.some((m) => m.user === u));
  $("listeners").replaceChildren(...listeners.map((u) => h("li", { dataset: { user: u } }, h("span", { class: "name" }, u), ...others(u, "listener"))));
  $("listeners-count").textContent = s.counts.listeners;

  // reports (the stage gets report_filed): a moderator resolves them; the host acts on them
  const moderator = api.grants.includes("moderate");
  const resolve = (r, action) => async () => {
    const body = { action, report: r.id, ...(r.type === "user" && action !== "dismiss" && action !== "end" ? { target: r.target } : {}) };
    if (await attempt(() => api.call("POST", `/v1/moderation/spaces/${room.id}`, body))) {
      r.done = `resolved: ${action}`;
      render();
    }
  };
  const handle = (r, action) => async () => {
    if (action === "dismiss" || (await attempt(() => api.act(room.id, action, { target: r.target })))) {
      r.done = `handled: ${action}`; // the host acted; only moderation resolves the report
      render();
    }
  };
  $("reports-box").hidden = room.reports.length === 0;
  $("reports").replaceChildren(
    ...room.reports.map((r) => {
      const what = r.type === "space" ? "the space" : r.target;
      const buttons = r.done || !live ? [h("span", { class: "done" }, r.done ?? "")] : moderator ? ["dismiss", "remove", "block", "end"].filter((a) => r.type === "user" || a === "dismiss" || a === "end").map((a) => h("button", { onclick: resolve(r, a) }, a)) : mod && r.type === "user" ? [h("button", { onclick: handle(r, "remove") }, "remove"), h("button", { onclick: handle(r, "block") }, "block"), h("button", { onclick: handle(r, "dismiss") }, "dismiss")] : [];
      return h("li", { dataset: { report: r.id } }, `#${r.id} ${r.reporter ?? "someone"} reported ${what}${r.reason ? `: ${r.reason}` : ""} `, ...buttons);
    }),
  );
  $("captions-box").hidden = !s.captions && $("captions").children.length === 0;
}

// ------------------------------------------------------------------ start

$("login-form").addEventListener("submit", signIn);
$("create-form").addEventListener("submit", createSpace);
$("sign-out").addEventListener("click", () => {
  sessionStorage.removeItem("spacesim-login");
  location.hash = "";
  location.reload();
});

// Expose a little state for tests and the curious (e.g. `spacesim.room.audio.received()`).
window.spacesim = {
  api,
  get room() {
    return room;
  },
};

(async () => {
  const saved = JSON.parse(sessionStorage.getItem("spacesim-login") ?? "null");
  if (saved) {
    const ok = await attempt(async () => {
      if (saved.token) api.setToken(saved.token);
      else await api.devLogin(saved.user, saved.moderator);
      return true;
    });
    if (ok) return showLobby();
  }
  $("login").hidden = false;
})();
