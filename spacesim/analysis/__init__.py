"""Helpers notebooks and `spacesim report` call: open runs, tidy views, plots.

Runs are read only through `spacesim.results`, so the numbers here are the CLI's.
`spacesim.analysis.plots` needs matplotlib (the ``notebooks`` extra) and is imported
on its own; everything re-exported here needs only pandas.
"""

from spacesim.analysis.runs import (
    NODE_KINDS,
    RunError,
    compare_summaries,
    frames,
    labels,
    open_run,
    open_runs,
    records,
    scenario_of,
    server_run,
    slo_table,
    slo_verdicts,
    summary,
)
from spacesim.analysis.views import (
    METRICS,
    STATS,
    concurrency,
    distribution,
    distribution_by,
    ecdf,
    loss,
    moderation,
    node_totals,
    nodes,
    over_time,
    samples,
)

__all__ = [
    "METRICS",
    "NODE_KINDS",
    "STATS",
    "RunError",
    "compare_summaries",
    "concurrency",
    "distribution",
    "distribution_by",
    "ecdf",
    "frames",
    "labels",
    "loss",
    "moderation",
    "node_totals",
    "nodes",
    "open_run",
    "open_runs",
    "over_time",
    "records",
    "samples",
    "scenario_of",
    "server_run",
    "slo_table",
    "slo_verdicts",
    "summary",
]
