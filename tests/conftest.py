"""Shared test fixtures: one real Temporal dev server per session, and a harness that runs a drill
through the real worker (every workflow and activity) against it.

    def test_x(drill_harness):
        result = drill_harness.run(spec, providers={"aws": my_provider})
        assert result.verdict == "PASSED"
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path
from typing import Awaitable, Callable, Optional

import pytest
from temporalio.client import WorkflowFailureError, WorkflowHandle

from app.temporal import DevServer
from drdrill.core.models import DrillResult, DrillStatus
from drdrill.providers.spec import DrillInput, DrillSpec, load_spec, parse_spec
from tests.evidence_fixtures import evidence_store_dsn  # noqa: F401  (evidence store for every test: issue 6)
from worker import connect, running_worker
from workflows.drill import DrillWorkflow

REPO = Path(__file__).resolve().parent.parent

# The tests' workers reload the workflow modules for every drill, as the SDK does by default, so
# that the sandbox catches a workflow that reads the clock or does I/O through a module it imported;
# deployed workers share them (worker.py, DRDRILL_WORKFLOW_SANDBOX; tests/test_worker_capacity.py).
os.environ.setdefault("DRDRILL_WORKFLOW_SANDBOX", "isolated")


@pytest.fixture(scope="session")
def temporal_server(tmp_path_factory):
    log = tmp_path_factory.mktemp("temporal") / "server.log"
    server = DevServer(log_path=str(log)).start()
    os.environ["DRDRILL_TEST_TEMPORAL_ADDRESS"] = server.address
    yield server
    server.stop()


class DrillHarness:
    """Runs drills through a real worker on a private task queue of the session's dev server."""

    def __init__(self, address: str, state_dir: Path):
        self.address = address
        self.state_dir = state_dir

    def spec(self, source: str | Path | DrillSpec, base_dir: Optional[Path] = None) -> DrillSpec:
        if isinstance(source, DrillSpec):
            return source
        if isinstance(source, Path) or (isinstance(source, str) and "\n" not in source and source.endswith(".yaml")):
            return load_spec(source)
        return parse_spec(source, "<test drill>", base_dir=base_dir or REPO)

    def run(
        self,
        spec: str | Path | DrillSpec,
        providers: Optional[dict] = None,
        during: Optional[Callable[[WorkflowHandle], Awaitable[None]]] = None,
        drill_id: Optional[str] = None,
    ) -> DrillResult:
        """Run a drill to its end and return its result (also when it was cancelled: then the
        result is read back from the evidence file the workflow wrote before it ended)."""
        return asyncio.run(self._run(self.spec(spec), providers, during, drill_id))

    async def _run(self, spec, providers, during, drill_id) -> DrillResult:
        client = await connect(self.address)
        queue = f"test-{uuid.uuid4().hex[:8]}"
        drill_id = drill_id or f"{spec.name}-{uuid.uuid4().hex[:6]}"
        async with running_worker(client, task_queue_name=queue, providers=providers, state_dir=str(self.state_dir)):
            handle = await client.start_workflow(
                DrillWorkflow.run,
                DrillInput(spec=spec, drill_id=drill_id, started_by="test"),
                id=drill_id,
                task_queue=queue,
            )
            if during is not None:
                await during(handle)
            try:
                return await handle.result()
            except WorkflowFailureError:
                evidence = self.state_dir / "runs" / drill_id / "evidence.json"
                if evidence.exists():
                    return DrillResult.model_validate(json.loads(evidence.read_text()))
                raise


async def wait_for_phase(handle: WorkflowHandle, phase: str, timeout: float = 120.0) -> DrillStatus:
    """Wait until the drill's `status` query reports `phase` (a condition, polled)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        status: DrillStatus = await handle.query(DrillWorkflow.status)
        if status.phase == phase:
            return status
        if status.phase in ("done",) or loop.time() > deadline:
            raise AssertionError(f"drill never reached phase {phase!r}; it is in {status.phase!r}")
        await asyncio.sleep(0.05)


@pytest.fixture
def drill_harness(temporal_server, tmp_path) -> DrillHarness:
    state = tmp_path / "state"
    state.mkdir()
    return DrillHarness(temporal_server.address, state)
