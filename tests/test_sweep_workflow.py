"""OrphanSweepWorkflow: a drill killed mid-hold (terminated: no teardown) leaves its restored cluster;
the sweep deletes it, leaves a running drill's alone, and records what it did as evidence."""

from __future__ import annotations

import asyncio
import json
import uuid

from temporalio.client import WorkflowExecutionStatus

from drdrill.providers.activity_io import SweepInput, SweepRecord
from tests.conftest import wait_for_phase
from tests.ops_helpers import pg_drill, service, spec_of, unique, wait_until
from tests.pg_fixtures import clusters_left, cluster_root, shop_dsn, shop_repo  # noqa: F401


def test_sweep_removes_what_a_killed_drill_left_and_records_it(temporal_server, tmp_path, shop_repo, cluster_root):
    killed_spec = spec_of(pg_drill(shop_repo, unique("killed"), extra="teardown: {hold: 1h}"))
    alive_spec = spec_of(pg_drill(shop_repo, unique("alive"), extra="teardown: {hold: 1h}"))

    async def go():
        async with service(temporal_server.address, tmp_path) as svc:
            killed = await svc.start(killed_spec)
            alive = await svc.start(alive_spec)
            await wait_for_phase(killed, "hold")
            await wait_for_phase(alive, "hold")
            await killed.terminate("killed by the test: no teardown runs")
            assert len(list(cluster_root.iterdir())) == 2  # the killed drill's cluster is left behind

            # The sweep only sees running drills through visibility: wait until it lists the kill.
            async def terminated():
                running = [w async for w in svc.client.list_workflows(f"WorkflowId = '{killed.id}' AND ExecutionStatus = 'Running'")]
                return (await killed.describe()).status == WorkflowExecutionStatus.TERMINATED and not running

            await wait_until(terminated, "the kill to be visible")
            sweep = await svc.client.execute_workflow(
                "OrphanSweepWorkflow",
                SweepInput(families=["postgres"]),
                id=f"sweep-{uuid.uuid4().hex[:6]}",
                task_queue=svc.queue,
                result_type=SweepRecord,
            )
            left = [p.name for p in cluster_root.iterdir()]
            await alive.signal("release")
            alive_result = await svc.result(alive)
            return killed.id, alive.id, sweep, left, alive_result

    killed_id, alive_id, sweep, left_after_sweep, alive_result = asyncio.run(go())
    assert [(a.orphan.drill_id, a.outcome.result) for a in sweep.actions] == [(killed_id, "deleted")]
    assert alive_id in sweep.active_drill_ids
    # The running drill kept its cluster through the sweep, and tore it down itself.
    assert len(left_after_sweep) == 1 and alive_id in left_after_sweep[0]
    assert alive_result.verdict == "PASSED"
    assert clusters_left(cluster_root) == []
    # The sweep is evidence: a JSON record naming the orphan and what was done with it.
    record = json.loads((tmp_path / "sweeps").joinpath(sweep.evidence_path.rsplit("/", 1)[-1]).read_text())
    assert record["actions"][0]["orphan"]["drill_id"] == killed_id
    assert record["actions"][0]["outcome"]["result"] == "deleted"
    assert record["families"] == ["postgres"]
