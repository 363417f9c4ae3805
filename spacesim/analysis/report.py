"""`spacesim report`: one self-contained HTML file about one or several runs.

Written for a capacity planner, not a developer: every figure and table says in
plain words what it measures. Plots are embedded as base64 PNG, so the file can be
mailed or attached to a CI job as is. Several runs (say a load run and a simulated
run of the same scenario) are compared side by side: one column or colour per run.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from string import Template

import pandas as pd
from matplotlib.figure import Figure

from spacesim.analysis import likeforlike, plots, runs, views
from spacesim.results import Run, format_value, summarise
from spacesim.scenario import Scenario

__all__ = ["render", "write_report"]

#: Plain words for each SLO metric (what "p95 <= 1 s" promises).
SLO_WORDS = {
    "join_time.p95": "95% of listeners were connected within this time of asking to join",
    "first_audio.p95": "95% of listeners heard audio within this time of asking to join",
    "audio_latency.p95": "95% of sampled audio packets reached a listener within this time "
    "(publisher → listener, network + server; excludes the listener's jitter buffer)",
    "delivery_ratio.value": "share of audio packets sent to sampled listeners that arrived",
    "hand_wait.p95": "95% of approved raised hands were on stage within this time",
}

#: Plain words for each summary metric.
METRIC_WORDS = {
    "joins": "listeners who joined",
    "joins_refused": "joins the server refused (capacity, cap, blocks)",
    "join_time": "join request → audio connected, listeners",
    "first_audio": "join request → first audio packet heard",
    "completed_session": "time in the room of listeners who left before the end",
    "concurrency": "listeners present at once (value = peak)",
    "audio_latency": "publisher → listener delay (network + server, no jitter buffer)",
    "delivery_ratio": "packets received / packets expected at sampled listeners",
    "hands_raised": "raised hands",
    "hands_granted": "raised hands brought on stage",
    "hands_declined": "raised hands declined by the host",
    "hand_wait": "raised hand → on stage",
    "reactions": "emoji reactions",
    "reaction_rate": "emoji reactions per second",
    "reports_filed": "reports filed",
    "report_resolution": "report filed → resolved by a moderator",
    "removed": "participants removed",
    "blocked": "participants barred from the space",
    "personal_blocks": "one listener blocking another",
    "node_utilisation": "server node busy share (value = peak)",
    "node_cpu": "server CPU per node, cores busy",
    "packets_forwarded": "audio packets forwarded by the server",
    "packets_dropped": "audio packets the server dropped (overload)",
    "cpu_per_packet": "server CPU time per forwarded packet",
    "mouth_to_ear": "publisher → played out at an aiortc probe (its fixed ~80 ms jitter "
    "buffer included)",
    "client_buffer": "time an aiortc probe's jitter buffer held a frame",
    "audible_fraction": "share of an aiortc probe's decoded frames above -60 dBFS",
    "browser_mouth_to_ear": "publisher → played out at a Chromium probe (NetEq's adaptive "
    "jitter buffer and Chromium's playout delay included)",
    "browser_jitter_buffer": "NetEq's delay per emitted sample at a Chromium probe",
    "browser_concealed": "share of a Chromium probe's samples NetEq concealed",
    "browser_playout": "Chromium's audio output delay per sample",
    "browser_packets_lost": "audio packets the Chromium probes lost",
    "browser_probe_cpu": "CPU of one Chromium probe (its browser's processes / probes)",
    "loop_lag": "how late the load generator's event loop ran (high = swarm overloaded, "
    "its measurements are suspect)",
}

_FIGURES = (
    (
        "Listeners over time",
        "How many listeners were in the room(s) at each moment. Simulated runs sample it "
        "every tick; load runs count it from the synthetic listeners' joins and leaves. "
        "A load run usually holds far fewer listeners than the scenario describes: the "
        "swarm is sized to this machine.",
    ),
    (
        "Audio latency: distribution",
        "Each curve shows, for every delay on the x axis, the share of sampled audio "
        "packets that arrived at least that fast. Audio latency = publisher → listener, "
        "network + server; it excludes the listener's jitter buffer and playout. Further "
        "left is better; where a curve crosses the grey 0.95 line is its p95, and the red "
        "line is the scenario's p95 target. A simulated run models the scenario's "
        "network (RTT, jitter, loss); a load run has it only when its clients went through "
        "the emulated network (spacesim load --network scenario, the default: see "
        "'network' under The runs), else it measures loopback on this machine.",
    ),
    (
        "Audio latency over time",
        "The median (solid), p95 (dashed) and p99 (dotted) latency in each time window. "
        "A rising curve means the server or network is falling behind as load grows; a "
        "spike at the start of a load run is usually the swarm's own start-up.",
    ),
    (
        "Joining",
        "Left: join time, from the join request until the audio connection is up. Right: "
        "time to first audio, from the join request until the first audio packet is "
        "heard (join time plus waiting for someone to speak).",
    ),
    (
        "Packet loss and jitter",
        "Top: packets that did not reach sampled listeners, as a percentage of those "
        "expected (network and server drops together). Bottom: jitter, the variation in "
        "delay between a listener's packets (median and p95 across listeners' "
        "samples): the jitter buffer must absorb it, so it adds to what people hear.",
    ),
    (
        "Moderation timings",
        "Left: how long an approved raised hand waited before going on stage. Right: how "
        "long a report waited before a moderator resolved it. Each dot is one event; "
        "curves read like the latency distribution above.",
    ),
    (
        "Server load",
        "CPU used per server node, in cores busy (1.0 = one core fully used), and audio "
        "packets forwarded per second. Simulated runs model each node; a load run shows "
        "the real server's own measurements when it was recorded (server/ in the run "
        "directory).",
    ),
)

_PAGE = Template("""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>$title</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 72em; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.pass { color: #116611; font-weight: bold; } .fail { color: #b00; font-weight: bold; }
.nodata { color: #777; } .note { color: #555; font-size: 0.92em; }
.warn { background: #fff4d6; border: 1px solid #e0c060; padding: 0.5em 1em; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; }
figcaption { max-width: 60em; } pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; }
</style></head><body>
<h1>$title</h1>
<p class="note">Written by <code>spacesim report</code> on $now. $intro</p>
$body
</body></html>
""")


_fmt = format_value


def _e(text: object) -> str:
    return html.escape(str(text))


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], num_from: int = 1) -> str:
    """Rows are already HTML; cells from column `num_from` on are right-aligned."""
    out = ["<table><tr>", *(f"<th>{h}</th>" for h in head), "</tr>"]
    for row in rows:
        cells = (
            f'<td class="num">{c}</td>' if i >= num_from else f"<td>{c}</td>"
            for i, c in enumerate(row)
        )
        out += ["<tr>", *cells, "</tr>"]
    out.append("</table>")
    return "".join(out)


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _window(duration: float | None) -> float:
    """A round window giving about 30 points over the run."""
    target = (duration or 300.0) / 30
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600):
        if step >= target:
            return float(step)
    return 3600.0


_ENGINES = {"sim": "simulator", "load": "load test (Locust swarm)", "server": "room server"}
_RUN_FIELDS: tuple[tuple[str, Callable[[Run], object]], ...] = (
    ("engine", lambda r: _ENGINES.get(r.meta.source, r.meta.source)),
    ("scenario", lambda r: r.meta.scenario_name),
    ("scenario hash", lambda r: r.meta.scenario_hash),
    ("seed", lambda r: r.meta.seed),
    ("started", lambda r: r.meta.started_at),
    ("duration", lambda r: _fmt(r.meta.duration, "s")),
    ("wall time", lambda r: _fmt(r.meta.wall_seconds, "s")),
    ("records", lambda r: f"{len(r.records):,}"),
    ("server's own records", lambda r: "yes" if runs.server_run(r) else "no"),
    ("spacesim", lambda r: r.meta.spacesim_version),
    ("python", lambda r: r.meta.python),
    ("machine", lambda r: r.meta.machine),
    ("directory", lambda r: r.path or ""),
)


def _runs_section(items: Sequence[Run], names: Sequence[str]) -> str:
    rows = [[what, *(_e(get(r)) for r in items)] for what, get in _RUN_FIELDS]
    for key in sorted({k for r in items for k in r.meta.extra}):
        rows.append([_e(key), *(_e(r.meta.extra.get(key, "")) for r in items)])
    return (
        "<h2>The runs</h2><p>Where each run came from: engine, versions, machine and "
        "the engine's own settings.</p>" + _table(["", *map(_e, names)], rows, num_from=99)
    )


def _slo_section(items: Sequence[Run], names: Sequence[str]) -> str:
    table = runs.slo_table(items)
    if table.empty:
        return "<h2>Objectives (SLOs)</h2><p>No run states objectives (no scenario SLOs).</p>"
    rows = []
    for metric, g in table.groupby("metric", sort=False):
        unit = "ratio" if str(metric).startswith("delivery") else "s"
        targets = {f"{op} {_fmt(t, unit)}" for op, t in zip(g["op"], g["target"], strict=True)}
        cells = []
        for name in names:
            hit = g[g["run"] == name]
            if hit.empty:
                cells.append('<span class="nodata">not set</span>')
                continue
            v = hit.iloc[0]
            verdict = {True: '<span class="pass">pass</span>',
                       False: '<span class="fail">FAIL</span>'}.get(
                v["passed"], '<span class="nodata">no data</span>')  # fmt: skip
            cells.append(f"{_fmt(v['actual'], unit)} {verdict}")
        words = _e(SLO_WORDS.get(str(metric), ""))
        rows.append([f"<b>{_e(metric)}</b><br><span class='note'>{words}</span>",
                     _e(" / ".join(sorted(targets))), *cells])  # fmt: skip
    failed = int((table["passed"] == False).sum())  # noqa: E712 (None is neither)
    head = (
        f'<p class="fail">{failed} objective(s) failed.</p>'
        if failed
        else '<p class="pass">Every objective with data passed.</p>'
    )
    return (
        "<h2>Objectives (SLOs)</h2>"
        "<p>Targets come from the scenario stored in each run. Actual values are "
        "computed from the run's records exactly as <code>spacesim simulate</code> and "
        "the regression gate compute them.</p>"
        + head
        + _table(["objective", "target", *map(_e, names)], rows, num_from=1)
    )


def _isna(x: object) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _summary_cell(row: pd.Series, name: str, unit: str) -> str:
    def get(stat: str) -> object:
        return row[(name, stat)]

    if _isna(get("p50")):
        value = _fmt(get("value"), unit)
        return value or _DASH
    text = " / ".join(_fmt(get(s), unit) for s in ("p50", "p95", "p99"))
    note = f"n = {_fmt(get('count'), 'count')}"
    if not _isna(get("value")):
        note += f", peak {_fmt(get('value'), unit)}"
    return f"{text}<br><span class='note'>{note}</span>"


_DASH = '<span class="nodata">—</span>'
_NODE_TOTALS = ("packets_forwarded", "packets_dropped")  # summarise counts 0 without nodes


def _summary_section(items: Sequence[Run], names: Sequence[str]) -> str:
    table = runs.compare_summaries(items)
    has_nodes = {
        name: bool(runs.records(r)["kind"].isin(runs.NODE_KINDS).any())
        for name, r in zip(names, items, strict=True)
    }
    rows = []
    for metric, row in table.iterrows():
        unit = str(row[("", "unit")])
        words = _e(METRIC_WORDS.get(str(metric), ""))
        cells = [
            _DASH
            if metric in _NODE_TOTALS and not has_nodes[name]
            else _summary_cell(row, name, unit)
            for name in names
        ]
        rows.append([f"<b>{_e(metric)}</b><br><span class='note'>{words}</span>", *cells])
    return (
        "<h2>Headline numbers</h2>"
        "<p>Distributions show p50 / p95 / p99 (half, 95% and 99% of observations were at "
        "or below); n is the number of observations. Times below 10 s are in "
        "milliseconds. A dash means the run has no such records (a load run has server "
        "figures only when the server's own records are stored with it).</p>"
        + _table(["metric", *map(_e, names)], rows)
    )


def _likeforlike_section(items: Sequence[Run], names: Sequence[str]) -> str:
    """Each measured run against its replay and the independent draws of its scenario."""
    found = likeforlike.groups(items)
    if not found:
        return ""
    name = dict(zip((id(r) for r in items), names, strict=True))
    parts = [
        "<h2>Swarm against its simulation</h2>"
        "<p>A <b>replay</b> (<code>spacesim simulate --replay</code>) drives the model with "
        "what the measured run actually had: its arrivals, session lengths, each "
        "participant's network path, the speakers' talk spurts and every action. Only "
        "the server and network models differ, so its gap is the model's error on this "
        "run. An <b>independent draw</b> simulates the same scenario with its own random "
        "draws (who arrives when, who gets a slow path, who talks): the min to max over its "
        "seeds shows how far chance alone moves each figure. Gaps are (simulated - "
        "measured) / measured.</p>"
    ]
    for measured, replays, independent in found:
        table = likeforlike.gap_table(measured, replays, independent)
        head = ["metric", _e(name[id(measured)])]
        if replays:
            head += [_e(name[id(replays[0])]), "replay gap"]
        if independent:
            head += [f"independent draws, min to max ({len(independent)} seeds)", "their gaps"]
        rows = []
        for metric, row in table.iterrows():
            unit = str(row["unit"])
            cells = [f"<b>{_e(metric)}</b>", _fmt(row["measured"], unit) or _DASH]
            if replays:
                cells += [_fmt(row["replay"], unit) or _DASH, _pct(row["replay_gap"])]
            if independent:
                lo, hi = _fmt(row["independent_min"], unit), _fmt(row["independent_max"], unit)
                cells.append(f"{lo} to {hi}" if lo else _DASH)
                gaps = (row["independent_gap_min"], row["independent_gap_max"])
                cells.append(f"{_pct(gaps[0])} to {_pct(gaps[1])}" if lo else _DASH)
            rows.append(cells)
        parts.append(_table(head, rows))
    return "".join(parts)


def _pct(x: object) -> str:
    return _DASH if _isna(x) else f"{float(x):+.1%}"  # type: ignore[arg-type]


def _slo_value(items: Sequence[Run]) -> float | None:
    for r in items:
        sc = runs.scenario_of(r)
        if sc is not None and sc.slo.audio_latency_p95 is not None:
            return sc.slo.audio_latency_p95
    return None


def _figures_section(items: Sequence[Run], names: Sequence[str]) -> str:
    frames = dict(zip(names, (runs.records(r) for r in items), strict=True))
    window = _window(max((r.meta.duration or 0.0) for r in items) or None)
    slo = _slo_value(items)
    figs = [
        plots.concurrency(frames),
        plots.latency_cdf(frames, slo=slo),
        plots.percentiles_over_time(frames, window=window, slo=slo),
        plots.join_histograms(frames),
        plots.loss_jitter(frames, window=window),
        plots.moderation_timings(frames),
        plots.node_load(frames),
    ]
    parts = ["<h2>Figures</h2>"]
    for (title, words), fig in zip(_FIGURES, figs, strict=True):
        parts.append(
            f"<figure><h3>{_e(title)}</h3><figcaption>{_e(words)}</figcaption>"
            f'<img alt="{_e(title)}" src="data:image/png;base64,{_png(fig)}"></figure>'
        )
    jitter_words = views.METRICS["jitter"][1]
    parts.append(f"<p class='note'>Jitter here: {_e(jitter_words)}.</p>")
    return "".join(parts)


#: Why a browser hears the same packets later or sooner than an aiortc probe.
BROWSER_WORDS = (
    "Both kinds of probe hear the same speakers' marked packets in the same run. An aiortc "
    "probe holds every frame in aiortc's fixed jitter buffer (prefetch=4: ~80 ms at 20 ms "
    "frames) before decoding; Chromium's NetEq adapts its buffer to the jitter it measures "
    "(shrinking on a quiet path, growing on a jittery one) and stretches or conceals audio "
    "to do so. Browser mouth-to-ear = a marked packet's arrival at the page's encoded "
    "transform (before NetEq) on the speakers' clock minus its mark, plus NetEq's delay per "
    "emitted sample in that second, plus the playout delay Chromium reports (media-playout; "
    "a fake audio output on a headless machine). Decoding and the sound device itself are "
    "not in it."
)


def _browser_section(items: Sequence[Run], names: Sequence[str]) -> str:
    """Browser probes' mouth-to-ear beside the aiortc probes', when a run has them."""
    frames = dict(zip(names, (runs.records(r) for r in items), strict=True))
    with_browser = {n: f for n, f in frames.items() if (f["kind"] == "browser_mouth_to_ear").any()}
    if not with_browser:
        return ""
    rows = []
    for name, rec in with_browser.items():
        s = summarise(rec)

        def ms(metric: str, stat: str, s: pd.DataFrame = s) -> str:
            v = s[stat].get(metric, math.nan)
            return _DASH if _isna(v) else f"{float(v) * 1e3:,.0f} ms"

        rows.append(
            [
                _e(name),
                ms("mouth_to_ear", "p50"),
                ms("mouth_to_ear", "p95"),
                ms("browser_mouth_to_ear", "p50"),
                ms("browser_mouth_to_ear", "p95"),
                ms("client_buffer", "p50"),
                ms("browser_jitter_buffer", "p50"),
            ]
        )
    head = ["run", "aiortc p50", "aiortc p95", "browser p50", "browser p95",
            "aiortc buffer p50", "NetEq p50"]  # fmt: skip
    fig = plots.mouth_to_ear_cdf(with_browser)
    title = "Mouth to ear: aiortc probes and browser probes"
    return (
        f"<h2>{_e(title)}</h2><p>{_e(BROWSER_WORDS)}</p>"
        + _table(head, rows)
        + f'<figure><img alt="{_e(title)}" src="data:image/png;base64,{_png(fig)}"></figure>'
    )


def _scenario_section(items: Sequence[Run], names: Sequence[str]) -> str:
    seen: dict[str, tuple[Scenario | None, list[str]]] = {}
    for r, name in zip(items, names, strict=True):
        key = r.meta.scenario_hash or r.meta.run_id
        seen.setdefault(key, (runs.scenario_of(r), []))[1].append(name)
    parts = ["<h2>Scenario</h2>"]
    if len(seen) > 1:
        parts.append(
            '<p class="warn">These runs come from different scenarios (or different '
            "overrides): compare them with care.</p>"
        )
    for key, (sc, used_by) in seen.items():
        who = ", ".join(map(_e, used_by))
        if sc is None:
            parts.append(f"<p>{who}: no scenario stored in meta.json.</p>")
            continue
        parts.append(
            f"<h3>{_e(sc.name)} <span class='note'>(hash {_e(key)}; used by {who})</span></h3>"
            f"<p>{_e(sc.description)}</p>"
            "<p class='note'>Resolved, in base units: seconds, events per second, "
            "fractions 0-1.</p>"
            f"<pre>{_e(sc.to_yaml())}</pre>"
        )
    return "".join(parts)


def render(items: Sequence[Run], title: str | None = None) -> str:
    """The whole HTML page for `items` (one or more runs)."""
    if not items:
        raise ValueError("a report needs at least one run")
    names = runs.labels(items)
    title = title or (
        f"spacesim report: {items[0].meta.scenario_name}"
        if len(items) == 1
        else "spacesim report: " + " vs ".join(dict.fromkeys(r.meta.source for r in items))
    )
    intro = (
        "One run."
        if len(items) == 1
        else f"{len(items)} runs compared side by side; "
        "each has one column in the tables and one colour in the figures."
    )
    body = "".join(
        section(items, names)
        for section in (
            _slo_section,
            _likeforlike_section,
            _summary_section,
            _browser_section,
            _figures_section,
            _runs_section,
            _scenario_section,
        )
    )
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return _PAGE.substitute(title=_e(title), now=now, intro=_e(intro), body=body)


def write_report(paths: Sequence[str | Path], out: str | Path) -> Path:
    """Open the run directories and write the report; `runs.RunError` names a bad path."""
    items = runs.open_runs(paths)
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render(items), encoding="utf-8")
    return target
