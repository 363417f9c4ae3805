"""Records out of a Locust process: a Parquet part per process, via the master if a worker.

Each process writes ``OUT/part-<host>-<pid>.parquet`` (``--spacesim-out``); in
distributed mode workers send theirs to the master as a Locust message and the master
writes every part into its own ``--spacesim-out`` (no shared disk).
"""

from __future__ import annotations

import io
from typing import Any

from locust.runners import WorkerRunner

from spacesim.load.state import settings, state

__all__ = ["MSG_RECORDS", "MSG_SPACE", "save_part", "write_part"]

MSG_SPACE = "spacesim_space"  # a host's space id, from its worker to every worker
MSG_RECORDS = "spacesim_records"  # a worker's records, to the master that writes them


def write_part() -> None:
    """This process's records so far: to the master when a worker, else to disk."""
    st = state()
    if len(st.recorder) == st.written or not len(st.recorder):
        return
    runner = settings.runner
    name = f"{settings.node}-{st.pid}"
    if isinstance(runner, WorkerRunner):
        buf = io.BytesIO()
        st.recorder.to_frame().to_parquet(buf, index=False)
        runner.send_message(MSG_RECORDS, {"name": name, "parquet": buf.getvalue()})
    elif settings.out is not None:
        save_part(name, st.recorder.to_frame())
    else:
        return
    st.written = len(st.recorder)


def save_part(name: str, frame: Any) -> None:
    """Write a part (a DataFrame, or a worker's Parquet bytes) atomically."""
    out = settings.out
    assert out is not None
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".part-{name}.parquet.tmp"
    if isinstance(frame, bytes):
        tmp.write_bytes(frame)
    else:
        frame.to_parquet(tmp, index=False)
    tmp.replace(out / f"part-{name}.parquet")
