"""One record schema for every measured or simulated fact, and summaries of runs.

A record is a row ``(kind, t, run_id, source, room, participant, role, value, attrs)``:

* ``kind``: a name from `KINDS` (the one vocabulary shared by the simulator, the load
  test and the server's event stream);
* ``t``: seconds since the run started (a load run: since the swarm started its users,
  as a simulated run starts with its arrivals; a server's own run: since it started, and
  ``meta.extra["t0_unix"]`` of both aligns them); ``value``: the kind's quantity, in the unit
  `KINDS` gives (seconds for times, counts for counts), NaN when the kind has none;
* ``source``: ``sim``, ``load`` or ``server``; ``attrs``: optional JSON text for extras.

A run is a directory holding ``records.parquet`` and ``meta.json``. Notebooks, reports
and the regression gate read runs only through `load_run` and `summarise`, so they never
depend on which engine produced a run.
"""

from __future__ import annotations

import json
import math
import platform
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

__all__ = [
    "COLUMNS",
    "KINDS",
    "SOURCES",
    "Recorder",
    "Row",
    "Run",
    "RunMeta",
    "SloVerdict",
    "check_slos",
    "format_value",
    "load_run",
    "metric_table",
    "nearest_rank",
    "packets_per_window",
    "steady_window",
    "summarise",
    "summarise_run",
    "unsupported_actions",
    "write_run",
]

Source = Literal["sim", "load", "server"]
#: A record as the hot path appends it: (kind, t, room, participant, role, value, attrs).
Row = tuple[str, float, str, str, str, float, str | None]
SOURCES: tuple[str, ...] = ("sim", "load", "server")

#: The vocabulary: kind -> (unit of `value`, meaning). Event names on the server's
#: WebSocket stream are the same words.
KINDS: Mapping[str, tuple[str, str]] = {
    # membership
    "participant_joined": ("s", "a participant joined; value = join time (request to connected)"),
    "participant_left": ("s", "a participant left; value = time spent in the room"),
    "join_refused": ("", "a join was refused (admission control, cap, block); attrs.reason"),
    "reconnected": (
        "s",
        "a dropped connection was re-established; value = time to rejoin; attrs: node "
        "(a cluster's), cause (stream, silence, not_present, dropped), from (the node "
        "lost), outage (last datagram from it to connected again, s), detect (to noticed)",
    ),
    "space_started": ("", "the host started the space"),
    "space_ended": ("", "the space ended"),
    "concurrency": ("count", "participants in the room at t (sampled every tick)"),
    # audio
    "first_audio": ("s", "time from the join request to the first audio packet heard"),
    "audio_latency": ("s", "publisher -> listener latency of one sampled packet"),
    "mouth_to_ear": (
        "s",
        "publisher -> played out at a probe listener: network + server + jitter buffer + decode",
    ),
    "client_buffer": ("s", "time a probe listener's jitter buffer held a frame before decoding"),
    "audible_fraction": ("ratio", "share of a probe's decoded frames above -60 dBFS in a tick"),
    "browser_mouth_to_ear": (
        "s",
        "publisher -> played out at a browser probe (attrs.client=browser): a marked packet's "
        "arrival at the page's encoded transform on the speaker's clock minus its mark, plus "
        "NetEq's jitter buffer delay per emitted sample in that tick, plus Chromium's audio "
        "playout delay when it reports one",
    ),
    "browser_jitter_buffer": (
        "s",
        "a browser probe's NetEq delay per emitted sample in a tick (getStats inbound-rtp "
        "jitterBufferDelay / jitterBufferEmittedCount, deltas)",
    ),
    "browser_concealed": (
        "ratio",
        "share of a browser probe's samples in a tick that NetEq concealed (concealedSamples / "
        "totalSamplesReceived, deltas)",
    ),
    "browser_packets_lost": ("count", "audio packets a browser probe lost in a tick (getStats)"),
    "browser_playout": (
        "s",
        "a browser's audio output delay per sample in a tick (getStats media-playout)",
    ),
    "browser_cpu": (
        "cores",
        "CPU the browser probes' Chromium processes used in a tick (attrs.probes share it)",
    ),
    "packets_received": ("count", "audio packets a sampled listener received in a tick"),
    "packets_lost": ("count", "audio packets a sampled listener missed in a tick"),
    "talk_spurt": ("s", "a speaker talked; value = spurt length"),
    # stage and hands
    "hand_raised": ("", "a listener asked to speak"),
    "hand_lowered": ("", "a raised hand was withdrawn"),
    "hand_declined": ("s", "the host declined a raised hand; value = wait"),
    "speaker_invited": ("", "a host or co-host invited a listener to speak"),
    "invite_declined": ("", "an invited listener declined"),
    "speaker_granted": ("s", "a participant went on stage; value = wait since hand raise"),
    "speaker_revoked": ("", "a speaker left the stage (demoted or stepped down)"),
    "cohost_added": ("", "the host made a participant co-host"),
    "cohost_removed": ("", "a co-host stepped down or was removed as co-host"),
    "muted": ("", "a speaker was muted"),
    "unmuted": ("", "a speaker unmuted"),
    "speak_setting_changed": ("", "who may speak changed; attrs.setting"),
    "recording_started": ("", "the host started recording the space"),
    "recording_stopped": ("", "the host stopped recording the space"),
    "captions_changed": ("", "the host turned live captions on or off; attrs.captions"),
    "caption": ("s", "a live caption (attrs.text, attrs.final); value = final-caption latency"),
    "caption_latency": (
        "s",
        "a final caption at a listener: its speech's start reaching the server -> received "
        "(includes the utterance, attrs.speech s)",
    ),
    "caption_wer": (
        "ratio",
        "word error rate of one final caption against the stretch of its speaker's clip "
        "transcript it matches best; attrs.errors, attrs.words",
    ),
    "recording_bytes": (
        "bytes",
        "bytes a space's recording (role room) or its clips (role clip) wrote in a tick; the "
        "server's are per node (room empty)",
    ),
    "clip_cut": ("count", "clips listeners cut of a recording in a tick (aggregated) or one"),
    "replay_started": (
        "s",
        "a replay listener of an ended recorded space heard it; value = request -> first "
        "audio (WebRTC: first packet; HTTP: first range read); attrs.via = webrtc or http",
    ),
    "egress_bytes": (
        "bytes",
        "bytes the server sent one replay listener (role replay; WebRTC: the recording's "
        "Opus payloads, HTTP: the ranges read; attrs.via) or one clip download (role clip); "
        "or the voice posts, DMs or Fleets played in a tick (role post, dm, fleet)",
    ),
    # posts, DMs and Fleets
    "posts_uploaded": (
        "count",
        "voice posts, DMs or Fleets uploaded in a tick (role post, dm, fleet)",
    ),
    "upload_bytes": ("bytes", "bytes of the voice items uploaded in a tick (role post, dm, fleet)"),
    "posts_played": (
        "count",
        "plays (full downloads) of voice items in a tick (role post, dm, fleet)",
    ),
    "voice_upload": (
        "s",
        "a voice post, DM or Fleet uploaded: request -> 201 (role post, dm, fleet)",
    ),
    "voice_playback_start": (
        "s",
        "a voice item played: request -> the first bytes of its audio (role post, dm, fleet)",
    ),
    "storage_bytes": ("bytes", "voice audio the server holds at t (expired Fleets deleted)"),
    "fleets_expired": ("count", "voice Fleets deleted at expiry (24 h) in a tick"),
    # audience and moderation
    "reaction": ("count", "emoji reactions in a tick (aggregated) or one reaction"),
    "report_filed": ("", "a report about a user or the space"),
    "report_resolved": ("s", "a moderator resolved a report; value = time since filing"),
    "removed": ("", "a participant was removed from the space"),
    "blocked": ("", "a participant was blocked"),
    # the event stream (reactions, hands, stage changes delivered to subscribers)
    "event_latency": ("s", "an event's publication at the server -> its arrival at a listener"),
    "events_received": ("count", "events a listener's stream delivered in a tick"),
    "audience": ("count", "listeners in a space, as its coalesced count event reports"),
    "timeline_action": ("", "a scripted timeline action ran; attrs.action, attrs.at"),
    "moderation_action": ("", "the host's own moderation action (rate-driven); attrs.action"),
    "action_unsupported": (
        "count",
        "the target server lacks an action the scenario asked for (a third-party target's "
        "driver: spacesim.load.targets); attrs.action names it",
    ),
    # the swarm itself
    "loop_lag": (
        "s",
        "how late a load process's event loop ran a timer; worst in a tick; attrs cpu "
        "(the process's cores in the tick), gc_max (its collector's longest pause, s), "
        "gc_full (full collections) and role (stage, audience or all)",
    ),
    # server nodes
    "node_cpu": ("cores", "CPU a node used in a tick, in cores busy (CPU s per s)"),
    "gc_pause": (
        "s",
        "seconds the server's garbage collector paused it in a tick; attrs count, squares "
        "(sum of squared pauses), max, and of them the full (generation-2) collections' "
        "full_count, full (seconds), full_squares",
    ),
    "node_utilisation": ("ratio", "node_cpu / cores available"),
    "packets_forwarded": ("count", "packets a node forwarded in a tick"),
    "packets_dropped": ("count", "packets a node dropped in a tick (overload)"),
    "packets_relayed": (
        "count",
        "packets a cluster node relayed to other nodes in a tick (a room's origin: each "
        "heard packet once per node with listeners of the room)",
    ),
    "asr_cores": (
        "cores",
        "speech recognition a node's captioned spaces need in a tick (the server's: its "
        "caption worker processes' CPU)",
    ),
    "asr_audio_seconds": ("s", "seconds of speech a node sent to its caption workers in a tick"),
    "packets_recorded": (
        "count",
        "speakers' Opus packets a node's recordings wrote in a tick (silence fill not counted)",
    ),
    "silence_recorded": ("count", "silence frames a node's recordings wrote into gaps in a tick"),
}

COLUMNS: tuple[str, ...] = (
    "kind",
    "t",
    "run_id",
    "source",
    "room",
    "participant",
    "role",
    "value",
    "attrs",
)
_CATEGORICAL = ("kind", "run_id", "source", "room", "role")


class Recorder:
    """Collects records cheaply (a tuple per record); the DataFrame is built once at the end."""

    def __init__(self, run_id: str, source: Source) -> None:
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
        self.run_id = run_id
        self.source = source
        self._rows: list[Row] = []
        self.append = self._rows.append  # hot path: callers may bind this directly

    def add(
        self,
        kind: str,
        t: float,
        room: str = "",
        participant: str = "",
        role: str = "",
        value: float = math.nan,
        attrs: Mapping[str, Any] | None = None,
    ) -> None:
        """Add one record; `kind` must be in `KINDS`."""
        if kind not in KINDS:
            raise ValueError(f"unknown record kind {kind!r}; see spacesim.results.KINDS")
        text = json.dumps(attrs, sort_keys=True) if attrs else None
        self._rows.append((kind, t, room, participant, role, float(value), text))

    def __len__(self) -> int:
        return len(self._rows)

    def to_frame(self) -> pd.DataFrame:
        """The records as a DataFrame in the schema's column order, sorted by time."""
        return records_frame(self._rows, self.run_id, self.source)


def records_frame(rows: Sequence[Row], run_id: str, source: str) -> pd.DataFrame:
    """Build the schema's DataFrame from (kind, t, room, participant, role, value, attrs)."""
    cols = ["kind", "t", "room", "participant", "role", "value", "attrs"]
    df = pd.DataFrame.from_records(rows, columns=cols) if rows else pd.DataFrame(columns=cols)
    df["run_id"] = run_id
    df["source"] = source
    df = df[list(COLUMNS)]
    df["t"] = df["t"].astype("float64")
    df["value"] = df["value"].astype("float64")
    for col in ("participant", "attrs"):
        df[col] = df[col].astype("object")
    for col in _CATEGORICAL:
        df[col] = df[col].astype("category")
    unknown = set(df["kind"].cat.categories) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown record kinds {sorted(unknown)}; see spacesim.results.KINDS")
    return df.sort_values("t", kind="stable").reset_index(drop=True)


def _version() -> str:
    try:
        return metadata.version("spacesim")
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class RunMeta:
    """What a run is: enough to tell whether two runs are comparable."""

    run_id: str
    source: str
    scenario_name: str
    scenario_hash: str
    seed: int | None
    started_at: str
    spacesim_version: str = field(default_factory=_version)
    python: str = field(default_factory=platform.python_version)
    machine: str = field(default_factory=lambda: f"{platform.system()} {platform.machine()}")
    duration: float | None = None
    wall_seconds: float | None = None
    scenario: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def new_run_id() -> str:
        return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


@dataclass(frozen=True)
class Run:
    """A loaded run: its records and its metadata."""

    records: pd.DataFrame
    meta: RunMeta
    path: Path | None = None


def write_run(directory: str | Path, records: pd.DataFrame, meta: RunMeta) -> Path:
    """Write ``records.parquet`` and ``meta.json``; refuses to overwrite another run."""
    out = Path(directory)
    if (out / "meta.json").exists():
        old = json.loads((out / "meta.json").read_text())
        if old.get("run_id") != meta.run_id:
            raise FileExistsError(
                f"{out} already holds run {old.get('run_id')}; pick another --out"
            )
    missing = [c for c in COLUMNS if c not in records.columns]
    if missing:
        raise ValueError(f"records lack columns {missing}")
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "records.parquet.tmp"
    records[list(COLUMNS)].to_parquet(tmp, index=False)
    tmp.replace(out / "records.parquet")
    (out / "meta.json").write_text(json.dumps(asdict(meta), indent=2, sort_keys=True) + "\n")
    return out


def load_run(directory: str | Path) -> Run:
    """Read a run directory written by `write_run`."""
    path = Path(directory)
    meta_file, rec_file = path / "meta.json", path / "records.parquet"
    if not meta_file.is_file() or not rec_file.is_file():
        raise FileNotFoundError(
            f"{path} is not a run directory (needs meta.json and records.parquet)"
        )
    raw = json.loads(meta_file.read_text())
    known = {f for f in RunMeta.__dataclass_fields__}
    meta = RunMeta(**{k: v for k, v in raw.items() if k in known})
    records = pd.read_parquet(rec_file)
    for col in ("participant", "attrs"):  # the same dtypes as a freshly recorded run
        records[col] = records[col].astype("object")
    return Run(records, meta, path)


# --------------------------------------------------------------------------- summaries

_QUANTILES = (0.5, 0.95, 0.99)


def _dist(values: pd.Series) -> dict[str, float]:
    v = values.dropna().to_numpy(dtype="float64")
    if v.size == 0:
        return {"count": 0, "mean": math.nan, "p50": math.nan, "p95": math.nan, "p99": math.nan}
    p50, p95, p99 = np.quantile(v, _QUANTILES)
    return {"count": int(v.size), "mean": float(v.mean()), "p50": p50, "p95": p95, "p99": p99}


def _cpu_seconds(cpu: pd.DataFrame) -> float:
    """CPU seconds from per-tick `node_cpu` samples (cores), each node's tick inferred.

    The tick is the median spacing of a node's samples: the simulator uses its `tick`,
    the server samples once a second; a node with one sample counts as one second.
    """
    total = 0.0
    for _, g in cpu.groupby("participant", observed=True, sort=False):
        t = np.sort(g["t"].to_numpy(dtype="float64"))
        tick = float(np.median(np.diff(t))) if t.size > 1 else 1.0
        total += float(g["value"].sum()) * tick
    return total


def _probes(attrs: pd.Series) -> pd.Series:
    """attrs.probes of browser_cpu records (1 where absent)."""
    return attrs.map(lambda a: max(1, int(json.loads(a).get("probes", 1))) if a else 1).astype(
        float
    )


def summarise(records: pd.DataFrame, duration: float | None = None) -> pd.DataFrame:
    """Headline metrics of one run, one row per metric.

    Columns: ``count, mean, p50, p95, p99, value, unit``. Distributions fill the
    percentiles; ratios and totals fill ``value``. Metric names are what SLO targets
    refer to (``audio_latency.p95``, ``delivery_ratio.value``, …).
    """
    by_kind = {k: g for k, g in records.groupby("kind", observed=True)}
    empty = records.iloc[0:0]

    def kind(name: str) -> pd.DataFrame:
        return by_kind.get(name, empty)

    rows: dict[str, dict[str, Any]] = {}

    def dist(name: str, frame: pd.DataFrame, unit: str) -> None:
        rows[name] = {**_dist(frame["value"]), "unit": unit}

    def total(name: str, value: float, unit: str, count: int | None = None) -> None:
        rows[name] = {"value": value, "unit": unit, "count": count}

    joined = kind("participant_joined")
    listeners = joined[joined["role"] == "listener"]
    total("joins", float(len(listeners)), "count", len(listeners))
    total("joins_refused", float(len(kind("join_refused"))), "count")
    dist("join_time", listeners, "s")
    dist("first_audio", kind("first_audio"), "s")
    # Only sessions that ended within the run: long sessions are under-represented.
    left = kind("participant_left")
    dist("completed_session", left[left["role"] == "listener"], "s")

    conc = kind("concurrency")
    if len(conc):
        per_t = conc.groupby("t")["value"].sum()
        rows["concurrency"] = {**_dist(per_t), "value": float(per_t.max()), "unit": "listeners"}

    dist("audio_latency", kind("audio_latency"), "s")
    for name, unit in (
        ("mouth_to_ear", "s"),
        ("client_buffer", "s"),
        ("audible_fraction", "ratio"),
    ):
        if name in by_kind:
            dist(name, kind(name), unit)
    if "browser_mouth_to_ear" in by_kind:
        for name, unit in (
            ("browser_mouth_to_ear", "s"),
            ("browser_jitter_buffer", "s"),
            ("browser_concealed", "ratio"),
            ("browser_playout", "s"),
        ):
            if name in by_kind:
                dist(name, kind(name), unit)
        total(
            "browser_packets_lost",
            float(kind("browser_packets_lost")["value"].sum()),
            "count",
            len(kind("browser_packets_lost")),
        )
    if "browser_cpu" in by_kind:
        cpu = kind("browser_cpu")
        per_probe = cpu["value"] / _probes(cpu["attrs"])
        rows["browser_probe_cpu"] = {**_dist(per_probe), "unit": "cores"}
    received = float(kind("packets_received")["value"].sum())
    lost = float(kind("packets_lost")["value"].sum())
    expected = received + lost
    total("delivery_ratio", received / expected if expected else math.nan, "ratio", int(expected))

    hands = kind("hand_raised")
    granted = kind("speaker_granted")
    total("hands_raised", float(len(hands)), "count")
    answered = granted.dropna(subset=["value"])  # grants that answered a raised hand
    total("hands_granted", float(len(answered)), "count")
    total("hands_declined", float(len(kind("hand_declined"))), "count")
    dist("hand_wait", answered, "s")

    reactions = kind("reaction")["value"].sum()
    total("reactions", float(reactions), "count")
    if duration:
        total("reaction_rate", float(reactions) / duration, "per s")
    total("reports_filed", float(len(kind("report_filed"))), "count")
    dist("report_resolution", kind("report_resolved"), "s")
    total("removed", float(len(kind("removed"))), "count")
    blocked = kind("blocked")
    personal = blocked["attrs"].astype(str).str.contains('"scope": "personal"', regex=False)
    total("blocked", float((~personal).sum()), "count")  # blocks that bar from the space
    total("personal_blocks", float(personal.sum()), "count")

    events = kind("events_received")
    if len(events) or "event_latency" in by_kind:
        dist("event_latency", kind("event_latency"), "s")
        total("events_received", float(events["value"].sum()), "count", len(events))
    actions = [kind(k) for k in ("moderation_action", "timeline_action") if k in by_kind]
    if actions:
        total("host_actions", float(sum(len(a) for a in actions)), "count")
    for action, n in unsupported_actions(records).items():
        total(f"unsupported_{action}", float(n), "count", n)

    if "caption_latency" in by_kind:
        dist("caption_latency", kind("caption_latency"), "s")
    wer = kind("caption_wer")
    if len(wer):
        counts = [json.loads(a) for a in wer["attrs"].dropna()]
        words = sum(int(c.get("words", 0)) for c in counts)
        errors = sum(int(c.get("errors", 0)) for c in counts)
        total("caption_wer", errors / words if words else math.nan, "ratio", len(wer))
    asr = kind("asr_cores")
    if len(asr):
        per_t = asr.groupby("t")["value"].sum()
        rows["asr_cores"] = {**_dist(per_t), "value": float(per_t.max()), "unit": "cores"}
    clips = kind("clip_cut")
    if len(clips):
        total("clips_cut", float(clips["value"].sum()), "count")
    replays = kind("replay_started")
    if len(replays):
        total("replays", float(len(replays)), "count")
        dist("replay_start", replays, "s")
    egress = kind("egress_bytes")
    if len(egress):
        sent = float(egress["value"].sum())
        total("egress_bytes", sent, "bytes", len(egress))
        posted = set(egress["role"].astype(str)) & {"post", "dm", "fleet"}
        for role in ("replay", "clip", *sorted(posted)):
            mine = egress[egress["role"] == role]
            total(f"{role}_egress_bytes", float(mine["value"].sum()), "bytes", len(mine))
        if duration:
            total("egress_rate", sent / duration, "bytes/s")
    uploads = kind("upload_bytes")
    if len(uploads):
        total("voice_uploads", float(kind("posts_uploaded")["value"].sum()), "count")
        sent = float(uploads["value"].sum())
        total("upload_bytes", sent, "bytes", len(uploads))
        if duration:
            total("upload_rate", sent / duration, "bytes/s")
        total("voice_plays", float(kind("posts_played")["value"].sum()), "count")
    for name in ("voice_upload", "voice_playback_start"):
        if name in by_kind:
            dist(name, kind(name), "s")
    held = kind("storage_bytes")
    if len(held):
        rows["storage_bytes"] = {
            **_dist(held["value"]),
            "value": float(held["value"].iloc[-1]),
            "unit": "bytes",
        }
        rows["storage_peak"] = {"value": float(held["value"].max()), "unit": "bytes"}
    expired = kind("fleets_expired")
    if len(expired):
        gone = float(expired["value"].sum())
        total("fleets_expired", gone, "count")
        if duration:
            total("fleet_expiry_rate", gone / duration, "per s")
    rec = kind("recording_bytes")
    if len(rec):
        written = float(rec["value"].sum())
        total("recording_bytes", written, "bytes", len(rec))
        if duration:
            total("recording_write_rate", written / duration, "bytes/s")

    lag = kind("loop_lag")
    if len(lag):
        dist("loop_lag", lag, "s")

    util = kind("node_utilisation")
    if len(util):
        dist("node_utilisation", util, "ratio")
        rows["node_utilisation"]["value"] = float(util["value"].max())
    cpu = kind("node_cpu")
    if len(cpu):
        dist("node_cpu", cpu, "cores")
    fwd = float(kind("packets_forwarded")["value"].sum())
    dropped = float(kind("packets_dropped")["value"].sum())
    total("packets_forwarded", fwd, "count")
    total("packets_dropped", dropped, "count")
    if len(cpu) and fwd > 0:
        total("cpu_per_packet", _cpu_seconds(cpu) / fwd, "s", int(fwd))

    table = pd.DataFrame.from_dict(rows, orient="index")
    for col in ("count", "mean", "p50", "p95", "p99", "value"):
        if col not in table:
            table[col] = math.nan
    table.index.name = "metric"
    return table[["count", "mean", "p50", "p95", "p99", "value", "unit"]]


#: Metrics a load run takes from the server's own run (its CPU and forwarding, its
#: caption workers' CPU, what its recordings wrote).
SERVER_METRICS = (
    "node_cpu",
    "packets_forwarded",
    "packets_dropped",
    "cpu_per_packet",
    "asr_cores",
    "recording_bytes",
    "recording_write_rate",
)


def summarise_run(run: Run) -> pd.DataFrame:
    """`summarise` of a run, with the server's figures when the run holds the server's own.

    `spacesim load` with its embedded server keeps the server's run (source=server) in a
    subdirectory named by ``meta.extra["server_run"]``; its `SERVER_METRICS` replace the
    load run's (which has none: clients do not see the server's CPU). They are taken over
    the load run's own time (its ``t0_unix`` and ``duration``): the server's run also holds
    the seconds it idled while Locust started (~6 s of the demo's 67), which lowered its
    mean CPU by ~8 % against a simulation of the same 60 s (2026-12-07).
    """
    summary = summarise(run.records, run.meta.duration)
    nested = run.meta.extra.get("server_run")
    if nested and run.path is not None and (run.path / nested / "meta.json").is_file():
        inner = load_run(run.path / nested)
        srec, duration = inner.records, inner.meta.duration
        t0, s0 = run.meta.extra.get("t0_unix"), inner.meta.extra.get("t0_unix")
        if t0 is not None and s0 is not None and run.meta.duration:
            offset = float(t0) - float(s0)
            duration = run.meta.duration
            srec = srec[(srec["t"] >= offset) & (srec["t"] <= offset + duration)]
            srec = srec.assign(t=srec["t"] - offset).reset_index(drop=True)
        server = summarise(srec, duration)
        for metric in SERVER_METRICS:
            if metric in server.index:
                summary.loc[metric] = server.loc[metric]
    return summary


def unsupported_actions(records: pd.DataFrame) -> dict[str, int]:
    """How often each action the target lacks was asked for (``action_unsupported``
    records), most frequent first."""
    rows = records.loc[records["kind"] == "action_unsupported", "attrs"].dropna()
    counts: dict[str, int] = {}
    for a in rows:
        action = str(json.loads(a).get("action", "?"))
        counts[action] = counts.get(action, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def format_value(value: object, unit: str) -> str:
    """A figure in its unit for people: ms or µs for seconds, % for ratios ('' if none).

    The CLI's tables and `spacesim report` both print figures this way.
    """
    if value is None:
        return ""
    x = float(value)  # type: ignore[arg-type]
    if math.isnan(x):
        return ""
    if unit == "s":
        if x != 0 and abs(x) < 1e-3:
            return f"{x * 1e6:,.1f} µs"  # CPU per packet
        return f"{x * 1000:,.1f} ms" if abs(x) < 10 else f"{x:,.1f} s"
    if unit == "ratio":
        return f"{x:.2%}"
    if unit in ("count", "listeners"):
        return f"{x:,.0f}"
    return f"{x:,.3g} {unit}".strip()


def metric_table(summary: pd.DataFrame) -> dict[str, float]:
    """Flatten a summary to ``{"audio_latency.p95": 0.08, "delivery_ratio.value": 0.99, …}``."""
    flat: dict[str, float] = {}
    for metric, row in summary.iterrows():
        for stat in ("count", "mean", "p50", "p95", "p99", "value"):
            x = row[stat]
            if x is not None and not (isinstance(x, float) and math.isnan(x)):
                flat[f"{metric}.{stat}"] = float(x)
    return flat


@dataclass(frozen=True)
class SloVerdict:
    metric: str
    op: str
    threshold: float
    actual: float | None
    passed: bool | None  # None when the run has no data for the metric


def check_slos(
    summary: pd.DataFrame, targets: Iterable[tuple[str, str, float]]
) -> list[SloVerdict]:
    """Judge (metric, '<=' or '>=', threshold) targets against a summary."""
    flat = metric_table(summary)
    verdicts = []
    for metric, op, threshold in targets:
        actual = flat.get(metric)
        if actual is None:
            passed = None
        elif op == "<=":
            passed = actual <= threshold
        elif op == ">=":
            passed = actual >= threshold
        else:
            raise ValueError(f"unknown comparison {op!r}")
        verdicts.append(SloVerdict(metric, op, threshold, actual, passed))
    return verdicts


def steady_window(
    records: pd.DataFrame, duration: float | None, settle: float = 2.0
) -> tuple[float, float]:
    """(start, end) of a run's steady part: `settle` s after the last listener joined.

    The same window applies to load and simulated records (both record
    ``participant_joined`` for listeners), so both engines are compared alike.
    """
    joins = records.loc[
        (records["kind"] == "participant_joined") & (records["role"] == "listener"), "t"
    ]
    end = float(duration) if duration else float(records["t"].max())
    start = float(joins.max()) + settle if len(joins) else 0.0
    return (min(start, end), end)


def packets_per_window(records: pd.DataFrame) -> float:
    """Mean packets (received + lost) a sampled listener accounted for per measurement window.

    A receiver that keeps up accounts for senders x packets/s per 1 s window; one that
    falls behind (a saturated load generator) accounts for fewer, though none is lost.
    """
    got = records.loc[records["kind"] == "packets_received", "value"].to_numpy("float64")
    lost = records.loc[records["kind"] == "packets_lost", "value"].to_numpy("float64")
    return float((got.sum() + lost.sum()) / got.size) if got.size else math.nan


def nearest_rank(xs: Iterable[float], q: float) -> float:
    """The `q` quantile of a sample by nearest rank (a value the sample holds, no
    interpolation): what the benchmarks quote as p50/p95/p99. NaN for no sample."""
    s = sorted(xs)
    return float(s[min(len(s) - 1, int(q * len(s)))]) if s else math.nan
