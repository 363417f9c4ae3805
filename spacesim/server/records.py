"""The server's own records (source=server): its events and its CPU, in the one schema.

With `spacesim serve --record DIR`, every event a room publishes becomes a record, and
once a second the server adds its CPU (`node_cpu`, in cores), the packets its media
plane forwarded and dropped, its garbage collector's pauses (`gc_pause`: seconds paused,
attrs ``count``, ``squares`` (sum of squared pause lengths) and ``max``), and, once
captions or recordings have worked, the caption workers' CPU and speech, and the bytes
and packets recordings wrote. The run directory is written when the server stops, so a
load test's records and the server's can be compared in one notebook.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from spacesim.results import KINDS, Recorder, RunMeta, write_run
from spacesim.server.gcmeter import GcMeter

__all__ = ["ServerRecorder"]


class ServerRecorder:
    """Collects records while the server runs; `close` writes the run directory."""

    def __init__(self, directory: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.directory = directory
        self.clock = clock
        self.t0 = clock()
        self.t0_unix = time.time()  # lines this run up with a load run's t0_unix
        self.started = datetime.now(UTC).isoformat(timespec="seconds")
        self.recorder = Recorder(RunMeta.new_run_id(), "server")
        self._task: asyncio.Task[None] | None = None
        self._gc = GcMeter()

    def sink(self, msg: dict[str, Any]) -> None:
        """Room event -> record (a Room sink: called for every event it publishes)."""
        kind = msg.get("kind")
        if msg.get("type") != "event" or kind not in KINDS:
            return
        attrs = dict(msg.get("attrs") or {})
        if msg.get("actor"):
            attrs["actor"] = msg["actor"]
        self.recorder.append(
            (
                str(kind),
                self.clock() - self.t0,
                str(msg.get("space", "")),
                str(msg.get("participant", "")),
                str(msg.get("role") or ""),
                math.nan,
                json.dumps(attrs, sort_keys=True) if attrs else None,
            )
        )

    def start_sampling(
        self,
        media: Callable[[], Iterable[Any]],
        every: float = 1.0,
        *,
        captions: Callable[[], Mapping[str, float]] | None = None,
        recordings: Callable[[], Mapping[str, float]] | None = None,
    ) -> None:
        """Sample CPU and packet counters every `every` seconds until `close`.

        `captions` (`Captioner.stats`) and `recordings` (`Recordings.stats`) give the
        counters of the caption workers and the recordings; once either has done any
        work, each sample also records the workers' CPU (``asr_cores``: their own
        processes, which ``node_cpu`` leaves out) and the speech sent to them
        (``asr_audio_seconds``), and what recordings wrote (``recording_bytes`` of role
        ``room``, ``packets_recorded``, ``silence_recorded``; clips as ``recording_bytes``
        of role ``clip``), which `spacesim calibrate` fits ``asr_cost`` and
        ``recorded_packet_bytes`` from. The media loop only bumps counters for them.
        """

        def sources() -> dict[str, float]:
            out: dict[str, float] = {}
            for prefix, source in (("asr_", captions), ("rec_", recordings)):
                if source is not None:
                    out.update({prefix + k: float(v) for k, v in source().items()})
            return out

        meter = self._gc
        meter.install()
        meter.take()

        async def sample() -> None:
            last_cpu, last_t = time.process_time(), self.clock()
            last_fwd = last_drop = 0
            last = sources()
            while True:
                await asyncio.sleep(every)
                cpu, t = time.process_time(), self.clock()
                fwd = drop = 0
                for m in media():
                    stats = m.stats()
                    fwd += int(stats.get("forwarded", 0))
                    drop += int(stats.get("dropped", 0))
                now = t - self.t0
                add = self.recorder.append
                add(("node_cpu", now, "", "server", "node", (cpu - last_cpu) / (t - last_t), None))
                add(
                    (
                        "packets_forwarded",
                        now,
                        "",
                        "server",
                        "node",
                        float(max(fwd - last_fwd, 0)),
                        None,
                    )
                )
                add(
                    (
                        "packets_dropped",
                        now,
                        "",
                        "server",
                        "node",
                        float(max(drop - last_drop, 0)),
                        None,
                    )
                )
                pauses = meter.take()
                attrs = {
                    "count": pauses.count, "squares": pauses.squares, "max": pauses.longest,
                    "full_count": pauses.full_count, "full": pauses.full_seconds,
                    "full_squares": pauses.full_squares,
                }  # fmt: skip
                add(("gc_pause", now, "", "server", "node", pauses.seconds, json.dumps(attrs)))
                counters = sources()
                self._features(now, t - last_t, counters, last)
                last_cpu, last_t, last_fwd, last_drop, last = cpu, t, fwd, drop, counters

        self._task = asyncio.get_running_loop().create_task(sample())

    def _features(
        self, now: float, dt: float, counters: Mapping[str, float], last: Mapping[str, float]
    ) -> None:
        """Caption workers' and recordings' records of one sample (see `start_sampling`)."""

        def delta(key: str) -> float:
            return max(counters.get(key, 0.0) - last.get(key, 0.0), 0.0)

        add = self.recorder.append
        if counters.get("asr_cpu_seconds", 0.0) > 0 or counters.get("asr_audio_seconds", 0.0) > 0:
            add(("asr_cores", now, "", "server", "node", delta("asr_cpu_seconds") / dt, None))
            add(("asr_audio_seconds", now, "", "server", "node", delta("asr_audio_seconds"), None))
        if counters.get("rec_bytes", 0.0) > 0:
            add(("recording_bytes", now, "", "server", "room", delta("rec_bytes"), None))
            add(("packets_recorded", now, "", "server", "room", delta("rec_packets"), None))
            add(("silence_recorded", now, "", "server", "room", delta("rec_silence"), None))
        if delta("rec_clip_bytes") > 0:
            add(("recording_bytes", now, "", "server", "clip", delta("rec_clip_bytes"), None))

    async def close(self) -> Path:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._gc.uninstall()
        meta = RunMeta(
            run_id=self.recorder.run_id,
            source="server",
            scenario_name="serve",
            scenario_hash="",
            seed=None,
            started_at=self.started,
            duration=self.clock() - self.t0,
            extra={"t0_unix": self.t0_unix, "pid": os.getpid()},
        )
        return write_run(self.directory, self.recorder.to_frame(), meta)
