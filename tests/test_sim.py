"""The sim provider: the whole interface, a shared state file, and `drdrill run --simulate`."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import re
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError

from app.simulate import simulated
from drdrill.core.models import TAG_DRILL_ID, DrillContext, DrillResult, RecoveryPoint
from drdrill.providers.spec import DrillInput, DrillSpec, load_spec, parse_spec
from drdrill.core.schema import SpecError
from drdrill.providers.base import ProviderError, select_for_target
from drdrill.providers.sim.provider import SimProvider, SimState, default_state_path, sample_latency
from tests.sim_harness import REPO, cli_env, leaked, run_sim, sim_yaml, spec_of
from worker import connect, running_worker
from workflows.drill import DrillWorkflow

SHIPPED = sorted(p.name for p in (REPO / "drills").glob("*.yaml"))
ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


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


@pytest.mark.parametrize("drill", SHIPPED)
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
    assert result.as_of is None  # a drill as of its own declared time says nothing more
    assert leaked(state) == []



# ---------------------------------------------------------------- any date: time from the test's own clock


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def _at(target, when: datetime):
    """`target` with `rule: at` the newest point at or before `when`."""
    rule = target.recovery_point.model_validate({"rule": "at", "at": when.isoformat()})
    return target.model_copy(update={"recovery_point": rule})


def _uncommented(text: str, first: str) -> str:
    """`text` with the commented example that starts with the line `# <first>` enabled, as a user
    enables it: the '# ' removed from that line and the deeper-indented commented lines after it."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == f"# {first}")
    col = lines[start].index("#")
    i = start
    while i < len(lines) and lines[i].startswith(" " * col + "# ") and (i == start or lines[i][col + 2] == " "):
        lines[i] = lines[i][:col] + lines[i][col + 2 :]
        i += 1
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("drill", SHIPPED)
def test_shipped_drills_name_no_time_that_will_stop_existing(drill):
    path = REPO / "drills" / drill
    spec = load_spec(path)
    assert [t.name for t in spec.targets if t.recovery_point.rule == "at"] == []
    live = [line.split("#")[0] for line in path.read_text().splitlines()]
    assert [line for line in live if ISO_TIME.search(line)] == []  # times appear in commented examples only


@pytest.mark.parametrize("drill", SHIPPED)
def test_rule_at_picks_the_newest_point_at_or_before_the_time(drill, monkeypatch, tmp_path):
    monkeypatch.setenv("DRDRILL_STATE_DIR", str(tmp_path))
    sim = SimProvider(tmp_path / "s.json")
    now = _now()
    for as_of in (None, now + timedelta(days=400)):
        ctx = DrillContext(drill_id="at-1", drill_name="x", declared=now, expires_at=now + timedelta(hours=6), as_of=as_of)
        for target in simulated(load_spec(REPO / "drills" / drill)).targets:
            when = ctx.as_of - timedelta(minutes=90)
            point = sim.find_recovery_point(ctx, _at(target, when))
            assert when - target.source.point_interval < point.consistent_time <= when, (as_of, target.name)


def test_a_recovery_point_from_after_the_as_of_moment_is_not_chosen():
    now = _now()
    as_of = now - timedelta(days=3)
    ctx = DrillContext(drill_id="as-of-1", drill_name="x", declared=now, expires_at=now + timedelta(hours=6), as_of=as_of)
    target = spec_of(sim_yaml()).targets[0]
    points = [RecoveryPoint(target="db0", provider="sim", id=f"p{d}", consistent_time=now - timedelta(days=d)) for d in (1, 4, 5)]
    chosen = select_for_target(points, ctx, target)
    assert chosen.id == "p4"  # the newest that existed three days ago, not yesterday's
    with pytest.raises(ProviderError) as exc:
        select_for_target(points[:1], ctx, target)
    assert exc.value.code == "RECOVERY_POINT_NOT_FOUND" and f"as of {as_of.isoformat()}" in str(exc.value)


def test_the_commented_point_in_time_example_runs_with_a_time_from_now(temporal_server, tmp_path):
    path = REPO / "drills" / "aws-rds.yaml"
    text = path.read_text()
    for first in ("- name: shop-pitr", "- name: pitr-orders-present", "- name: pitr-instance-private"):
        text = _uncommented(text, first)
    when = _now() - timedelta(hours=3)
    text = ISO_TIME.sub(when.strftime("%Y-%m-%dT%H:%M:%SZ"), text)
    spec = parse_spec(text, str(path), base_dir=path.parent)
    assert spec.target("shop-pitr").recovery_point.at == when
    state = tmp_path / "sim.json"
    result, _ = run_sim(temporal_server.address, simulated(spec), state, tmp_path, speed=0.1)
    assert result.verdict == "PASSED", (result.findings, result.validations)
    pitr = next(p for p in result.recovery_points if p.target == "shop-pitr")
    assert when - timedelta(hours=1) < pitr.consistent_time <= when
    assert {"pitr-orders-present", "pitr-instance-private"} <= {v.name for v in result.validations if v.outcome == "PASSED"}
    assert leaked(state) == []


async def _run_all(address: str, specs: list[DrillSpec], as_of: datetime, state: Path, state_dir: Path) -> list[DrillResult]:
    client = await connect(address)
    queue = f"as-of-{uuid.uuid4().hex[:8]}"
    async with running_worker(client, task_queue_name=queue, providers={"sim": SimProvider(state, speed=0.1)}, state_dir=str(state_dir)):
        handles = []
        for spec in specs:
            drill_id = f"{spec.name}-{uuid.uuid4().hex[:6]}"
            handles.append(
                await client.start_workflow(
                    DrillWorkflow.run,
                    DrillInput(spec=spec, drill_id=drill_id, started_by="test", heartbeat_seconds=2, as_of=as_of),
                    id=drill_id,
                    task_queue=queue,
                )
            )
        return list(await asyncio.gather(*(h.result() for h in handles)))


def test_every_simulated_shipped_drill_passes_400_days_from_now(temporal_server, tmp_path):
    as_of = datetime.now(timezone.utc) + timedelta(days=400)
    specs = [simulated(load_spec(REPO / "drills" / drill)) for drill in SHIPPED]
    state = tmp_path / "sim.json"
    results = asyncio.run(_run_all(temporal_server.address, specs, as_of, state, tmp_path))
    for spec, result in zip(specs, results):
        assert result.verdict == "PASSED", (spec.name, result.findings, result.validations)
        assert result.as_of == as_of
        # Points end at as_of: `latest` is within the simulated interval (at most 1 h), `random` within its window.
        window = max([t.recovery_point.within for t in spec.targets if t.recovery_point.rule == "random"], default=timedelta(hours=1))
        assert all(as_of - window <= p.consistent_time <= as_of for p in result.recovery_points)
        # RPO is the data lost as of that moment: as_of minus the oldest chosen point.
        oldest = min(p.consistent_time for p in result.recovery_points)
        assert result.rpo_seconds == (as_of - oldest).total_seconds()
        declared = next(e for e in result.timeline if e.phase == "declared")
        assert f"as of {as_of.isoformat()}" in declared.detail
        evidence = json.loads(Path(result.evidence_path).read_text())
        assert datetime.fromisoformat(evidence["as_of"].replace("Z", "+00:00")) == as_of
    assert leaked(state) == []


def test_as_of_in_the_future_is_refused_for_a_real_cloud(temporal_server, tmp_path):
    spec = spec_of(
        """
version: 1
name: ebs-as-of
objectives: {rto: 15m, rpo: 1d}
targets:
  - {name: vol, provider: aws.ebs, source: {volume_id: vol-0123456789abcdef0}}
validations:
  - {type: command, target: vol, name: vol-ready, argv: ["true"]}
"""
    )

    async def go():
        client = await connect(temporal_server.address)
        queue = f"as-of-{uuid.uuid4().hex[:8]}"
        async with running_worker(client, task_queue_name=queue, providers={}, state_dir=str(tmp_path)):
            drill_id = f"ebs-{uuid.uuid4().hex[:6]}"
            handle = await client.start_workflow(
                DrillWorkflow.run,
                DrillInput(spec=spec, drill_id=drill_id, as_of=datetime.now(timezone.utc) + timedelta(days=1)),
                id=drill_id,
                task_queue=queue,
            )
            with pytest.raises(WorkflowFailureError) as exc:
                await handle.result()
            return exc.value.cause

    cause = asyncio.run(go())
    assert isinstance(cause, ApplicationError) and cause.type == "AS_OF_IN_THE_FUTURE" and cause.non_retryable
    assert "no recovery points from the future" in str(cause) and "--simulate" in str(cause)
    assert not (tmp_path / "runs").exists()  # refused before anything was created or recorded


# ---------------------------------------------------------------- the command line


def _cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "drdrill"), *args], capture_output=True, text=True, env=env, timeout=240)


def test_run_as_of_refuses_a_time_without_a_timezone_or_a_future_one_for_a_real_cloud(tmp_path):
    later = datetime.now(timezone.utc) + timedelta(days=400)
    env = cli_env(DRDRILL_STATE_DIR=str(tmp_path))
    naive = _cli("run", str(REPO / "drills" / "aws-ebs.yaml"), "--simulate", "--as-of", later.strftime("%Y-%m-%dT%H:%M:%S"), env=env)
    assert naive.returncode == 2, naive.stdout + naive.stderr
    assert "--as-of" in naive.stderr and "needs a timezone" in naive.stderr
    real = _cli("run", str(REPO / "drills" / "aws-ebs.yaml"), "--as-of", later.strftime("%Y-%m-%dT%H:%M:%SZ"), env=env)
    assert real.returncode == 2, real.stdout + real.stderr
    assert "is in the future" in real.stderr and "--simulate" in real.stderr
    assert not (tmp_path / "runs").exists()


def test_run_simulate_as_of_a_later_date_passes(temporal_server, tmp_path):
    later = (datetime.now(timezone.utc) + timedelta(days=400)).replace(microsecond=0)
    drill_id = f"rds-as-of-{uuid.uuid4().hex[:6]}"
    env = cli_env(
        TEMPORAL_ADDRESS=temporal_server.address,
        DRDRILL_TASK_QUEUE=f"cli-{uuid.uuid4().hex[:6]}",
        DRDRILL_STATE_DIR=str(tmp_path / "state"),
        DRDRILL_SIM_STATE=str(tmp_path / "sim.json"),
        DRDRILL_SIM_SPEED="0.1",
    )
    stamp = later.strftime("%Y-%m-%dT%H:%M:%SZ")
    run = _cli("run", str(REPO / "drills" / "aws-rds.yaml"), "--simulate", "--as-of", stamp, "--id", drill_id, "--worker", env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"recovery points chosen as of {later.isoformat()}" in run.stdout and "PASSED" in run.stdout
    evidence = json.loads((tmp_path / "state" / "runs" / drill_id / "evidence.json").read_text())
    assert evidence["verdict"] == "PASSED" and evidence["as_of"].startswith(later.strftime("%Y-%m-%dT%H:%M:%S"))
    assert leaked(tmp_path / "sim.json") == []
