"""The sim provider: the whole interface, a shared state file, and `drdrill run --simulate`."""

from __future__ import annotations

import json
import multiprocessing
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from drdrill.core.models import TAG_DRILL_ID, DrillContext
from drdrill.providers.base import ProviderError
from drdrill.providers.sim import SimProvider, SimState, default_state_path, sample_latency
from drdrill.app.simulate import simulated
from drdrill.core.spec import SpecError, load_spec, parse_spec
from tests.sim_harness import REPO, leaked, run_sim, sim_yaml, spec_of


def _ctx(drill_id: str = "d1") -> DrillContext:
    now = datetime(2026, 1, 1, 12, 30, tzinfo=timezone.utc)
    return DrillContext(drill_id=drill_id, drill_name="x", declared=now, expires_at=now + timedelta(hours=6))


def test_a_sim_drill_passes_end_to_end_and_leaves_nothing(temporal_server, tmp_path):
    state = tmp_path / "sim.json"
    result, _ = run_sim(temporal_server.address, sim_yaml(targets=2), state, tmp_path)
    assert result.verdict == "PASSED", result.findings
    assert [v.outcome for v in result.validations] == ["PASSED", "PASSED"]
    assert {o.name: o.outcome for o in result.objectives} == {"RTO": "PASSED", "RPO": "PASSED"}
    assert result.teardown[0].deleted and leaked(state) == []
    assert Path(result.evidence_path).exists()


def test_the_provider_interface_directly(tmp_path):
    spec = spec_of(sim_yaml(source="{points: 3, point_interval: 1h, restore_time: 0.05, ready_after: 0.05}"))
    target = spec.targets[0]
    sim = SimProvider(tmp_path / "s.json")
    ctx = _ctx()
    point = sim.find_recovery_point(ctx, target)
    assert point.consistent_time == datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc) and point.candidates == 3
    env = sim.create_isolation(ctx, spec.isolation, [target])
    assert sim.create_isolation(ctx, spec.isolation, [target]).id == env.id  # idempotent
    assert sim.verify_isolation(ctx, env).outcome == "PASSED"
    res = sim.restore(ctx, target, point, env)
    assert sim.restore(ctx, target, point, env).id == res.id  # a retry continues the first restore
    assert sim.wait_ready(ctx, target, res, timeout=5).ready
    assert all(r["tags"][TAG_DRILL_ID] == "d1" for r in SimState(sim.state.path).resources().values())
    report = sim.teardown(ctx, env)
    assert len(report.deleted) == 2 and SimState(sim.state.path).resources() == {}
    again = sim.teardown(ctx, env).outcomes  # deleting the absent is success
    assert [(o.kind, o.id, o.result) for o in again] == [("network", env.id, "already_gone")]


def test_no_recovery_point_and_leaky_isolation(tmp_path):
    spec = spec_of(sim_yaml(source="{points: 0, faults: {leaky_isolation: true}}"))
    sim, ctx, target = SimProvider(tmp_path / "s.json"), _ctx(), spec.targets[0]
    with pytest.raises(ProviderError) as exc:
        sim.find_recovery_point(ctx, target)
    assert exc.value.code == "RECOVERY_POINT_NOT_FOUND"
    env = sim.create_isolation(ctx, spec.isolation, [target])
    assert sim.verify_isolation(ctx, env).outcome == "FAILED"


def _bump(path: str, n: int) -> None:
    state = SimState(path)
    for _ in range(n):
        with state.edit() as s:
            s["counters"]["k"] = s["counters"].get("k", 0) + 1


def test_the_state_file_is_shared_safely_between_processes(tmp_path):
    path = str(tmp_path / "shared.json")
    procs = [multiprocessing.get_context("spawn").Process(target=_bump, args=(path, 50)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert SimState(path).read()["counters"]["k"] == 200  # no lost update


def test_from_environment_and_latency_shapes(tmp_path):
    sim = SimProvider.from_environment({"DRDRILL_SIM_STATE": str(tmp_path / "x.json"), "DRDRILL_SIM_SPEED": "0.01"}, {})
    assert sim.speed == 0.01 and sim.state.path == tmp_path / "x.json"
    assert default_state_path({"DRDRILL_STATE_DIR": "/srv/dr"}) == "/srv/dr/sim-state.json"
    with pytest.raises(ProviderError):
        SimProvider.from_environment({"DRDRILL_SIM_SPEED": "fast"}, {})
    assert sample_latency({"fixed": 2.0}) == 2.0
    assert 1.0 <= sample_latency({"min": 1.0, "max": 3.0}) <= 3.0
    assert sample_latency({"mean": 1.0, "stddev": 50.0}) >= 0.0


def test_the_faults_schema_is_strict_with_clear_errors():
    bad = sim_yaml(source="{faults: {throtle: 2, fail: delete_everything, latency: {restore: {min: 3, max: 1}}}}")
    with pytest.raises(SpecError) as exc:
        parse_spec(bad, "bad.yaml")
    text = str(exc.value)
    assert "bad.yaml" in text and "did you mean 'throttle'" in text
    assert "faults.fail" in text and "min <= max" in text


@pytest.mark.parametrize("drill", sorted(p.name for p in (REPO / "drills").glob("*.yaml")))
def test_every_shipped_drill_simulates(drill, monkeypatch, tmp_path):
    monkeypatch.setenv("DRDRILL_STATE_DIR", str(tmp_path))
    spec = load_spec(REPO / "drills" / drill)
    sim = simulated(spec)
    assert [t.name for t in sim.targets] == [t.name for t in spec.targets]
    assert {t.provider for t in sim.targets} == {"sim"}
    kept = [sim.validation_name(i) for i in range(len(sim.validations))]
    targeted = [spec.validation_name(i) for i, v in enumerate(spec.validations) if getattr(v, "target", None)]
    assert kept == targeted
    assert sim.objectives == spec.objectives and sim.max_duration == spec.max_duration
    # It survives the trip to the workflow (JSON, validated again there).
    type(sim).model_validate(json.loads(sim.model_dump_json()))


def test_a_simulated_shipped_drill_runs_and_passes(temporal_server, tmp_path):
    spec = simulated(load_spec(REPO / "drills" / "aws-rds.yaml"))
    state = tmp_path / "sim.json"
    result, _ = run_sim(temporal_server.address, spec, state, tmp_path)
    assert result.verdict == "PASSED", (result.findings, result.validations)
    assert leaked(state) == []
