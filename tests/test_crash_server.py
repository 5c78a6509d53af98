"""Server restart: the Temporal dev server persisted with --db-filename is stopped and started on
the same port in the middle of a drill; the worker reconnects and the drill completes."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from app.temporal import DevServer
from drdrill.core.models import DrillResult
from drdrill.providers.sim.provider import SimProvider, SimState
from tests.sim_harness import leaked, phase_of, sim_yaml, spec_of, start, wait_until
from worker import connect, running_worker


@pytest.mark.parametrize("phase", ["restore", "validate"])
def test_the_drill_completes_across_a_server_restart(tmp_path, phase):
    state = tmp_path / "sim.json"
    server = DevServer(db_filename=str(tmp_path / "temporal.db"), log_path=str(tmp_path / "server.log")).start()
    try:
        result = asyncio.run(_run(server, state, tmp_path, phase))
    finally:
        server.stop()
    assert result.verdict == "PASSED", (result.findings, result.validations)
    assert leaked(state) == []
    assert (tmp_path / "runs" / result.drill_id / "evidence.json").exists()


async def _run(server: DevServer, state, tmp_path, phase: str) -> DrillResult:
    gate = tmp_path / "gate"
    gate.mkdir()
    import sys

    script = tmp_path / "wait_for_gate.py"
    script.write_text("import pathlib, sys, time\nwhile not pathlib.Path(sys.argv[1]).exists():\n    time.sleep(0.05)\n")  # allowed: a check that waits for the test's gate file
    text = sim_yaml(
        source="{restore_time: 6}" if phase == "restore" else "{restore_time: 0.1}",
        validations=f"  - {{type: command, target: db0, name: waits-for-gate, timeout: 2m, argv: [{sys.executable}, {script}, {gate / 'open'}]}}",
    )
    client = await connect(server.address)
    queue = f"restart-{uuid.uuid4().hex[:8]}"
    async with running_worker(client, task_queue_name=queue, providers={"sim": SimProvider(state)}, state_dir=str(tmp_path)):
        handle = await start(client, spec_of(text), queue, heartbeat=5.0)
        if phase == "restore":
            await wait_until(lambda: SimState(state).running("restore"), timeout=60, what="the restore to run")
        else:
            async def in_validate():
                return await phase_of(handle) == "validate"

            while not await in_validate():
                await asyncio.sleep(0.05)
        # Stop the server mid-drill and start it again on the same port, from the same database.
        await asyncio.to_thread(server.stop)
        await asyncio.to_thread(server.start)
        (gate / "open").write_text("go")
        fresh = await connect(server.address)
        return await asyncio.wait_for(fresh.get_workflow_handle(handle.id, result_type=DrillResult).result(), timeout=180)
