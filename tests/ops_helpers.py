"""Helpers for the operations tests (schedules, hold, limits, sweeps, notifications, metrics):
a "service" = a real worker on a private task queue of the session's dev server, which the CLI
reaches through TEMPORAL_ADDRESS and DRDRILL_TASK_QUEUE, as a team's deployment would."""

from __future__ import annotations

import asyncio
import json
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator, Optional

from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from typer.testing import CliRunner

from drdrill.core.models import DrillResult, DrillStatus
from drdrill.providers.spec import DrillInput, DrillSpec, parse_spec
from drdrill.evidence.created import created_resources, record_created
from drdrill.providers.base import Resource
from drdrill.providers.postgres.provider import PostgresProvider
from worker import connect, running_worker
from workflows.drill import DrillWorkflow

REPO = Path(__file__).resolve().parent.parent


def pg_drill(repo: Path, name: str, extra: str = "", validation: str = "") -> str:
    """A small PostgreSQL drill (one target, one check) for the operations tests."""
    return f"""
version: 1
name: {name}
objectives: {{rto: 15m, rpo: 1h}}
max_duration: 20m
targets:
  - name: shop
    provider: postgres
    source: {{repository: {repo}}}
    restore: {{jobs: 1, timeout: 5m}}
validations:
{validation or '  - {type: sql, target: shop, name: orders-present, query: "SELECT count(*) FROM orders", expect: "> 0"}'}
{extra}
"""


def recorded(drill_id: str, provider: str, *resources: tuple[str, str]) -> None:
    """Record (kind, id) resources as created by `drill_id`, as a drill's activities record what
    they create (the evidence store's created_resources, DRDRILL_EVIDENCE_DSN): what a sweep may delete."""
    record_created(REPO, drill_id, provider, [Resource(kind, rid) for kind, rid in resources])


def created(*families: str) -> dict:
    """What the evidence store records drills creating, per family: the `created` of providers.sweep.sweep."""
    return {family: created_resources(REPO, family) for family in families}


def spec_of(text: str) -> DrillSpec:
    return parse_spec(text, "<test drill>", base_dir=REPO)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def cli(*args: str, env: Optional[dict] = None):
    """Run the drdrill CLI as a user would (all commands registered); returns the click Result."""
    from app import cli as cli_mod
    from app import cli_schedule

    if not any(getattr(g, "name", None) == "schedule" for g in cli_mod.app.registered_groups):
        cli_schedule.register(cli_mod.app)
    return CliRunner().invoke(cli_mod.app, list(args), env=env, catch_exceptions=False)


class Service:
    def __init__(self, client: Client, queue: str, state_dir: Path):
        self.client = client
        self.queue = queue
        self.state_dir = state_dir

    def env(self) -> dict:
        host = self.client.service_client.config.target_host
        return {"TEMPORAL_ADDRESS": host, "DRDRILL_TASK_QUEUE": self.queue, "DRDRILL_STATE_DIR": str(self.state_dir)}

    async def start(self, spec: DrillSpec, drill_id: Optional[str] = None) -> WorkflowHandle:
        drill_id = drill_id or unique(spec.name)
        return await self.client.start_workflow(
            DrillWorkflow.run,
            DrillInput(spec=spec, drill_id=drill_id, started_by="test"),
            id=drill_id,
            task_queue=self.queue,
        )

    async def result(self, handle: WorkflowHandle) -> DrillResult:
        try:
            return await handle.result()
        except WorkflowFailureError:
            path = self.state_dir / "runs" / handle.id / "evidence.json"
            if path.exists():
                return DrillResult.model_validate(json.loads(path.read_text()))
            raise

    async def cli(self, *args: str):
        """The CLI from inside the test's event loop (it runs its own loop: use a thread)."""
        return await asyncio.to_thread(cli, *args, env=self.env())


@asynccontextmanager
async def service(address: str, state_dir: Path, runtime=None, providers: Optional[dict] = None) -> AsyncIterator[Service]:
    client = await connect(address, runtime=runtime)
    queue = unique("ops")
    async with running_worker(
        client, task_queue_name=queue, providers=providers or {"postgres": PostgresProvider()}, state_dir=str(state_dir)
    ):
        yield Service(client, queue, state_dir)


async def wait_until(check, what: str, timeout: float = 60.0, interval: float = 0.1):
    """Poll an async condition until it returns something truthy (never a fixed sleep)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        got = await check()
        if got:
            return got
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(interval)


async def phase(handle: WorkflowHandle) -> str:
    st: DrillStatus = await handle.query(DrillWorkflow.status)
    return st.phase
