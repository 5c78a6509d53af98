"""Helpers for the reliability suite (issue 8): sim drills through a real worker and server.

`run_sim(...)` runs one drill against the session's dev server with an in-process worker whose
`sim` provider uses a private state file, passing a short heartbeat timeout so a dead or cancelled
activity is noticed in seconds. Worker subprocesses (`WorkerProcess`) are for the crash tests.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Awaitable, Callable, Optional

from temporalio.client import Client, WorkflowFailureError, WorkflowHandle

from drdrill.core.models import DrillResult, DrillStatus
from drdrill.providers.spec import DrillInput, DrillSpec, parse_spec
from drdrill.providers.sim.provider import SimProvider, SimState
from worker import connect, running_worker
from workflows.drill import DrillWorkflow

REPO = Path(__file__).resolve().parent.parent
SPEED = 1.0  # sim durations in these tests are written in real seconds
HEARTBEAT = 2.0


def sim_yaml(
    name: str = "sim-drill",
    source: str = "{restore_time: 0.2}",
    validations: Optional[str] = None,
    extra: str = "",
    targets: int = 1,
    timeout: str = "1m",
) -> str:
    tlines = "\n".join(
        f"""  - name: db{i}
    provider: sim
    source: {source}
    restore: {{timeout: {timeout}}}"""
        for i in range(targets)
    )
    if validations is None:
        validations = "\n".join(
            f"  - {{type: command, target: db{i}, name: ready-db{i}, timeout: 30s, argv: [{sys.executable}, -m, app.simulate, check]}}"
            for i in range(targets)
        )
    return f"""
version: 1
name: {name}
objectives: {{rto: 15m, rpo: 2h}}
max_duration: 10m
targets:
{tlines}
validations:
{validations}
{extra}
"""


def spec_of(text: "str | DrillSpec") -> DrillSpec:
    if isinstance(text, DrillSpec):
        return text
    return parse_spec(text, "<test drill>", base_dir=REPO)


def result_from(handle_id: str, state_dir: Path) -> DrillResult:
    evidence = Path(state_dir) / "runs" / handle_id / "evidence.json"
    return DrillResult.model_validate(json.loads(evidence.read_text()))


async def final_result(handle: WorkflowHandle, state_dir: Path) -> DrillResult:
    """The drill's result; for a cancelled drill, read back from the evidence it recorded."""
    try:
        return await handle.result()
    except WorkflowFailureError:
        return result_from(handle.id, state_dir)


async def start(client: Client, spec: DrillSpec, queue: str, drill_id: Optional[str] = None, heartbeat: float = HEARTBEAT) -> WorkflowHandle:
    drill_id = drill_id or f"{spec.name}-{uuid.uuid4().hex[:6]}"
    return await client.start_workflow(
        DrillWorkflow.run,
        DrillInput(spec=spec, drill_id=drill_id, started_by="test", heartbeat_seconds=heartbeat),
        id=drill_id,
        task_queue=queue,
    )


def run_sim(
    address: str,
    text: str,
    state: Path,
    state_dir: Path,
    during: Optional[Callable[[WorkflowHandle], Awaitable[None]]] = None,
    speed: float = SPEED,
) -> tuple[DrillResult, WorkflowHandle]:
    return asyncio.run(_run_sim(address, text, state, state_dir, during, speed))


async def _run_sim(address, text, state, state_dir, during, speed):
    client = await connect(address)
    queue = f"sim-{uuid.uuid4().hex[:8]}"
    provider = SimProvider(state, speed=speed)
    async with running_worker(client, task_queue_name=queue, providers={"sim": provider}, state_dir=str(state_dir)):
        handle = await start(client, spec_of(text), queue)
        if during is not None:
            await during(handle)
        result = await final_result(handle, state_dir)
        # A real worker lives on after a drill: let every simulated operation still running (an
        # activity that ignored a cancellation, say) finish, so what it does afterwards counts.
        await wait_until(lambda: not SimState(state).running(), timeout=120, what="simulated operations to end")
        return result, handle


async def wait_until(predicate: Callable[[], object], timeout: float = 60.0, what: str = "condition") -> object:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def phase_of(handle: WorkflowHandle) -> str:
    status: DrillStatus = await handle.query(DrillWorkflow.status)
    return status.phase


def cli_env(**extra: str) -> dict:
    """The environment a `drdrill` subprocess gets: this one without Temporal's and drdrill's own
    settings (the shared evidence DSN stays), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "DRDRILL_")) or k == "DRDRILL_EVIDENCE_DSN"}
    env.update(extra)
    return env


def leaked(state: Path) -> list[dict]:
    """Resources still carrying a drill tag: must be none after every drill."""
    return SimState(state).tagged()


class WorkerProcess:
    """A real `worker.py` process (its own pid, killable with SIGKILL)."""

    def __init__(self, address: str, queue: str, state: Path, state_dir: Path, log: Path, extra_env: Optional[dict] = None):
        env = dict(os.environ)
        env.update(
            TEMPORAL_ADDRESS=address,
            DRDRILL_TASK_QUEUE=queue,
            DRDRILL_SIM_STATE=str(state),
            DRDRILL_SIM_SPEED="1",
            DRDRILL_STATE_DIR=str(state_dir),
            PYTHONUNBUFFERED="1",
        )
        env.update(extra_env or {})
        self.log = log
        self._out = open(log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "worker.py")], cwd=str(REPO), env=env, stdout=self._out, stderr=subprocess.STDOUT
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def polling(self) -> bool:
        return b"worker polling task queue" in self.log.read_bytes()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        self._out.close()
