"""Record the workflow histories that tests/test_replay.py replays (issue 24: running drills survive an upgrade).

Each drill below runs through the real worker on a real Temporal dev server (the session's, from
tests/conftest.py), and its history is saved as JSON under tests/fixtures/histories/<name>.json.
Re-record them only from a release whose histories a new worker must still replay:

    .venv/bin/python -m pytest -q tests/record_histories.py

(the file is not named test_*.py, so the suite never runs it; given on the command line, pytest does).
The drills: a simulated drill that passes, one whose check fails, a recovery plan whose gate is
answered (one refused answer, then a signed approval) with pre- and post-actions, a plan whose gate
is rejected, a drill cancelled during its hold for inspection (after an `extend` signal), and a
PostgreSQL drill in an isolated network whose network checks run in its probe (probe routing; needs
root, as tests/test_probe.py does), and a pgBackRest point-in-time drill whose backup is laid down
while its isolation is made and proven (the `stage` activity, issue 25; needs pgBackRest).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest
from temporalio.client import WorkflowUpdateFailedError

from app.approval_sign import signed_request
from drdrill.providers.postgres.provider import PostgresProvider
from drdrill.providers.sim.provider import SimProvider
from drdrill.providers.spec import DrillInput, parse_spec
from tests.sim_harness import final_result, phase_of, sim_yaml
from tests.pg_fixtures import cluster_root, shop_dsn, shop_repo  # noqa: F401  (fixtures)
from tests.test_plan import approvers, keys, sim_plan, sim_state  # noqa: F401  (fixtures)
from tests.test_probe import network_drill, network_root, production  # noqa: F401  (fixtures)
from tests.test_pitr import Stanza, needs_pgbackrest, pgbackrest_source, pitr_drill
from worker import connect, running_worker
from workflows.drill import DrillWorkflow

HISTORIES = Path(__file__).resolve().parent / "fixtures" / "histories"
FAIL = "[sh, -c, 'echo orders: 0 rows; exit 1']"


async def _record(address: str, state_dir: Path, state: Path, name: str, text: str, during=None, providers=None) -> None:
    """Run the drill `text` to its end and save its history as `name`.json."""
    client = await connect(address)
    queue = f"record-{uuid.uuid4().hex[:8]}"
    spec = parse_spec(text, "<recorded drill>")
    drill_id = f"{name}-{uuid.uuid4().hex[:6]}"
    providers = providers or {"sim": SimProvider(state, speed=1.0)}
    async with running_worker(client, task_queue_name=queue, providers=providers, state_dir=str(state_dir)):
        handle = await client.start_workflow(
            DrillWorkflow.run, DrillInput(spec=spec, drill_id=drill_id, started_by="recorder"), id=drill_id, task_queue=queue
        )
        if during is not None:
            await during(handle)
        await final_result(handle, state_dir)
        history = await handle.fetch_history()
    HISTORIES.mkdir(parents=True, exist_ok=True)
    (HISTORIES / f"{name}.json").write_text(json.dumps(json.loads(history.to_json()), indent=1) + "\n")


def _record_sync(temporal_server, tmp_path: Path, state: Path, name: str, text: str, during=None, providers=None) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir(exist_ok=True)
    asyncio.run(_record(temporal_server.address, state_dir, state, name, text, during, providers))


def test_record_a_sim_drill_that_passes(temporal_server, tmp_path, sim_state):
    _record_sync(temporal_server, tmp_path, sim_state, "sim-passed", sim_yaml(name="sim-passed", targets=2))


def test_record_a_sim_drill_whose_check_fails(temporal_server, tmp_path, sim_state):
    checks = f"  - {{type: command, target: db0, name: orders, timeout: 30s, argv: {FAIL}}}"
    _record_sync(temporal_server, tmp_path, sim_state, "sim-check-failed", sim_yaml(name="sim-check-failed", validations=checks))


def _plan_with_actions(name: str, keys: dict) -> str:
    """A two-group plan with a gate before `app`, a pre-action on `app` and a post-action on `data`."""
    pre = "\n    pre:\n      - {name: flag, target: db, timeout: 10s, argv: [sh, -c, 'echo flag on']}"
    text = sim_plan(name, gate=f"approve: {{before: app, timeout: 10m, approvers: {approvers(keys, 'alice', 'bob')}}}", app_pre=pre)
    post = "    post:\n      - {name: smoke, timeout: 10s, argv: [sh, -c, 'echo smoke ok']}\n"
    return text.replace("  - group: app", post + "  - group: app", 1)


async def _at_gate(handle) -> None:
    async def waiting() -> bool:
        return (await phase_of(handle)) == "waiting for approval"

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 120
    while not await waiting():
        assert loop.time() < deadline, "the drill never waited at its gate"
        await asyncio.sleep(0.05)


def test_record_a_plan_whose_gate_is_approved(temporal_server, tmp_path, sim_state, keys):
    async def answer(handle) -> None:
        await _at_gate(handle)
        refused = await asyncio.to_thread(signed_request, handle.id, "app", "approve", "looks fine", str(keys["mallory"][0]), "mallory")
        with pytest.raises(WorkflowUpdateFailedError):
            await handle.execute_update("approve", refused)
        approved = await asyncio.to_thread(signed_request, handle.id, "app", "approve", "orders checked", str(keys["alice"][0]), "alice")
        await handle.execute_update("approve", approved)

    text = _plan_with_actions("plan-approved", keys)
    assert "post:" in text
    _record_sync(temporal_server, tmp_path, sim_state, "plan-approved", text, during=answer)


def test_record_a_plan_whose_gate_is_rejected(temporal_server, tmp_path, sim_state, keys):
    async def answer(handle) -> None:
        await _at_gate(handle)
        rejected = await asyncio.to_thread(signed_request, handle.id, "app", "reject", "orders look wrong", str(keys["bob"][0]), "bob")
        await handle.execute_update("reject", rejected)

    text = sim_plan("plan-rejected", gate=f"approve: {{before: app, timeout: 10m, approvers: {approvers(keys, 'alice', 'bob')}}}")
    _record_sync(temporal_server, tmp_path, sim_state, "plan-rejected", text, during=answer)


def test_record_a_drill_cancelled_during_its_hold(temporal_server, tmp_path, sim_state):
    async def cancel(handle) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 120
        while (await phase_of(handle)) != "hold":
            assert loop.time() < deadline, "the drill never held"
            await asyncio.sleep(0.05)
        await handle.signal("extend", 60.0)
        await handle.cancel()

    _record_sync(temporal_server, tmp_path, sim_state, "sim-cancelled", sim_yaml(name="sim-cancelled", extra="teardown: {hold: 10m}"), during=cancel)


def test_record_a_postgres_drill_whose_network_checks_run_in_its_probe(temporal_server, tmp_path, shop_repo, network_root, production):
    checks = """  - {name: orders-present, type: sql, target: shop, query: "SELECT count(*) FROM orders", expect: "== 2000"}
  - {name: database-port, type: tcp, target: shop}
  - {name: on-the-worker, type: command, target: shop, argv: [sh, -c, 'test -n "$DRDRILL_PORT"']}"""
    text = network_drill(shop_repo, checks, name="pg-probe")
    _record_sync(temporal_server, tmp_path, tmp_path / "unused", "pg-probe", text, providers={"postgres": PostgresProvider()})


@needs_pgbackrest
def test_record_a_pitr_drill_laid_down_beside_its_isolation(temporal_server, tmp_path, cluster_root):
    stanza = Stanza(cluster_root)
    try:
        stanza.backup()
        stanza.prod.markers(2)
        stanza.prod.archive()
        text = pitr_drill(pgbackrest_source(stanza), name="pg-pitr-staged")
        _record_sync(temporal_server, tmp_path, tmp_path / "unused", "pg-pitr-staged", text, providers={"postgres": PostgresProvider()})
    finally:
        stanza.prod.stop()
    recorded = json.loads((HISTORIES / "pg-pitr-staged.json").read_text())
    names = [e.get("activityTaskScheduledEventAttributes", {}).get("activityType", {}).get("name") for e in recorded["events"]]
    assert "stage" in names, "the lay-down ran as its own activity"
