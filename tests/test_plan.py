"""Recovery plans: ordered groups, endpoints handed from one target to the next, approval gates.

The plans run on the session's real Temporal dev server: drills/plan-shop.yaml exactly as written
(real PostgreSQL, a real network namespace, a real probe, the application it starts), simulated
targets for the gates (approved and rejected through the real `drdrill` in a subprocess, as a
person would), and a worker killed while the plan waits at a gate. What the plan means (groups,
environment references, each group's RTO) is also checked on its own, in drdrill/core/plan.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Optional

import pytest

from drdrill.core import plan as recovery_plan
from drdrill.core.models import (
    DrillResult,
    DrillStatus,
    Finding,
    RecoveryPoint,
    RestoredResource,
    ValidationResult,
)
from drdrill.providers.spec import DrillInput, load_spec, parse_spec
from drdrill.core.schema import SpecError
from drdrill.providers.activity_io import ApprovalNotice, NotifyInput
from drdrill.notify import message
from drdrill.providers.postgres.provider import PostgresProvider
from drdrill.providers.postgres.backup import take_backup
from drdrill.providers.sim.provider import SimProvider, SimState
from tests.pg_fixtures import create_source_db, drop_db, cluster_root, shop_dsn  # noqa: F401
from tests.sim_harness import WorkerProcess, final_result, leaked, wait_until
from tests.test_notify import Receiver
from tests.test_probe import left_behind
from tests.test_reports import page_text
from worker import connect, running_worker
from workflows.drill import DrillWorkflow

REPO = Path(__file__).resolve().parent.parent
PLAN_SHOP = REPO / "drills" / "plan-shop.yaml"
DRDRILL = [sys.executable, "-m", "app.cli"]
SIM_CHECK = f"[{sys.executable}, -m, app.simulate, check]"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")

SESSIONS_SQL = """
CREATE TABLE sessions (id serial PRIMARY KEY, token text NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
INSERT INTO sessions (token) SELECT md5(g::text) FROM generate_series(1, 30) g;
"""


# ------------------------------------------------------------------ running drills


async def _start(client, spec, queue: str, heartbeat: Optional[float] = None):
    drill_id = f"{spec.name}-{uuid.uuid4().hex[:6]}"
    return await client.start_workflow(
        DrillWorkflow.run,
        DrillInput(spec=spec, drill_id=drill_id, started_by="test", heartbeat_seconds=heartbeat),
        id=drill_id,
        task_queue=queue,
    )


def run_drill(address: str, state_dir: Path, spec, providers: dict, during=None, heartbeat: Optional[float] = None) -> tuple[DrillResult, list]:
    """A drill through a real worker on the session's dev server; its result and its workflow history."""

    async def go():
        client = await connect(address)
        queue = f"plan-{uuid.uuid4().hex[:8]}"
        async with running_worker(client, task_queue_name=queue, providers=providers, state_dir=str(state_dir)):
            handle = await _start(client, spec, queue, heartbeat)
            if during is not None:
                await during(client, handle)
            result = await final_result(handle, state_dir)
            history = await handle.fetch_history()
            return result, history

    return asyncio.run(go())


def drdrill(address: str, *args: str, user: str = "alice", key: Optional[Path] = None) -> subprocess.CompletedProcess:
    """The real `drdrill` command, as `user` would run it against the team's Temporal (signing with `key`)."""
    env = {**os.environ, "TEMPORAL_ADDRESS": address, "LOGNAME": user, "USER": user}
    env.pop("SSH_AUTH_SOCK", None)
    return subprocess.run([*DRDRILL, *args, *(["--key", str(key)] if key else [])], capture_output=True, text=True, env=env, timeout=120)


def ssh_key(folder: Path, name: str) -> tuple[Path, str]:
    """A new ed25519 key made by the real ssh-keygen: (its private key file, its public line)."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(folder / name)], check=True, capture_output=True)
    return folder / name, (folder / f"{name}.pub").read_text().strip()


@pytest.fixture
def keys(tmp_path) -> dict[str, tuple[Path, str]]:
    """alice's, bob's and mallory's SSH keys, in the test's own directory."""
    folder = tmp_path / "keys"
    folder.mkdir()
    return {name: ssh_key(folder, name) for name in ("alice", "bob", "mallory")}


def approvers(keys: dict, *names: str) -> str:
    """The approvers of a gate, as a drill file lists them: a name and a public key each."""
    return "[" + ", ".join(f'{{name: {n}, key: "{keys[n][1]}"}}' for n in names) + "]"


async def wait_for_phase(handle, phase: str, timeout: float = 120.0) -> DrillStatus:
    """Until the drill's status query answers `phase` (a condition, polled; never a fixed sleep)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            status: DrillStatus = await handle.query(DrillWorkflow.status)
        except Exception:  # noqa: BLE001 - no worker answering yet (a replacement starting up)
            status = None
        if status is not None and status.phase == phase:
            return status
        if loop.time() > deadline:
            raise AssertionError(f"the drill never reached phase {phase!r}; it is in {status.phase if status else '?'}")
        await asyncio.sleep(0.05)


def history_text(history) -> str:
    """Everything a workflow history holds, its payloads decoded: what anyone with access to Temporal reads."""
    parts: list[str] = []

    def walk(node) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "data" and isinstance(value, str):
                    try:
                        parts.append(base64.b64decode(value).decode("utf-8", "replace"))
                        continue
                    except ValueError:
                        pass
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)
        else:
            parts.append(str(node))

    walk(history.to_json_dict())
    return "\n".join(parts)


def events(result: DrillResult, phase: str, group: Optional[str] = None, target: Optional[str] = None) -> list:
    return [
        e for e in result.timeline
        if e.phase == phase and (group is None or e.data.get("group") == group) and (target is None or e.target == target)
    ]


def group(result: DrillResult, name: str):
    return next(g for g in result.groups if g.group == name)


def check(result: DrillResult, name: str) -> ValidationResult:
    return next(v for v in result.validations if v.name == name)


def assert_group_rto_matches_the_timeline(result: DrillResult) -> None:
    """Each recovered group's RTO is declared -> its last required check first passed, inside its band."""
    for g in result.groups:
        if g.outcome != "PASSED":
            continue
        firsts = [check(result, name).first_passed_at for name in g.checks if check(result, name).required]
        band = events(result, "group", g.group)[0]
        assert g.recovered == max(firsts)
        assert g.rto_seconds == (g.recovered - result.declared).total_seconds()
        assert band.data["rto_seconds"] == g.rto_seconds
        assert band.started <= g.recovered <= band.ended


# ------------------------------------------------------------------ drills/plan-shop.yaml, end to end


@pytest.fixture
def plan_shop(shop_dsn, tmp_path, monkeypatch, cluster_root):
    """drills/plan-shop.yaml loaded as a user would, with this test's own production: the shop
    database and a sessions database, each backed up into the state directory the file names."""
    sessions_dsn = create_source_db(SESSIONS_SQL)
    state = tmp_path / "state"
    state.mkdir()
    key = f"session-key-{uuid.uuid4().hex}"
    monkeypatch.setenv("DRDRILL_STATE_DIR", str(state))
    monkeypatch.setenv("SHOP_DSN", shop_dsn)
    monkeypatch.setenv("SHOP_SESSIONS_DSN", sessions_dsn)
    monkeypatch.setenv("SHOP_SESSION_KEY", key)
    take_backup(shop_dsn, state / "backups" / "shop")
    take_backup(sessions_dsn, state / "backups" / "shop-sessions")
    yield state, key
    provider = PostgresProvider(root=str(cluster_root))
    for orphan in provider.list_orphans(datetime.now(timezone.utc), set()):  # a failed test leaves nothing either
        provider.delete_orphan(orphan)
    drop_db(sessions_dsn)


@needs_root
def test_plan_shop_restores_the_data_then_starts_the_app_from_it_and_checks_it_over_http(temporal_server, plan_shop, cluster_root):
    state, key = plan_shop
    spec = load_spec(PLAN_SHOP)
    result, history = run_drill(temporal_server.address, state, spec, {"postgres": PostgresProvider()})

    assert result.verdict == "PASSED", (result.findings, result.validations, result.groups)
    assert [g.group for g in result.groups] == ["data", "app"] and all(g.outcome == "PASSED" for g in result.groups)
    # The order: the application's group started only after the data group's checks had passed.
    data_checks = events(result, "validate", "data")[0]
    assert data_checks.outcome == "PASSED"
    app_band, app_restore = events(result, "group", "app")[0], events(result, "restore", "app", target="app")[0]
    last_data_check = max(check(result, n).finished for n in ("orders-present", "tables-match-backup"))
    assert last_data_check <= data_checks.ended <= app_band.started <= app_restore.started
    assert events(result, "group", "data")[0].ended <= app_band.started
    # The endpoint flowed forward: the application answers from the orders restored in group data
    # (2000 orders), and from its own restored sessions (30).
    assert check(result, "shop-answers").detail == "http://127.0.0.1:8080/orders answered 200 containing 'orders='"
    app = next(r for r in result.restored if r.target == "app")
    assert app.details["after_environment"] == ["DATABASE_URL", "SESSION_KEY"]
    # Per-group RTO: in the result, matching the timeline, against each group's objective.
    assert_group_rto_matches_the_timeline(result)
    data, app_group = group(result, "data"), group(result, "app")
    assert (data.objective_seconds, app_group.objective_seconds) == (600.0, 1200.0)
    assert data.rto_outcome == app_group.rto_outcome == "PASSED"
    assert data.rto_seconds < app_group.rto_seconds == result.rto_seconds
    # The secret reference was resolved on the worker: its value is nowhere in the history or the evidence.
    recorded = history_text(history)
    assert key not in recorded and "{env.SHOP_SESSION_KEY}" in recorded and "{targets.db.dsn}" in recorded
    evidence = (state / "runs" / result.drill_id / "evidence.json").read_text()
    assert key not in evidence
    # The report shows each group as a band, and its RTO.
    html = (state / "runs" / result.drill_id / "report.html").read_text()
    text = page_text(html)
    assert 'data-group="data"' in html and 'data-group="app"' in html
    assert "Recovery plan" in text and "group data · RTO" in text and "whole plan" in text
    # Torn down: both databases, the application, the probe, the relays and the namespace.
    assert left_behind(result.drill_id, cluster_root) == []


def _plan_shop_with(old: str, new: str):
    """drills/plan-shop.yaml with one thing changed, loaded from beside the file as a user's copy would be."""
    text = PLAN_SHOP.read_text()
    assert old in text
    return parse_spec(text.replace(old, new), str(PLAN_SHOP), base_dir=PLAN_SHOP.parent)


@needs_root
def test_the_application_gets_the_earlier_groups_endpoint_and_its_own(temporal_server, plan_shop, cluster_root):
    """The application counts the orders through DATABASE_URL (the database restored in group data:
    2000 orders) and its sessions through DRDRILL_DSN (its own restored database: 30)."""
    state, _ = plan_shop
    spec = _plan_shop_with('contains: "orders="', 'contains: "orders=2000 sessions=30"')
    result, _ = run_drill(temporal_server.address, state, spec, {"postgres": PostgresProvider()})

    assert result.verdict == "PASSED", (result.findings, result.validations)
    assert check(result, "shop-answers").detail == "http://127.0.0.1:8080/orders answered 200 containing 'orders=2000 sessions=30'"
    db = next(r for r in result.restored if r.target == "db")
    assert "host=127.0.0.1 port=55432" in db.endpoint["dsn"]  # what DATABASE_URL was filled in with, inside the namespace
    assert left_behind(result.drill_id, cluster_root) == []


@needs_root
def test_a_failing_group_check_stops_the_plan_and_everything_is_torn_down(temporal_server, plan_shop, cluster_root):
    state, _ = plan_shop
    spec = _plan_shop_with('expect: "> 0"', 'expect: "== 0"')
    result, _ = run_drill(temporal_server.address, state, spec, {"postgres": PostgresProvider()})

    assert result.verdict == "FAILED"
    stop = next(f for f in result.findings if f.code == "GROUP_CHECKS_FAILED")
    assert stop.message == "group data: its checks did not pass (orders-present FAILED); later groups never started: app"
    assert check(result, "orders-present").outcome == "FAILED"
    # The application's group never started: nothing of it was restored, its checks did not run.
    assert [r.target for r in result.restored] == ["db"]
    assert not events(result, "restore", target="app") and not events(result, "group", "app")
    assert [(g.group, g.outcome) for g in result.groups] == [("data", "FAILED"), ("app", "NOT_RUN")]
    for name in ("sessions-restored", "shop-answers"):
        assert (check(result, name).outcome, check(result, name).detail) == ("NOT_RUN", "the plan stopped at group data (GROUP_CHECKS_FAILED)")
    assert group(result, "app").rto_outcome == "NOT_RUN" and group(result, "data").rto_outcome == "FAILED"
    assert next(o for o in result.objectives if o.name == "RTO").outcome == "FAILED"
    # Still torn down: no cluster, namespace or process left.
    assert result.teardown and events(result, "teardown")[0].outcome == "PASSED"
    assert left_behind(result.drill_id, cluster_root) == []


# ------------------------------------------------------------------ simulated plans: actions and gates


def sim_plan(name: str, *, gate: str = "", app_pre: str = "", data_check: str = SIM_CHECK, notify: str = "") -> str:
    """Two simulated targets in two groups: db (data), then api (app), each with its check."""
    return f"""
version: 1
name: {name}
objectives: {{rto: 15m, rpo: 2h}}
max_duration: 10m
targets:
  - {{name: db, provider: sim, source: {{restore_time: 0.2}}}}
  - {{name: api, provider: sim, source: {{restore_time: 0.2}}}}
plan:
  - group: data
    targets: [db]
    rto: 10m
    checks:
      - {{name: db-ready, type: command, target: db, timeout: 30s, argv: {data_check}}}
  - group: app
    targets: [api]
    after: [data]{app_pre}
    checks:
      - {{name: api-ready, type: command, target: api, timeout: 30s, argv: {SIM_CHECK}}}
{gate}
{notify}
"""


def gate(keys: dict, timeout: str = "10m", before: str = "app", names: tuple[str, ...] = ("alice", "bob")) -> str:
    return f"approve: {{before: {before}, timeout: {timeout}, approvers: {approvers(keys, *names)}}}"


@pytest.fixture
def sim_state(tmp_path, monkeypatch) -> Path:
    state = tmp_path / "sim.json"
    monkeypatch.setenv("DRDRILL_SIM_STATE", str(state))
    return state


def test_a_failing_pre_action_stops_the_plan_before_its_group_restores(temporal_server, tmp_path, sim_state):
    pre = "\n    pre:\n      - {name: migration-check, target: db, timeout: 2s, argv: [sh, -c, 'echo schema 41, expected 42; exit 3']}"
    spec = parse_spec(sim_plan("pre-action", app_pre=pre), "<test>")
    result, _ = run_drill(temporal_server.address, tmp_path, spec, {"sim": SimProvider(sim_state, speed=1.0)})

    assert result.verdict == "FAILED"
    stop = next(f for f in result.findings if f.code == "PRE_ACTION_FAILED")
    assert stop.message.startswith("group app: pre-action pre:migration-check FAILED: sh exited 3 (expected 0): schema 41, expected 42")
    action = group(result, "app").actions[0]
    assert (action.name, action.outcome, action.target) == ("pre:migration-check", "FAILED", "db")
    assert events(result, "pre-action", "app")[0].outcome == "FAILED"
    assert [r.target for r in result.restored] == ["db"] and not events(result, "restore", "app")
    assert (check(result, "api-ready").outcome, check(result, "api-ready").detail) == ("NOT_RUN", "the plan stopped at group app (PRE_ACTION_FAILED)")
    assert leaked(sim_state) == []


def _gated(name: str, keys: dict, webhook: bool = False) -> str:
    return sim_plan(name, gate=gate(keys), notify="notify: {webhooks_env: [PLAN_WEBHOOK_URL]}" if webhook else "")


def test_approving_a_gate_from_the_cli_continues_the_plan_and_the_evidence_says_who_when_and_why(
    temporal_server, tmp_path, sim_state, monkeypatch, keys
):
    address = temporal_server.address
    seen: dict = {}

    async def approve_from_the_cli(client, handle) -> None:
        waiting = await wait_for_phase(handle, "waiting for approval")
        assert waiting.approval is not None and (waiting.approval.group, waiting.approval.approvers) == ("app", ["alice", "bob"])
        assert not any(e.phase == "restore" and e.target == "api" for e in waiting.timeline)
        seen["status"] = await asyncio.to_thread(drdrill, address, "status", handle.id)
        mallory, alice = keys["mallory"][0], keys["alice"][0]
        seen["mallory"] = await asyncio.to_thread(drdrill, address, "approve", handle.id, "--note", "looks fine", user="mallory", key=mallory)
        seen["other group"] = await asyncio.to_thread(drdrill, address, "approve", handle.id, "--group", "data", key=alice)
        still = await handle.query(DrillWorkflow.status)
        seen["still"] = still.phase
        seen["approve"] = await asyncio.to_thread(
            drdrill, address, "approve", handle.id, "--group", "app", "--note", "orders checked by hand", user="not-alice", key=alice
        )

    with Receiver() as hook:
        monkeypatch.setenv("PLAN_WEBHOOK_URL", hook.url)
        spec = parse_spec(_gated("gate-approved", keys, webhook=True), "<test>")
        result, _ = run_drill(address, tmp_path, spec, {"sim": SimProvider(sim_state, speed=1.0)}, during=approve_from_the_cli)
        posts = [p["json"] for p in hook.posts if p["json"].get("event") == "APPROVAL"]

    status = seen["status"]
    assert status.returncode == 0, status.stderr
    assert "phase waiting for approval, group app" in status.stdout
    assert "approvers: alice, bob" in status.stdout
    assert f'approve: drdrill approve {result.drill_id} --group app --note "…"' in status.stdout
    assert f'reject:  drdrill reject {result.drill_id} --note "…"' in status.stdout
    # Refused: someone whose key is not an approver's (recorded), or an answer for another group (not even taken).
    assert seen["mallory"].returncode == 2
    mallory_print = subprocess.run(["ssh-keygen", "-l", "-f", f"{keys['mallory'][0]}.pub"], capture_output=True, text=True).stdout.split()[1]
    assert seen["mallory"].stderr.strip() == f"{result.drill_id}: not approved: key {mallory_print} is not one of the gate's approvers' keys"
    refusal = next(f for f in result.findings if f.code == "APPROVAL_UNKNOWN_KEY")
    assert refusal.severity == "warning" and "claiming to be from mallory" in refusal.message
    assert seen["other group"].returncode == 2 and "the drill waits for approval before group app, not data" in seen["other group"].stderr
    assert seen["still"] == "waiting for approval"
    approved = seen["approve"]
    assert approved.returncode == 0, approved.stderr
    # The approver is whoever's key signed, not whoever the shell says it is.
    assert approved.stdout.startswith(f"{result.drill_id}: group app approved by alice at ")

    assert result.verdict == "PASSED", (result.findings, result.validations)
    record = group(result, "app").approval
    assert (record.decision, record.by, record.note, record.approvers) == ("approved", "alice", "orders checked by hand", ["alice", "bob"])
    gate = events(result, "approval", "app")[0]
    assert gate.detail == "group app approved by alice: orders checked by hand"
    assert (gate.started, gate.ended) == (record.asked, record.decided)
    # The application's group started after the approval, never before.
    assert events(result, "group", "data")[0].ended <= record.asked <= record.decided <= events(result, "restore", "app", target="api")[0].started
    assert group(result, "app").rto_detail.endswith("of it waiting for approval")
    assert_group_rto_matches_the_timeline(result)
    # The webhook said who can approve and how.
    assert len(posts) == 1
    text = posts[0]["text"]
    assert f"drill *gate-approved* ({result.drill_id}) waits for approval before group *app*" in text
    assert "who can approve: alice, bob" in text
    assert f'approve: `drdrill approve {result.drill_id} --group app --note "…"`' in text
    assert posts[0]["approval"]["approvers"] == ["alice", "bob"]
    # The evidence keeps it, and the report shows it.
    evidence = json.loads((tmp_path / "runs" / result.drill_id / "evidence.json").read_text())
    assert evidence["groups"][1]["approval"]["by"] == "alice" and evidence["groups"][1]["approval"]["note"] == "orders checked by hand"
    text = page_text((tmp_path / "runs" / result.drill_id / "report.html").read_text())
    assert "approved by alice at" in text and "orders checked by hand" in text
    assert leaked(sim_state) == []


def test_rejecting_a_gate_from_the_cli_ends_the_plan_failed_and_tears_down(temporal_server, tmp_path, sim_state, keys):
    address = temporal_server.address
    answers: dict = {}

    async def reject_from_the_cli(client, handle) -> None:
        await wait_for_phase(handle, "waiting for approval")
        answers["reject"] = await asyncio.to_thread(
            drdrill, address, "reject", handle.id, "--note", "the orders look wrong", user="bob", key=keys["bob"][0]
        )

    spec = parse_spec(_gated("gate-rejected", keys), "<test>")
    result, _ = run_drill(address, tmp_path, spec, {"sim": SimProvider(sim_state, speed=1.0)}, during=reject_from_the_cli)

    assert answers["reject"].returncode == 0, answers["reject"].stderr
    assert "group app rejected by bob at" in answers["reject"].stdout
    assert result.verdict == "FAILED"
    stop = next(f for f in result.findings if f.code == "APPROVAL_REJECTED")
    assert stop.message == "bob rejected the plan before group app: the orders look wrong; it stopped there and the drill tore down"
    record = group(result, "app").approval
    assert (record.decision, record.by, record.note) == ("rejected", "bob", "the orders look wrong")
    assert [(g.group, g.outcome) for g in result.groups] == [("data", "PASSED"), ("app", "NOT_RUN")]
    assert [r.target for r in result.restored] == ["db"] and check(result, "api-ready").outcome == "NOT_RUN"
    assert events(result, "approval", "app")[0].outcome == "FAILED"
    assert not events(result, "hold") and events(result, "teardown")[0].outcome == "PASSED"
    assert leaked(sim_state) == []


def test_a_gate_nobody_answers_is_a_finding_and_the_drill_tears_down(temporal_server, tmp_path, sim_state, keys):
    spec = parse_spec(sim_plan("gate-timeout", gate=gate(keys, timeout="2s", names=("alice",))), "<test>")
    result, _ = run_drill(temporal_server.address, tmp_path, spec, {"sim": SimProvider(sim_state, speed=1.0)})

    assert result.verdict == "FAILED"
    stop = next(f for f in result.findings if f.code == "APPROVAL_TIMED_OUT")
    assert stop.message == "nobody approved group app within 2.0s (approvers: alice); the plan stopped there and the drill tore down"
    record = group(result, "app").approval
    assert (record.decision, record.by) == ("timed out", None)
    assert record.decided - record.asked >= timedelta(seconds=2)  # the workflow's own timer: never before the timeout
    assert events(result, "approval", "app")[0].detail == "nobody approved group app within 2.0s"
    assert [r.target for r in result.restored] == ["db"]
    assert (tmp_path / "runs" / result.drill_id / "evidence.json").exists()
    assert leaked(sim_state) == []


def test_a_worker_killed_while_the_plan_waits_at_a_gate_resumes_on_another_and_still_honours_it(temporal_server, tmp_path, sim_state, keys):
    address = temporal_server.address
    queue = f"plan-crash-{uuid.uuid4().hex[:8]}"
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    first = WorkerProcess(address, queue, sim_state, state_dir, tmp_path / "worker1.log")
    second: Optional[WorkerProcess] = None
    try:

        async def go():
            nonlocal second
            await wait_until(first.polling, timeout=60, what="the first worker to poll")
            client = await connect(address)
            handle = await _start(client, parse_spec(_gated("gate-crash", keys), "<test>"), queue, heartbeat=2.0)
            await wait_for_phase(handle, "waiting for approval")
            first.kill()
            second = WorkerProcess(address, queue, sim_state, state_dir, tmp_path / "worker2.log")
            await wait_until(second.polling, timeout=60, what="the second worker to poll")
            # The replacement replays the drill: it still waits at the gate, the app group not started.
            status = await wait_for_phase(handle, "waiting for approval")
            assert status.approval is not None and status.approval.group == "app"
            assert not [e for e in SimState(sim_state).events("restore") if e["scope"] == "api"]
            answer = await asyncio.to_thread(drdrill, address, "approve", handle.id, "--note", "after the crash", key=keys["alice"][0])
            assert answer.returncode == 0, answer.stderr
            return await final_result(handle, state_dir)

        result = asyncio.run(go())
    finally:
        for w in (first, second):
            if w is not None:
                w.stop()

    assert result.verdict == "PASSED", (result.findings, result.validations)
    record = group(result, "app").approval
    assert (record.decision, record.by, record.note) == ("approved", "alice", "after the crash")
    restores = {e["scope"]: e["pid"] for e in SimState(sim_state).events("restore")}
    assert restores == {"db": first.pid, "api": second.pid}
    assert record.decided <= events(result, "restore", "app", target="api")[0].started
    assert leaked(sim_state) == []


# ------------------------------------------------------------------ the drill format


PLAN = """
version: 1
name: shop
objectives: {rto: 30m, rpo: 1h}
targets:
  - {name: db, provider: postgres, source: {repository: /var/backups/shop}}
  - name: app
    provider: postgres
    source: {repository: /var/backups/sessions}
    restore:
      after: {argv: [/opt/shop/serve]}
      environment: {DATABASE_URL: "{targets.db.dsn}", SESSION_KEY: "{env.SHOP_SESSION_KEY}"}
isolation: {postgres: network, probe: {postgres: {}}}
plan:
  - group: data
    targets: [db]
    rto: 10m
    checks: [{name: orders, type: sql, target: db, query: "SELECT count(*) FROM orders", expect: "> 0"}]
  - group: app
    targets: [app]
    after: [data]
    pre: [{name: flag, argv: [/opt/shop/flag, on], on: probe, target: db}]
    checks: [{name: up, type: http, target: app, path: /health, port: 8080}]
approve: {before: app, timeout: 1h, approvers: [{name: alice, key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJhLcjteZMj8Zp3G7XxkW33FKvAMTRbYNmO0YCaX/VHC"}]}
"""


def test_a_plan_lints_clean_and_keeps_its_groups_in_order():
    spec = parse_spec(PLAN, "drills/shop.yaml")
    assert [(g.group, g.targets) for g in spec.plan] == [("data", ["db"]), ("app", ["app"])]
    assert spec.approve[0].before == "app" and spec.approve[0].names == ["alice"]
    assert spec.approve[0].approvers[0].key == "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJhLcjteZMj8Zp3G7XxkW33FKvAMTRbYNmO0YCaX/VHC" and spec.approve[0].approvers[0].role == "approver"
    assert recovery_plan.gate_before(spec, "app").timeout == timedelta(hours=1) and recovery_plan.gate_before(spec, "data") is None
    assert spec.warnings() == []
    assert [str(w) for w in parse_spec(PLAN.replace("timeout: 1h", "timeout: 5h"), "drills/shop.yaml").warnings()] == [
        "drills/shop.yaml: approve[0].timeout: the gate before group app waits up to 5h, but the drill is stopped at max_duration (4h): "
        "raise max_duration or shorten the gate's timeout"
    ]


@pytest.mark.parametrize(
    "old, new, problem",
    [
        ("targets: [app]\n    after", "targets: [db]\n    after", "plan[1].targets[0]: target db is already in group data: a target restores in one group"),
        ("targets: [app]\n    after", "targets: [api]\n    after", "plan[1].targets[0]: no target named 'api'; this drill's targets are: db, app"),
        ("    targets: [db]\n    rto", "    targets: []\n    rto", "plan[0].targets: List should have at least 1 item"),
        ("after: [data]", "after: [app]", "plan[1].after[0]: group app names itself in after: name the groups above it that it needs"),
        ("after: [data]", "after: [web]", "plan[1].after[0]: no group named 'web'; this plan's groups are: data, app"),
        (
            "checks: [{name: orders, type: sql, target: db",
            "checks: [{name: orders, type: sql, target: app",
            "plan[0].checks[0].target: target app restores in group app, after group data: a group's checks may name its own targets and those of the groups above it",
        ),
        (
            "on: probe, target: db",
            "on: probe, target: app",
            "plan[1].pre[0].target: a pre-action of group app runs before the group's own targets restore, and target app is not restored by then (group app): name a target of a group above",
        ),
        ("before: app", "before: web", "approve[0].before: no group named 'web'; this plan's groups are: data, app"),
        (
            "approvers: [{name: alice",
            "approvers: [], x: [{name: alice",
            "approve[0].x: unknown key 'x'; allowed here: before, timeout, approvers, approvers_file",
        ),
        (
            'approvers: [{name: alice, key: "ssh-ed25519 AAAAC3',
            'approvers: [alice, {name: bob, key: "ssh-ed25519 AAAAC3',
            "approve[0].approvers[0]: approver 'alice' has no key: an approval is signed, so name each approver with their public SSH key: "
            '{name: alice, key: "ssh-ed25519 AAAA…"} (the line of their ~/.ssh/id_ed25519.pub), or list them in approvers_file (allowed_signers format)',
        ),
        (
            'key: "ssh-ed25519 AAAAC3',
            'key: "ssh-ed25519 AAAAC4',
            "approve[0].approvers[0].key: the key's data says it is not a ssh-ed25519 key: paste the line of the approver's ~/.ssh/id_ed25519.pub",
        ),
        ("rto: 10m", "rtoo: 10m", "plan[0].rtoo: unknown key 'rtoo' (did you mean 'rto'?); allowed here: group, targets, after, checks, pre, post, rto"),
        (
            '"{targets.db.dsn}"',
            '"{targets.app.dsn}"',
            "targets[1].restore.environment.DATABASE_URL: {targets.app.dsn}: a target cannot be handed its own endpoint",
        ),
        (
            '"{targets.db.dsn}"',
            '"{targets.db.password}"',
            "targets[1].restore.environment.DATABASE_URL: {targets.db.password}: password is not an endpoint field of target db (postgres); "
            "known fields: host, port, dsn, database, socket_dir",
        ),
        (
            '"{env.SHOP_SESSION_KEY}"',
            '"{secrets.shop}"',
            "targets[1].restore.environment: SESSION_KEY: {secrets.shop} is not a reference: write {targets.<target>.<field>}",
        ),
        ("{name: up, type: http", "{name: orders, type: http", "plan: check names must be unique across validations and the plan's checks; repeated: orders (set 'name:')"),
    ],
)
def test_lint_names_the_plan_field_and_the_fix(old, new, problem):
    assert old in PLAN
    with pytest.raises(SpecError) as err:
        parse_spec(PLAN.replace(old, new), "drills/shop.yaml")
    assert err.value.path == "drills/shop.yaml"
    assert any(f"{loc}: {msg}".startswith(problem) for loc, msg in err.value.problems), err.value.problems


def test_without_a_plan_nothing_restores_before_anything_else():
    """No plan: every target restores at once, so an endpoint cannot flow and no gate can hold a group."""
    without_plan = PLAN[: PLAN.index("plan:")]
    with pytest.raises(SpecError) as err:
        parse_spec(without_plan, "x.yaml")
    assert err.value.problems == [
        (
            "targets[1].restore.environment.DATABASE_URL",
            "{targets.db.dsn} needs target db restored before app, but without a plan every target restores at once: add plan: with db in a group above app's",
        )
    ]
    gate_without_plan = without_plan.replace('"{targets.db.dsn}"', '"{env.DB_URL}"') + PLAN[PLAN.index("approve:") :]
    with pytest.raises(SpecError) as err:
        parse_spec(gate_without_plan, "x.yaml")
    assert err.value.problems == [("approve", "an approval gate holds back a group of the plan: add plan: (the groups restored in order), or remove approve")]


def test_every_target_belongs_to_a_group():
    text = PLAN.replace("  - {name: db, provider: postgres, source: {repository: /var/backups/shop}}", "  - {name: db, provider: postgres, source: {repository: /var/backups/shop}}\n  - {name: cache, provider: postgres, source: {repository: /var/backups/cache}}")
    with pytest.raises(SpecError) as err:
        parse_spec(text, "x.yaml")
    assert err.value.problems == [("plan", "target cache is in no group: add it to the targets of a group (each target restores in one group)")]


# ------------------------------------------------------------------ what the plan means (pure)


NOW = datetime(2030, 1, 1, tzinfo=timezone.utc)


def _passed(name: str, at: float, required: bool = True) -> ValidationResult:
    return ValidationResult(name=name, type="sql", required=required, outcome="PASSED", first_passed_at=NOW + timedelta(seconds=at), finished=NOW + timedelta(seconds=at))


def test_environment_values_are_filled_in_from_earlier_endpoints_and_the_workers_secrets():
    templates = {"DATABASE_URL": "{targets.db.dsn}", "API": "http://{targets.api.host}:{targets.api.port}/", "KEY": "{env.SHOP_KEY}"}
    endpoints = {"db": {"dsn": "host=10.0.0.5 port=5432 dbname=shop"}, "api": {"host": "10.0.0.7", "port": 8080}}
    assert recovery_plan.resolve_environment(templates, endpoints, {"SHOP_KEY": "s3cr3t"}) == {
        "DATABASE_URL": "host=10.0.0.5 port=5432 dbname=shop",
        "API": "http://10.0.0.7:8080/",
        "KEY": "s3cr3t",
    }
    assert recovery_plan.secret_references(templates) == ["SHOP_KEY"]
    with pytest.raises(recovery_plan.EnvironmentProblem) as err:
        recovery_plan.resolve_environment(templates, endpoints, {})
    assert str(err.value) == "restore.environment.KEY: {env.SHOP_KEY}: SHOP_KEY is not set on the worker that starts the service: set it there"
    with pytest.raises(recovery_plan.EnvironmentProblem) as err:
        recovery_plan.resolve_environment({"U": "{targets.db.host}"}, endpoints, {})
    assert str(err.value) == "restore.environment.U: {targets.db.host}: target db publishes no 'host' (its endpoint has: dsn)"
    spec = parse_spec(PLAN, "x.yaml")
    restored = {"db": RestoredResource(target="db", provider="postgres", id="c", endpoint={"dsn": "host=127.0.0.1 port=55432 dbname=db"})}
    assert recovery_plan.endpoints_for(spec.target("app"), restored) == {"db": {"dsn": "host=127.0.0.1 port=55432 dbname=db"}}
    assert recovery_plan.endpoints_for(spec.target("db"), restored) == {}


def test_a_groups_rto_runs_from_the_declared_disaster_to_its_last_required_check():
    spec = parse_spec(PLAN, "x.yaml")
    data, app = spec.plan
    checks = [_passed("orders", 40), _passed("optional", 90, required=False)]
    result = recovery_plan.group_result(data, declared=NOW, outcome="PASSED", started=NOW, ended=NOW + timedelta(seconds=95), ready=NOW + timedelta(seconds=30), checks=checks)
    assert (result.rto_seconds, result.objective_seconds, result.rto_outcome) == (40.0, 600.0, "PASSED")
    assert result.recovered == NOW + timedelta(seconds=40)
    late = recovery_plan.group_result(data, declared=NOW, outcome="PASSED", checks=[_passed("orders", 700)])
    assert (late.rto_seconds, late.rto_outcome) == (700.0, "FAILED")
    # Without required checks, the group is back when its last target is ready.
    bare = recovery_plan.group_result(app.model_copy(update={"checks": []}), declared=NOW, outcome="PASSED", ready=NOW + timedelta(seconds=50))
    assert (bare.rto_seconds, bare.rto_outcome) == (50.0, "PASSED")
    assert bare.rto_detail == "its last target was ready (it has no required checks) 50s after the disaster was declared"
    never = recovery_plan.group_result(app, declared=NOW, outcome="NOT_RUN", detail="the plan stopped at group data (GROUP_CHECKS_FAILED)")
    assert (never.rto_seconds, never.rto_outcome) == (None, "NOT_RUN")
    # The objectives the verdict judges: only groups that have one.
    judged = recovery_plan.group_objectives([result, late, never])
    assert [(o.objective_seconds, o.outcome) for o in judged] == [(600.0, "PASSED"), (600.0, "FAILED")]
    assert recovery_plan.not_run(app, "stopped")[0].model_dump(include={"name", "outcome", "detail"}) == {"name": "up", "outcome": "NOT_RUN", "detail": "stopped"}


def test_a_plan_that_stopped_has_failed_or_could_not_verify_its_rto_never_passed():
    spec = parse_spec(PLAN, "x.yaml")
    points = {t: RecoveryPoint(target=t, provider="postgres", id="p", consistent_time=NOW - timedelta(minutes=5)) for t in ("db", "app")}
    checks = [_passed("orders", 40), ValidationResult(name="up", type="http", outcome="NOT_RUN")]
    stopped = Finding(code="APPROVAL_REJECTED", message="no")
    rto, rpo = recovery_plan.objectives(spec, NOW, points, checks, stopped)
    assert (rto.outcome, rto.achieved_seconds, rpo.outcome) == ("FAILED", None, "PASSED")
    unverified = Finding(code="GROUP_CHECKS_FAILED", message="probe", could_not_verify=True)
    assert recovery_plan.objectives(spec, NOW, points, checks, unverified)[0].outcome == "COULD_NOT_VERIFY"
    whole = recovery_plan.objectives(spec, NOW, points, [_passed("orders", 40), _passed("up", 300)], None)[0]
    assert (whole.outcome, whole.achieved_seconds) == ("PASSED", 300.0)


def test_a_selection_in_a_group_becomes_the_targets_it_chose():
    text = PLAN.replace(
        "  - {name: db, provider: postgres, source: {repository: /var/backups/shop}}",
        "  - {name: db, provider: postgres, select: {repositories: [/var/backups/*]}}",
    ).replace('"{targets.db.dsn}"', '"{env.DB}"').replace("on: probe, target: db", "on: worker, target: db")
    spec = parse_spec(text, "x.yaml")
    expanded = recovery_plan.expand(spec, {"db": ["db-orders", "db-billing"]})
    data, app = expanded.plan
    assert data.targets == ["db-orders", "db-billing"]
    assert [(v.name, v.target) for v in data.checks] == [("orders:orders", "db-orders"), ("orders:billing", "db-billing")]
    assert app.pre[0].target == "db-orders"
    assert recovery_plan.expand(spec, {}) is spec


def test_the_approval_notice_says_who_can_approve_and_how():
    notice = ApprovalNotice(
        group="app", approvers=["alice", "bob"], until=NOW + timedelta(hours=2),
        approve='drdrill approve shop-1 --group app --note "…"', reject='drdrill reject shop-1 --note "…"',
    )
    body = message(NotifyInput(webhook_env="W", event="APPROVAL", drill_id="shop-1", drill_name="shop", verdict="WAITING", approval=notice))
    assert body["text"].splitlines() == [
        ":raising_hand: drdrill: drill *shop* (shop-1) waits for approval before group *app*",
        "who can approve: alice, bob",
        'approve: `drdrill approve shop-1 --group app --note "…"`',
        'reject: `drdrill reject shop-1 --note "…"`',
        "unanswered at 2030-01-01 02:00:00Z, the plan stops and the drill tears down",
    ]
    assert body["event"] == "APPROVAL" and body["approval"]["group"] == "app"


def test_drills_plan_aws_lints_clean():
    spec = load_spec(REPO / "drills" / "plan-aws.yaml")
    assert [g.group for g in spec.plan] == ["data", "web"] and spec.approve[0].before == "web"
    assert spec.target("web").restore.environment["DATABASE_URL"] == "{targets.db.dsn}"
    assert spec.warnings() == []
