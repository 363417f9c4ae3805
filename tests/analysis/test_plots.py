"""spacesim.analysis.plots: figures with labelled axes and units, data or none."""

from __future__ import annotations

import io
from collections.abc import Callable

import pandas as pd
import pytest
from matplotlib.figure import Figure

from spacesim.analysis import plots
from tests.analysis import synthetic

PLOTS: dict[str, Callable[[dict[str, pd.DataFrame]], Figure]] = {
    "latency_cdf": plots.latency_cdf,
    "latency_cdf_by_role": lambda f: plots.latency_cdf(f, by_role=True, slo=0.05),
    "percentiles_over_time": lambda f: plots.percentiles_over_time(f, window=5.0, slo=0.05),
    "percentiles_by_role": lambda f: plots.percentiles_over_time(f, by_role=True),
    "join_histograms": plots.join_histograms,
    "loss_jitter": plots.loss_jitter,
    "moderation_timings": plots.moderation_timings,
    "node_load": plots.node_load,
    "concurrency": plots.concurrency,
}


def _check(fig: Figure) -> None:
    assert isinstance(fig, Figure)
    for ax in fig.axes:
        assert "(" in ax.get_xlabel() and ")" in ax.get_xlabel(), ax.get_xlabel()
        assert "(" in ax.get_ylabel() and ")" in ax.get_ylabel(), ax.get_ylabel()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")  # renders on Agg without pyplot
    assert buf.getvalue()[:4] == b"\x89PNG"


@pytest.mark.parametrize("name", PLOTS)
def test_plot_with_two_runs(name: str) -> None:
    frames = {"sim": synthetic.records("sim"), "load": synthetic.records("load")}
    fig = PLOTS[name](frames)
    _check(fig)
    assert any(ax.get_legend() is not None for ax in fig.axes)


@pytest.mark.parametrize("name", PLOTS)
def test_plot_without_data_says_so(name: str) -> None:
    empty = synthetic.records().iloc[0:0]
    fig = PLOTS[name]({"empty": empty})
    _check(fig)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any(t.startswith("no ") for t in texts)
