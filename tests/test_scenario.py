"""Tests for spacesim.scenario: unit parsers, shipped scenarios, error reports, overrides."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from spacesim.scenario import (
    PiecewiseArrivals,
    PoissonArrivals,
    Scenario,
    ScenarioError,
    Session,
    Slo,
    load_scenario,
    parse_count,
    parse_duration,
    parse_fraction,
    parse_rate,
    parse_scenario,
)

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"
SCENARIO_FILES = sorted(SCENARIOS.glob("*.yaml"))
REQUIRED = {
    "smoke",
    "town-hall",
    "panel",
    "flash-crowd",
    "moderation-raid",
    "lossy-network",
    "multi-room",
}

# A small valid scenario; tests copy it and break one thing.
BASE: dict[str, Any] = {
    "name": "t",
    "duration": "2m",
    "rooms": {"count": 1, "cohosts": 0, "speakers": 1},
    "speaking": {"active_speakers": 2},
    "arrivals": {"kind": "poisson", "rate": "1/s"},
    "session": {"kind": "exponential", "mean": "1m"},
}


def base(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    data.update(changes)
    return data


def write(tmp_path: Path, data: object, name: str = "scenario.yaml") -> Path:
    path = tmp_path / name
    text = data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return path


def load_error(path: Path, overrides: tuple[str, ...] = ()) -> ScenarioError:
    with pytest.raises(ScenarioError) as info:
        load_scenario(path, overrides)
    err = info.value
    assert isinstance(err.problems, list)
    assert err.problems, "a ScenarioError must carry at least one problem"
    for problem in err.problems:
        assert isinstance(problem, tuple)
        assert len(problem) == 2
        assert all(isinstance(part, str) for part in problem)
    assert err.source == str(path)
    return err


def paths(err: ScenarioError) -> list[str]:
    return [p for p, _ in err.problems]


# --------------------------------------------------------------------------- units


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("4m", 240.0),
        ("4min", 240.0),
        ("1.5h", 5400.0),
        ("30us", 30e-6),
        ("30µs", 30e-6),
        ("30s", 30.0),
        ("2d", 172800.0),
        ("5", 5.0),
        (" 5 s ", 5.0),
        (5, 5.0),
        (2.5, 2.5),
        (0, 0.0),
    ],
)
def test_parse_duration(text: object, seconds: float) -> None:
    result = parse_duration(text)
    assert isinstance(result, float)
    assert result == pytest.approx(seconds, rel=1e-12)


@pytest.mark.parametrize("bad", ["10q", "-1s", "abc", "", "4M", "1e400s", True, None, -1, [1]])
def test_parse_duration_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("text", "per_second"),
    [
        ("5/s", 5.0),
        ("300/min", 5.0),
        ("300/m", 5.0),
        ("2/h", 2 / 3600),
        ("0.5/h", 0.5 / 3600),
        ("86400/d", 1.0),
        ("0/s", 0.0),
        ("5", 5.0),
        (5, 5.0),
        (0.25, 0.25),
    ],
)
def test_parse_rate(text: object, per_second: float) -> None:
    assert parse_rate(text) == pytest.approx(per_second, rel=1e-12)


@pytest.mark.parametrize("bad", ["5/x", "5/", "-5/s", "fast", True, None])
def test_parse_rate_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_rate(bad)


@pytest.mark.parametrize(
    ("text", "fraction"),
    [
        ("0.5%", 0.005),
        ("50%", 0.5),
        ("100%", 1.0),
        ("0%", 0.0),
        (0.2, 0.2),
        ("0.2", 0.2),
        (1, 1.0),
        (0, 0.0),
    ],
)
def test_parse_fraction(text: object, fraction: float) -> None:
    assert parse_fraction(text) == pytest.approx(fraction, rel=1e-12)


@pytest.mark.parametrize("bad", ["150%", 1.5, "x%", "%", "-1%", -0.1, "nan", True, None])
def test_parse_fraction_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_fraction(bad)


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("100k", 100_000),
        ("100K", 100_000),
        ("1M", 1_000_000),
        ("1e5", 100_000),
        ("1.5k", 1500),
        ("100000", 100_000),
        (1000, 1000),
        (1000.0, 1000),
        (0, 0),
    ],
)
def test_parse_count(text: object, count: int) -> None:
    result = parse_count(text)
    assert type(result) is int
    assert result == count


@pytest.mark.parametrize("bad", [1.5, "1.5", "-3", -3, "1m", "lots", True, float("inf"), None])
def test_parse_count_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_count(bad)


# --------------------------------------------------------------------------- shipped scenarios


def test_scenario_directory_is_not_empty() -> None:
    assert SCENARIO_FILES, f"no scenarios found in {SCENARIOS}"


@pytest.mark.parametrize("path", SCENARIO_FILES, ids=lambda p: p.stem)
def test_shipped_scenario_loads(path: Path) -> None:
    sc = load_scenario(path)
    assert isinstance(sc, Scenario)
    assert sc.name == path.stem
    assert sc.duration > 0


@pytest.mark.parametrize("path", SCENARIO_FILES, ids=lambda p: p.stem)
def test_shipped_scenario_has_comment_header(path: Path) -> None:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("#"), f"{path.name} must open with a comment explaining it"


def test_required_scenarios_exist() -> None:
    names = {load_scenario(p).name for p in SCENARIO_FILES}
    assert names >= REQUIRED, f"missing scenarios: {sorted(REQUIRED - names)}"


@pytest.mark.parametrize("path", SCENARIO_FILES, ids=lambda p: p.stem)
def test_to_yaml_round_trips(path: Path) -> None:
    sc = load_scenario(path)
    again = parse_scenario(yaml.safe_load(sc.to_yaml()))
    assert again == sc
    assert again.content_hash() == sc.content_hash()


# --------------------------------------------------------------------------- bad files


def test_bad_unit_in_nested_field(tmp_path: Path) -> None:
    path = write(tmp_path, base(arrivals={"kind": "poisson", "rate": "5/x"}))
    err = load_error(path)
    assert str(path) in str(err)
    assert "arrivals.rate" in str(err)
    assert paths(err) == ["arrivals.rate"]


def test_bad_unit_in_list_item_names_index(tmp_path: Path) -> None:
    path = write(tmp_path, base(network=[{"share": "50%", "rtt": "5q"}, {"share": "50%"}]))
    err = load_error(path)
    assert paths(err) == ["network[0].rtt"]


def test_typo_key_is_named(tmp_path: Path) -> None:
    data = base()
    data["arivals"] = data.pop("arrivals")
    path = write(tmp_path, data)
    err = load_error(path)
    assert "arivals" in paths(err)
    assert "arivals" in str(err)
    # the real field is now missing too, and every fault is reported at once
    assert "arrivals" in paths(err)


def test_too_many_cohosts(tmp_path: Path) -> None:
    path = write(tmp_path, base(rooms={"count": 1, "cohosts": 3, "speakers": 1}))
    err = load_error(path)
    assert "rooms.cohosts" in paths(err)
    assert "rooms.cohosts" in str(err)


def test_invalid_yaml_syntax(tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\nduration: [1, 2\nfoo: bar\n")
    err = load_error(path)
    assert str(path) in str(err)
    assert "line" in str(err)
    assert "invalid YAML" in str(err)


def test_network_shares_must_sum_to_one(tmp_path: Path) -> None:
    path = write(tmp_path, base(network=[{"share": "60%"}, {"share": "30%"}]))
    err = load_error(path)
    assert paths(err) == ["network"]
    assert "network" in str(err)


def test_single_network_profile_mapping_is_accepted(tmp_path: Path) -> None:
    sc = load_scenario(write(tmp_path, base(network={"share": "100%", "loss": "2%"})))
    assert len(sc.network) == 1
    assert sc.network[0].loss == pytest.approx(0.02)


def test_active_speakers_larger_than_stage(tmp_path: Path) -> None:
    path = write(tmp_path, base(speaking={"active_speakers": 5}))  # stage is 1 + 0 + 1
    err = load_error(path)
    assert paths(err) == ["speaking.active_speakers"]  # a cross-field check names its field
    assert "stage" in str(err)


def test_active_speakers_equal_to_stage_is_fine(tmp_path: Path) -> None:
    sc = load_scenario(write(tmp_path, base(speaking={"active_speakers": 2})))
    assert sc.speaking.active_speakers == 2


@pytest.mark.parametrize(
    "steps",
    [
        [{"at": "0s", "rate": "1/s"}, {"at": "5m", "rate": "2/s"}, {"at": "2m", "rate": "1/s"}],
        [{"at": "0s", "rate": "1/s"}, {"at": "1m", "rate": "2/s"}, {"at": "60s", "rate": "3/s"}],
        [{"at": "10s", "rate": "1/s"}],
    ],
    ids=["decreasing", "repeated", "not-from-zero"],
)
def test_piecewise_steps_out_of_order(tmp_path: Path, steps: list[dict[str, str]]) -> None:
    path = write(tmp_path, base(arrivals={"kind": "piecewise", "steps": steps}))
    err = load_error(path)
    assert paths(err) == ["arrivals.steps"]
    assert "arrivals.steps" in str(err)


def test_piecewise_in_order_loads(tmp_path: Path) -> None:
    steps = [{"at": "0s", "rate": "1/s"}, {"at": "1m", "rate": "10/s"}]
    sc = load_scenario(write(tmp_path, base(arrivals={"kind": "piecewise", "steps": steps})))
    assert isinstance(sc.arrivals, PiecewiseArrivals)
    assert [(s.at, s.rate) for s in sc.arrivals.steps] == [(0.0, 1.0), (60.0, 10.0)]


def test_outcomes_must_sum_to_one(tmp_path: Path) -> None:
    outcomes = {"dismiss": "50%", "remove": "20%", "block": "10%"}
    path = write(tmp_path, base(audience={"outcomes": outcomes}))
    err = load_error(path)
    assert paths(err) == ["audience.outcomes"]
    assert "audience.outcomes" in str(err)


def test_unknown_arrival_kind(tmp_path: Path) -> None:
    path = write(tmp_path, base(arrivals={"kind": "poison", "rate": "1/s"}))
    err = load_error(path)
    assert paths(err) == ["arrivals"]
    assert "poison" in str(err)


def test_several_faults_reported_at_once(tmp_path: Path) -> None:
    data = base(duration="10q")
    data["server"] = {"nodes": 0}
    data["rooms"] = {"cohosts": 3}
    err = load_error(write(tmp_path, data))
    assert {"duration", "server.nodes", "rooms.cohosts"} <= set(paths(err))
    assert len(str(err).splitlines()) == len(err.problems)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    err = load_error(path)
    assert str(path) in str(err)
    assert "cannot read" in str(err)


@pytest.mark.parametrize("text", ["- a\n- b\n", "", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    err = load_error(path)
    assert paths(err) == [""]
    assert "mapping" in str(err)
    assert str(path) in str(err)


def test_parse_scenario_without_file_uses_source_label() -> None:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(base(duration="0s"), source="inline")
    assert info.value.source == "inline"
    assert str(info.value).startswith("inline: duration:")


# --------------------------------------------------------------------------- overrides


def test_overrides_change_fields(tmp_path: Path) -> None:
    path = write(tmp_path, base())
    sc = load_scenario(path, ["server.nodes=4", "arrivals.rate=10/s"])
    assert sc.server.nodes == 4
    assert isinstance(sc.arrivals, PoissonArrivals)
    assert sc.arrivals.rate == 10.0
    plain = load_scenario(path)
    assert plain.server.nodes == 1
    assert isinstance(plain.arrivals, PoissonArrivals)
    assert plain.arrivals.rate == 1.0


def test_override_creates_missing_section(tmp_path: Path) -> None:
    sc = load_scenario(write(tmp_path, base()), ["sim.tick=2s", "slo.join_p95=500ms"])
    assert sc.sim.tick == 2.0
    assert sc.slo.join_p95 == 0.5


def test_override_of_shipped_scenario() -> None:
    sc = load_scenario(SCENARIOS / "smoke.yaml", ["server.nodes=4", "arrivals.rate=10/s"])
    assert sc.server.nodes == 4
    assert isinstance(sc.arrivals, PoissonArrivals)
    assert sc.arrivals.rate == 10.0


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("server.nodes=abc", "server.nodes"),
        ("server.nodes=0", "server.nodes"),
        ("arrivals.rate=5/x", "arrivals.rate"),
        ("rooms.cohosts=3", "rooms.cohosts"),
        ("nosuch.key=1", "nosuch"),
    ],
)
def test_bad_override_names_the_field(tmp_path: Path, override: str, field: str) -> None:
    path = write(tmp_path, base())
    err = load_error(path, (override,))
    assert field in paths(err)
    assert field in str(err)


@pytest.mark.parametrize("override", ["server.nodes", "=3"])
def test_malformed_override(tmp_path: Path, override: str) -> None:
    err = load_error(write(tmp_path, base()), (override,))
    assert err.problems == [(f"--set {override}", "expected PATH=VALUE")]


def test_bare_override_names_its_one_section_and_switches_read_on_off(tmp_path: Path) -> None:
    """`--set captions=on` (the issue's words) is `features.captions=1`."""
    path = write(tmp_path, base())
    sc = load_scenario(path, ["captions=on", "recording=on", "clip_rate=2/min", "nodes=3"])
    assert (sc.features.captions, sc.features.recording) == (1.0, 1.0)
    assert sc.features.clip_rate == pytest.approx(2 / 60)
    assert sc.server.nodes == 3
    off = load_scenario(path, ["features.captions=off", "recording=25%"])
    assert (off.features.captions, off.features.recording) == (0.0, 0.25)
    err = load_error(path, ("captions=maybe",))
    assert "features.captions" in paths(err) and "on / off" in str(err)


def test_bare_override_of_a_name_several_sections_have_is_refused(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, base()), ("block_rate=1/h",))
    assert paths(err) == ["--set block_rate=1/h"]
    assert "write SECTION.block_rate" in str(err)


def test_parse_scenario_overrides_do_not_mutate_input() -> None:
    data = base()
    before = copy.deepcopy(data)
    sc = parse_scenario(data, overrides=["server.nodes=4", "arrivals.rate=10/s"])
    assert sc.server.nodes == 4
    assert data == before


# --------------------------------------------------------------------------- hashing


def test_content_hash_ignores_spelling(tmp_path: Path) -> None:
    a = load_scenario(write(tmp_path, base(duration="60s"), "a.yaml"))
    b = load_scenario(write(tmp_path, base(duration="1m"), "b.yaml"))
    c = load_scenario(
        write(
            tmp_path,
            base(duration=60, arrivals={"kind": "poisson", "rate": "60/min"}),
            "c.yaml",
        )
    )
    assert a == b == c
    assert a.content_hash() == b.content_hash() == c.content_hash()


def test_content_hash_includes_defaults(tmp_path: Path) -> None:
    implicit = load_scenario(write(tmp_path, base(), "a.yaml"))
    explicit = load_scenario(write(tmp_path, base(server={"nodes": 1, "cores": 1.0}), "b.yaml"))
    assert implicit.content_hash() == explicit.content_hash()


@pytest.mark.parametrize(
    "change",
    [
        {"duration": "61s"},
        {"seed": 2},
        {"arrivals": {"kind": "constant", "rate": "1/s"}},
        {"server": {"nodes": 2}},
        {"network": [{"share": "100%", "loss": "1%"}]},
    ],
)
def test_content_hash_differs_for_different_content(change: dict[str, Any]) -> None:
    a = parse_scenario(base(duration="60s"))
    b = parse_scenario({**base(duration="60s"), **change})
    assert a != b
    assert a.content_hash() != b.content_hash()


def test_content_hash_is_short_hex() -> None:
    h = parse_scenario(base()).content_hash()
    assert len(h) == 16
    int(h, 16)


def test_to_yaml_is_in_base_units() -> None:
    dumped = yaml.safe_load(parse_scenario(base()).to_yaml())
    assert dumped["duration"] == 120.0
    assert dumped["arrivals"] == {"kind": "poisson", "rate": 1.0}
    assert dumped["session"]["mean"] == 60.0


# --------------------------------------------------------------------------- SLOs


def test_slo_targets_names_and_order() -> None:
    slo = Slo(
        join_p95="1s",
        first_audio_p95="3s",
        audio_latency_p95="150ms",
        delivery_ratio="99%",
        hand_wait_p95="1m",
    )
    targets = slo.targets()
    assert [(metric, op) for metric, op, _ in targets] == [
        ("join_time.p95", "<="),
        ("first_audio.p95", "<="),
        ("audio_latency.p95", "<="),
        ("delivery_ratio.value", ">="),
        ("hand_wait.p95", "<="),
    ]
    assert [v for _, _, v in targets] == pytest.approx([1.0, 3.0, 0.15, 0.99, 60.0])


def test_slo_targets_skip_unset() -> None:
    assert Slo().targets() == []
    ((metric, op, threshold),) = Slo(audio_latency_p95="200ms").targets()
    assert (metric, op) == ("audio_latency.p95", "<=")
    assert threshold == pytest.approx(0.2)


def test_smoke_slo_targets() -> None:
    metrics = [m for m, _, _ in load_scenario(SCENARIOS / "smoke.yaml").slo.targets()]
    assert "audio_latency.p95" in metrics
    assert "delivery_ratio.value" in metrics


def test_override_addresses_list_items_by_index(tmp_path: Path) -> None:
    profiles = [{"share": 0.5, "loss": 0}, {"share": 0.5, "loss": 0}]
    path = write(tmp_path, base(network=profiles))
    sc = load_scenario(path, ["network.1.loss=2%"])
    assert [p.loss for p in sc.network] == [0, 0.02]


@pytest.mark.parametrize("override", ["network.7.loss=1%", "network.loss=1%"])
def test_override_outside_a_list_is_refused(tmp_path: Path, override: str) -> None:
    path = write(tmp_path, base(network=[{"share": 1}]))
    err = load_error(path, (override,))
    assert paths(err) == [f"--set {override}"]
    assert "index" in str(err)


def test_seed_must_be_an_integer_not_a_boolean(tmp_path: Path) -> None:
    assert paths(load_error(write(tmp_path, base(seed=True)))) == ["seed"]


def test_session_law_is_shared_by_both_engines() -> None:
    """`Session.draw` is the one place the session distributions are defined."""
    import random

    import numpy as np

    rng = random.Random(3)
    for kind, sigma in (("exponential", 1.0), ("lognormal", 1.2), ("fixed", 1.0)):
        session = parse_scenario(
            {**BASE, "session": {"kind": kind, "mean": "5m", "sigma": sigma}}, "t"
        ).session
        draws = [
            session.draw(lambda: rng.expovariate(1.0), lambda: rng.gauss(0, 1))
            for _ in range(40_000)
        ]
        assert np.mean(draws) == pytest.approx(300, rel=0.03)


@pytest.mark.parametrize("kind", ["exponential", "lognormal", "fixed"])
def test_session_survival_matches_draws(kind: str) -> None:
    import random

    session = Session(kind=kind, mean=10.0, sigma=0.7)
    rng = random.Random(3)
    draws = [session.draw(lambda: rng.expovariate(1.0), lambda: rng.gauss(0, 1))
             for _ in range(20_000)]  # fmt: skip
    import numpy as np

    xs = np.array([2.0, 9.0, 25.0])
    for x, p in zip(xs, session.survival(xs), strict=True):
        empirical = sum(d > x for d in draws) / len(draws)
        assert p == pytest.approx(empirical, abs=0.015)
    assert session.survival(np.array([-1.0]))[0] == 1.0


def test_with_audience_scales_arrivals_only() -> None:
    sc = load_scenario(SCENARIOS / "town-hall.yaml")
    small = sc.with_audience(0.01)
    assert small.session == sc.session and small.speaking == sc.speaking
    assert small.arrivals.kind == "flash_crowd" and sc.arrivals.kind == "flash_crowd"
    assert small.arrivals.base == pytest.approx(sc.arrivals.base * 0.01)
    assert small.arrivals.bursts[0].size == round(sc.arrivals.bursts[0].size * 0.01)
    assert Scenario.model_validate(small.model_dump(mode="json")) == small  # still valid
    with pytest.raises(ValueError, match="factor"):
        sc.with_audience(0)
