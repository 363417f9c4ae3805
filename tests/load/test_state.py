"""The swarm process's state: the run's shared time zero."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from spacesim.load.state import State, agree_t0, read_t0


def _agree(path: str, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    out.put(agree_t0(Path(path)))


def test_every_process_of_a_run_agrees_on_the_first_ones_time_zero(tmp_path: Path) -> None:
    path = tmp_path / "t0"
    before = time.time()
    ctx = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue = ctx.Queue()  # type: ignore[type-arg]
    procs = [ctx.Process(target=_agree, args=(str(path), out)) for _ in range(3)]
    for p in procs:
        p.start()
    got = [out.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(10)
    assert len(set(got)) == 1 and before <= got[0] <= time.time()
    assert read_t0(path) == got[0] == agree_t0(path)  # a latecomer reads it too


def test_no_time_zero_written_reads_as_none(tmp_path: Path) -> None:
    assert read_t0(tmp_path / "t0") is None
    (tmp_path / "t0").write_text("")  # its writer has not finished: waits, then gives up
    t = time.monotonic()
    assert read_t0(tmp_path / "t0", wait=0.05) is None and time.monotonic() - t >= 0.05


def test_the_clock_starts_when_the_users_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPACESIM_T0", repr(time.time() - 11.0))  # Locust's slow start
    monkeypatch.setenv("SPACESIM_T0_FILE", str(tmp_path / "t0"))
    st = State()
    assert st.now() > 10.0
    st.start_clock()
    assert 0 <= st.now() < 1.0 and read_t0(tmp_path / "t0") == st.t0
