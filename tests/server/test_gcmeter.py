"""GcMeter times the garbage collector's pauses, which stop the server's forwarding."""

from __future__ import annotations

import gc

from spacesim.server.gcmeter import GcMeter


def test_the_meter_times_each_collection_and_resets_on_take() -> None:
    meter = GcMeter()
    meter.install()
    try:
        meter.take()
        junk = [[i] for i in range(200_000)]  # something for a full collection to walk
        for _ in range(3):
            gc.collect()
        p = meter.take()
        del junk
    finally:
        meter.uninstall()
    assert p.count >= 3
    assert 0 < p.longest <= p.seconds
    assert p.longest**2 <= p.squares <= p.seconds * p.longest + 1e-12
    assert meter.take().count == 0


def test_an_uninstalled_meter_sees_nothing() -> None:
    meter = GcMeter()
    meter.install()
    meter.uninstall()
    gc.collect()
    assert meter.take().count == 0


def test_full_collections_are_told_apart_from_young_ones() -> None:
    """Generation-2 collections (the model's ``gc_full_*``) are summed on their own."""
    meter = GcMeter()
    meter.install()
    try:
        meter.take()
        gc.collect(0)
        gc.collect(1)
        gc.collect(2)
        p = meter.take()
    finally:
        meter.uninstall()
    assert p.count >= 3 and p.full_count >= 1 and p.count - p.full_count >= 2
    assert 0 < p.full_seconds <= p.seconds and 0 < p.full_squares <= p.squares
