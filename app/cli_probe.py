"""`drdrill probe --task-queue Q`: a small drdrill worker inside a drill's isolated network.

The drill's provider starts it there (the postgres provider inside its network namespace; a cloud
provider on an instance in the drill's network). It runs only the validation activity, on the
drill's own probe queue, against the Temporal at TEMPORAL_ADDRESS (the only address the isolated
network can reach): the workflow sends it every check that needs the isolated network.

It holds no secrets of its own and starts nothing; SIGTERM (or Ctrl-C) stops it cleanly, after the
check in progress. Registered by app.cli through `register(app)`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import typer
from temporalio.client import Client
from temporalio.worker import Worker

from activities import logs
from activities.validation import ValidationActivities
from worker import connect

log = logging.getLogger("drdrill.probe")


def probe(
    task_queue: str = typer.Option(..., "--task-queue", help="the drill's probe task queue (set by the provider that starts the probe)"),
    connect_timeout: float = typer.Option(120.0, help="seconds to keep trying to reach Temporal at start"),
    max_checks: int = typer.Option(20, help="checks run at once"),
) -> None:
    """Run a drill's checks inside its isolated network: a worker with only the validation activity."""
    logs.setup()
    raise typer.Exit(asyncio.run(serve(task_queue, connect_timeout=connect_timeout, max_checks=max_checks)))


async def serve(task_queue: str, *, connect_timeout: float = 120.0, max_checks: int = 20) -> int:
    """Poll `task_queue` for checks until SIGTERM or SIGINT; 0 on a clean stop, 4 if Temporal never answered."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    client = await _connect(connect_timeout, stop)
    if client is None:
        return 0 if stop.is_set() else 4
    identity = f"drdrill-probe {os.getpid()}@{socket.gethostname()}"
    with ThreadPoolExecutor(max_workers=max_checks, thread_name_prefix="drdrill-probe") as executor:
        worker = Worker(
            client,
            task_queue=task_queue,
            activities=[ValidationActivities().validate],
            activity_executor=executor,
            max_concurrent_activities=max_checks,
            identity=identity,
            # A check's heartbeat reaches the server within a second, so a probe that dies is noticed promptly.
            max_heartbeat_throttle_interval=timedelta(seconds=1),
            default_heartbeat_throttle_interval=timedelta(seconds=1),
        )
        try:
            async with worker:
                log.info("probe %s polling task queue %s at %s", identity, task_queue, os.environ.get("TEMPORAL_ADDRESS", "localhost:7233"))
                await stop.wait()
        except RuntimeError as exc:  # e.g. the namespace does not exist: the worker refuses to start
            log.error("the probe could not poll task queue %s: %s", task_queue, exc)
            return 4
    log.info("probe stopped cleanly")
    return 0


async def _connect(timeout: float, stop: asyncio.Event) -> Client | None:
    """Connect, trying again for `timeout` seconds: at boot the way to Temporal may not be up yet."""
    deadline = time.monotonic() + timeout
    delay = 0.2
    while not stop.is_set():
        try:
            return await connect()
        except RuntimeError as exc:  # the SDK's "failed client connect"
            if time.monotonic() > deadline:
                log.error("Temporal at %s did not answer within %.0fs: %s", os.environ.get("TEMPORAL_ADDRESS", "localhost:7233"), timeout, exc)
                return None
        try:
            await asyncio.wait_for(stop.wait(), timeout=delay)
        except asyncio.TimeoutError:
            delay = min(delay * 2, 5.0)
    return None


def register(app: typer.Typer) -> None:
    app.command("probe")(probe)
