"""A cluster target's own figures, sampled over HTTP while the swarm runs.

`spacesim load --target URL` against a cluster (`spacesim serve --cluster`) cannot read
the nodes' records the way it reads its embedded server's; instead it asks every live
node for its counters (``GET /cluster/v1/node``: process CPU seconds, packets forwarded
and relayed) once a second and keeps them as the server's run (source=server): per node
(``participant`` = the node's id) ``node_cpu``, ``packets_forwarded`` and
``packets_relayed`` records, so the summary's ``cpu_per_packet`` is all nodes' CPU over
all packets they delivered. A single server has no such route: nothing is sampled.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from spacesim.results import RunMeta, records_frame, write_run

__all__ = ["NodeSampler", "node_stats"]

ROUTE = "/cluster/v1/node"


def node_stats(url: str, timeout: float = 2.0) -> dict[str, Any] | None:
    """One node's counters, or None (not a cluster node, or it does not answer)."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + ROUTE, timeout=timeout) as r:
            data = json.loads(r.read(256 * 1024))
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "node" in data else None


class NodeSampler:
    """Samples every node of the cluster `url` belongs to, each `every` seconds, in a
    thread; `write` keeps them as a run. Inactive (`active` False) for a single server."""

    def __init__(self, url: str, t0: float, every: float = 1.0) -> None:
        self.url = url
        self.t0 = t0
        self.every = every
        first = node_stats(url)
        self.active = first is not None
        self.urls: dict[str, str] = dict(first.get("urls", {})) if first else {}
        self.rows: list[tuple[str, float, str, str, str, float, str | None]] = []
        self._last: dict[str, tuple[float, float, int, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="node-sampler", daemon=True)

    def __enter__(self) -> NodeSampler:
        if self.active:
            self._sample()
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.active:
            self._stop.set()
            self._thread.join(10)
            self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def _sample(self) -> None:
        for node, url in list(self.urls.items()):
            stats = node_stats(url)
            if stats is None:
                continue  # dead or busy: its records pause
            self.urls.update(stats.get("urls", {}))  # nodes that joined later
            now = time.time()
            cur = (
                now,
                float(stats["cpu_s"]),
                int(stats.get("forwarded", 0)),
                int(stats.get("relayed", 0)),
            )
            last = self._last.get(node)
            self._last[node] = cur
            if last is None or cur[0] <= last[0]:
                continue
            t, dt = now - self.t0, cur[0] - last[0]
            attrs = json.dumps({"url": url})
            self.rows += [
                ("node_cpu", t, "", node, "node", max(cur[1] - last[1], 0.0) / dt, attrs),
                ("packets_forwarded", t, "", node, "node", float(max(cur[2] - last[2], 0)), attrs),
                ("packets_relayed", t, "", node, "node", float(max(cur[3] - last[3], 0)), attrs),
            ]

    def write(self, directory: Path, started_at: str, duration: float) -> Path | None:
        """The samples as a run (source=server) in `directory`; None when inactive."""
        if not self.active:
            return None
        run_id = RunMeta.new_run_id()
        meta = RunMeta(
            run_id=run_id,
            source="server",
            scenario_name="cluster",
            scenario_hash="",
            seed=None,
            started_at=started_at,
            duration=duration,
            extra={"t0_unix": self.t0, "nodes": self.urls},
        )
        return write_run(directory, records_frame(self.rows, run_id, "server"), meta)
