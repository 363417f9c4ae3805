// A browser probe (spacesim/load/browser.py injects this into a page of the server's
// origin): joins a space as a listener through the documented protocol, plays what it
// hears through <audio> elements (libwebrtc's NetEq only emits audio a sink pulls), and
// hands its measurements to the Python helper each second through take().
//
// Marks: the swarm's speakers put (magic "SSm1", sender id, seq, monotonic ns) in the last
// 20 bytes of every Opus packet's padding (spacesim/client/opus.py `mark`). The encoded
// transform (Chromium's createEncodedStreams, with encodedInsertableStreams) sees each
// received frame's bytes before NetEq does; its arrival is read on performance.now() and
// mapped to the server's monotonic clock (/healthz clock_ns), which on one machine is
// the speakers' clock.
window.spacesimProbe = (() => {
  const MAGIC = [0x53, 0x53, 0x6d, 0x31]; // "SSm1"
  const MARK_SIZE = 20;
  let token = null;
  let offsetNs = 0; // server monotonic ns - performance.now() ns
  let rttMs = NaN;
  let pc = null;
  let space = null;
  let marks = []; // [mid, sender, seq, t_ns, arrival_ns]
  const elements = [];

  async function call(method, path, body) {
    const headers = { "Content-Type": "application/json" };
    if (token) headers.Authorization = `Bearer ${token}`;
    const r = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const data = await r.json().catch(() => ({}));
    if (!r.ok) {
      const err = new Error(`${method} ${path}: ${r.status} ${JSON.stringify(data)}`);
      err.body = data;
      throw err;
    }
    return data;
  }

  // The offset from the round trip with the smallest RTT (its error is at most rtt/2).
  async function syncClock(tries) {
    let best = Infinity;
    for (let i = 0; i < tries; i++) {
      const t0 = performance.now();
      const h = await (await fetch("/healthz", { cache: "no-store" })).json();
      const t1 = performance.now();
      if (t1 - t0 < best) {
        best = t1 - t0;
        offsetNs = h.clock_ns - ((t0 + t1) / 2) * 1e6;
      }
    }
    rttMs = best;
  }

  function markOf(bytes) {
    const n = bytes.length;
    if (n < 3 + MARK_SIZE || (bytes[0] & 3) !== 3) return null;
    if (!(bytes[1] & 0x40) || !(bytes[1] & 0x3f) || bytes[2] !== MARK_SIZE) return null;
    const at = n - MARK_SIZE;
    for (let i = 0; i < 4; i++) if (bytes[at + i] !== MAGIC[i]) return null;
    const view = new DataView(bytes.buffer, bytes.byteOffset + at, MARK_SIZE);
    // Monotonic ns since boot are far below 2**53: a Number holds them to the ns.
    return [view.getUint32(4), view.getUint32(8), Number(view.getBigUint64(12))];
  }

  function tap(receiver, transceiver) {
    const { readable, writable } = receiver.createEncodedStreams();
    const t = new TransformStream({
      transform(frame, ctl) {
        const arrival = performance.now() * 1e6 + offsetNs;
        const m = markOf(new Uint8Array(frame.data));
        if (m) marks.push([transceiver.mid, m[0], m[1], m[2], arrival]);
        ctl.enqueue(frame);
      },
    });
    readable.pipeThrough(t).pipeTo(writable);
  }

  async function join(slots) {
    for (let attempt = 0; ; attempt++) {
      pc = new RTCPeerConnection({ iceServers: [], encodedInsertableStreams: true });
      const pub = pc.addTransceiver("audio", { direction: "sendonly" });
      // With encodedInsertableStreams every sender and receiver must be piped through.
      const s = pub.sender.createEncodedStreams();
      s.readable.pipeTo(s.writable);
      const listen = [];
      for (let i = 0; i < slots; i++) {
        const tr = pc.addTransceiver("audio", { direction: "recvonly" });
        tap(tr.receiver, tr);
        listen.push(tr);
      }
      await pc.setLocalDescription();
      if (pc.iceGatheringState !== "complete") {
        await new Promise((resolve) => {
          pc.addEventListener("icegatheringstatechange", () => {
            if (pc.iceGatheringState === "complete") resolve();
          });
        });
      }
      let answer;
      try {
        answer = await call("POST", `/v1/spaces/${space}/join`, { sdp: pc.localDescription.sdp });
      } catch (err) {
        pc.close();
        if (err.body && err.body.error === "bad_sdp" && err.body.slots && attempt === 0) {
          slots = err.body.slots;
          continue;
        }
        throw err;
      }
      await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
      for (const tr of listen) {
        const el = document.createElement("audio");
        el.autoplay = true;
        el.srcObject = new MediaStream([tr.receiver.track]);
        document.body.appendChild(el);
        el.play().catch(() => {});
        elements.push(el);
      }
      return answer;
    }
  }

  async function start({ user, spaceId }) {
    token = (await call("POST", "/v1/dev/token", { user })).token;
    await syncClock(10);
    space = spaceId;
    const answer = await join(1);
    return { participant: answer.participant, slots: answer.slots, rtt_ms: rttMs };
  }

  // Marks since the last call, and the receivers' cumulative getStats counters.
  async function take() {
    const out = { marks, inbound: [], playout: null, rtt_ms: rttMs };
    marks = [];
    if (!pc) return out;
    (await pc.getStats()).forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "audio") {
        out.inbound.push({
          mid: s.mid ?? null,
          jitterBufferDelay: s.jitterBufferDelay ?? 0,
          jitterBufferEmittedCount: s.jitterBufferEmittedCount ?? 0,
          concealedSamples: s.concealedSamples ?? 0,
          totalSamplesReceived: s.totalSamplesReceived ?? 0,
          packetsLost: s.packetsLost ?? 0,
          packetsReceived: s.packetsReceived ?? 0,
        });
      } else if (s.type === "media-playout") {
        out.playout = {
          totalPlayoutDelay: s.totalPlayoutDelay ?? 0,
          totalSamplesCount: s.totalSamplesCount ?? 0,
        };
      }
    });
    return out;
  }

  async function leave() {
    if (space && token) await call("POST", `/v1/spaces/${space}/leave`, {}).catch(() => {});
    if (pc) pc.close();
  }

  return { start, take, leave };
})();
