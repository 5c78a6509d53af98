"""The drdrill worker: every workflow and activity, against the Temporal named by the environment.

This module assembles the worker (`running_worker`, used by the CLI and the tests too) and lists
every workflow and activity drdrill has. Run it as `python worker.py`.

    TEMPORAL_ADDRESS     host:port of the Temporal frontend (default localhost:7233)
    TEMPORAL_NAMESPACE   namespace (default "default")
    DRDRILL_TASK_QUEUE   task queue (default "drdrill"; one per provider family lets cloud work run
                         only where its credentials are)
    DRDRILL_STATE_DIR    where evidence files and local clusters live
    DRDRILL_LIMITS       drills at once per provider account/region, JSON ('{"postgres": 1, "aws:us-east-1": 4}')
    DRDRILL_RESTORE_LIMITS  restores at once per key, JSON (same keys)
    DRDRILL_METRICS_PORT drdrill's Prometheus metrics on this port (/metrics); unset: not served
    DRDRILL_SDK_METRICS_PORT  the Temporal SDK's Prometheus metrics (default DRDRILL_METRICS_PORT + 1)
    DRDRILL_LOG_FORMAT   text (default) or json; every line carries drill_id and run_id when known
    DRDRILL_LOG_LEVEL    INFO (default), DEBUG, WARNING …

Capacity of one worker (docs/deploy.md, "Worker settings"; bench/scale_out.py measures them):
    DRDRILL_MAX_ACTIVITIES         activities at once (default 100)
    DRDRILL_MAX_WORKFLOW_TASKS     workflow tasks at once (default 100)
    DRDRILL_MAX_CACHED_WORKFLOWS   drills kept in memory between their steps (default 2000)
    DRDRILL_WORKFLOW_POLLERS       a fixed maximum N of polls at once (default 5), or `autoscale`,
                                   `autoscale:MIN:MAX` (the server's backlog decides)
    DRDRILL_ACTIVITY_POLLERS       the same, for activity tasks
    DRDRILL_WORKFLOW_NONSTICKY_RATIO  of the workflow polls, the share on the shared queue (new drills)
                                   against the sticky one (default 0.2, the SDK's)
    DRDRILL_WORKFLOW_SANDBOX       `shared` (default): drdrill's workflow modules are loaded once per
                                   worker; `isolated`: reloaded for every drill (the SDK's default)
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import timedelta
from dataclasses import dataclass, field
from typing import AsyncIterator, Mapping, Optional

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import LoggingConfig, PrometheusConfig, Runtime, TelemetryConfig
from temporalio.service import HttpConnectProxyConfig
from temporalio.worker import PollerBehavior, PollerBehaviorAutoscaling, PollerBehaviorSimpleMaximum, Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions
from temporalio.worker.workflow_sandbox import _runner as sdk_sandbox

from activities import logs
from activities.coverage import CoverageActivities
from activities.drill import DrillActivities
from activities.notify import NotifyActivities
from activities.ops import OpsActivities
from activities.probe import ProbeActivities
from activities.validation import ValidationActivities
from drdrill import metrics
from drdrill.core.paths import reachable, real_socket_path
from drdrill.evidence.embedded import embedded_server
from workflows.coverage import CoverageCheckWorkflow
from workflows.drill import DrillWorkflow
from workflows.limiter import LimiterWorkflow
from workflows.sweep import OrphanSweepWorkflow

DEFAULT_TASK_QUEUE = "drdrill"


def task_queue() -> str:
    return os.environ.get("DRDRILL_TASK_QUEUE", DEFAULT_TASK_QUEUE)


async def connect(address: Optional[str] = None, namespace: Optional[str] = None, runtime=None, proxy: Optional[str] = None) -> Client:
    """A client with the pydantic converter; `runtime` (sdk_runtime below) exports SDK metrics;
    `proxy` (`unix:PATH`) reaches the embedded server through its gate (app/temporal_gate.py)."""
    if proxy and runtime is None:
        runtime = _gated_runtime()
    return await Client.connect(
        address or os.environ.get("TEMPORAL_ADDRESS", "localhost:7233"),
        namespace=namespace or os.environ.get("TEMPORAL_NAMESPACE", "default"),
        data_converter=pydantic_data_converter,
        http_connect_proxy_config=HttpConnectProxyConfig(target_host=reachable(proxy)) if proxy else None,
        **({"runtime": runtime} if runtime is not None else {}),
    )


_gated: list[Runtime] = []


def _gated_runtime() -> Runtime:
    """The SDK runtime of clients reaching Temporal through the embedded server's gate: the default
    one, except that the bridge's warning that a proxy disables DNS load balancing (which a Unix
    socket has no use for) is not printed to the user at every command."""
    if not _gated:
        levels = ",".join(f"{t}=WARN" for t in ("temporalio_common", "temporalio_sdk_core", "temporalio_client", "temporalio_sdk"))
        logging_config = LoggingConfig(filter=f"ERROR,{levels},temporal_sdk_bridge=ERROR")
        _gated.append(Runtime(telemetry=TelemetryConfig(logging=logging_config)))
    return _gated[0]


def reached_at(client: Client) -> str:
    """Where this client reaches its Temporal: `host:port`, or `unix:PATH` for the embedded
    server's gate (its frontend's own address means nothing outside its network namespace)."""
    proxy = client.service_client.config.http_connect_proxy_config
    if proxy is not None and proxy.target_host.startswith("unix:"):
        return "unix:" + real_socket_path(proxy.target_host[5:])
    return client.service_client.config.target_host


def _terminate_as_interrupt(signum, frame) -> None:
    """SIGTERM does what Ctrl-C does: under asyncio.run the main task is cancelled, elsewhere
    KeyboardInterrupt is raised; either way the command's `with` blocks stop what it started."""
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:
        raise KeyboardInterrupt


def exit_without_finalizing(main) -> None:
    """Run `main()` (a CLI or the worker), then end the process with its exit code without
    CPython's finalisation.

    The Temporal client's Rust runtime keeps threads that can call back into Python while the
    interpreter finalises, which aborts a short-lived client process with "PyGILState_Release:
    thread state ... must be current when releasing" after the command has done its work
    (temporalio/sdk-python#300; seen in our CI on `drdrill sweep`). Everything the command owns is
    closed by its own `with` blocks before `main()` returns, so only the finalisation is skipped:
    output and log handlers are flushed here first. SIGTERM is handled as an interrupt, so a
    terminated command stops what it started as Ctrl-C would.
    """
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    code: int = 0
    try:
        main()
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:  # sys.exit("message"): printed, then status 1, as the interpreter does
            print(exc.code, file=sys.stderr)
            code = 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        code = 130
    finally:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe: nothing more can be written
                pass
    os._exit(code)


def sdk_runtime(port: Optional[int] = None, addr: str = "0.0.0.0"):
    """A Temporal Runtime exporting the SDK's metrics to Prometheus on `port` (None: default runtime).

    DRDRILL_SDK_METRICS_PORT, default DRDRILL_METRICS_PORT + 1 (drdrill's own metrics: drdrill/metrics.py)."""
    if port is None:
        raw = os.environ.get("DRDRILL_SDK_METRICS_PORT", "").strip()
        if not raw and os.environ.get("DRDRILL_METRICS_PORT", "").strip():
            raw = str(int(os.environ["DRDRILL_METRICS_PORT"]) + 1)
        if not raw:
            return None
        port = int(raw)
    return Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=f"{addr}:{port}")))


class WorkerSettingError(ValueError):
    """A capacity setting of the worker (DRDRILL_MAX_…, …_POLLERS, …_SANDBOX) that cannot be used."""


# The modules the workflow sandbox takes from the worker instead of loading them anew for every
# drill. pydantic, yaml, drdrill and activities are data models and activity code (imported by the
# workflows only inside imports_passed_through). "workflows" (DRDRILL_WORKFLOW_SANDBOX=shared):
# our workflow modules keep no state at module level (constants only), so loading them once per
# worker is safe; without it every new drill executes workflows/drill.py again, and compiles it too
# where there is no bytecode cache (36% of a worker's CPU in a burst of 1,000 new drills, ~10% of
# a drill's CPU over a run: bench/RESULTS.md §18). Workflow histories are the same either way.
PASSTHROUGH = ("pydantic", "yaml", "drdrill", "activities")


# The SDK's sandbox (temporalio 1.35) enters a workflow's sandbox through `exec` of a source string,
# compiled anew each time, with its import restrictions applied; the worker does that not only for
# each activation but, in the payload visitor, for every payload of every activation and completion
# (5 passes: decode, external storage, codec), to ask the workflow for a serialization context.
# With 1,000 drills that was a quarter of a worker's Python CPU (bench/RESULTS.md §18, "Where a
# drill's CPU goes"). _Instance below changes neither what runs inside the sandbox nor its
# restrictions: it compiles each of the sandbox's few fixed snippets once, and answers the
# serialization-context questions (SDK code that reads the workflow's pending commands: no import,
# no workflow code) by calling the sandboxed SDK object directly. Private SDK names: when they are
# missing (another SDK version), the SDK's own runner is used unchanged.
_SANDBOX_INSIDE = "__temporal_in_sandbox"
_FAST_SANDBOX = all(hasattr(getattr(sdk_sandbox, "_Instance", None), a) for a in ("_run_code", "get_serialization_context", "get_external_store_context"))
_compiled: dict[str, object] = {}


class _Instance(getattr(sdk_sandbox, "_Instance", object)):  # type: ignore[misc]
    """The SDK's sandboxed workflow instance, without its per-call compile and context detours."""

    def _run_code(self, code, **extra_globals) -> None:
        compiled = _compiled.get(code) if isinstance(code, str) else code
        if compiled is None:
            compiled = _compiled.setdefault(code, compile(code, "<string>", "exec"))
        super()._run_code(compiled, **extra_globals)

    def get_serialization_context(self, command_info):
        inside = self.globals_and_locals.get(_SANDBOX_INSIDE)
        return inside.get_serialization_context(command_info) if inside is not None else super().get_serialization_context(command_info)

    def get_external_store_context(self, command_info):
        inside = self.globals_and_locals.get(_SANDBOX_INSIDE)
        return inside.get_external_store_context(command_info) if inside is not None else super().get_external_store_context(command_info)


@dataclass(frozen=True)
class FastSandboxRunner(SandboxedWorkflowRunner):
    """SandboxedWorkflowRunner whose instances are _Instance (above)."""

    def create_instance(self, det):
        return _Instance(det, self.runner_class, self.restrictions)


@dataclass(frozen=True)
class Capacity:
    """How much work one worker process takes on at once (read by `capacity()` from the environment)."""

    max_activities: int = 100
    # The SDK's default. A Python worker runs workflow code one task at a time (the GIL); 10 was
    # tried (bench/RESULTS.md §18) and did not help measurably on a shared machine: tunable.
    max_workflow_tasks: int = 100
    max_cached_workflows: int = 2000
    # The SDK's default. Autoscaling opened ~100 polls per replica against one dev server and made
    # the server, not the workers, the bottleneck (bench/RESULTS.md, scale-out): opt in per cluster.
    workflow_pollers: PollerBehavior = field(default_factory=PollerBehaviorSimpleMaximum)
    activity_pollers: PollerBehavior = field(default_factory=PollerBehaviorSimpleMaximum)
    sandbox: str = "shared"
    # Of the workflow-task polls, the share on the shared queue (new drills' first tasks) against the
    # sticky one (drills this worker already runs); the SDK's 0.2: 1 of 5 polls.
    nonsticky_poll_ratio: float = 0.2

    def workflow_runner(self) -> SandboxedWorkflowRunner:
        modules = PASSTHROUGH + (("workflows",) if self.sandbox == "shared" else ())
        runner = FastSandboxRunner if _FAST_SANDBOX else SandboxedWorkflowRunner
        return runner(restrictions=SandboxRestrictions.default.with_passthrough_modules(*modules))


def _whole(env: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise WorkerSettingError(f"{name}={raw!r} is not a whole number >= {minimum}: set it to one, or unset it for the default {default}")
    return value


def _pollers(env: Mapping[str, str], name: str, minimum: int) -> PollerBehavior:
    """N (at most N polls at once; default 5), `autoscale` (the server's backlog decides, 1..100
    polls) or `autoscale:MIN:MAX`."""
    raw = env.get(name, "").strip().lower()
    fix = f"set {name} to a whole number >= {minimum}, autoscale or autoscale:MIN:MAX"
    if not raw:
        return PollerBehaviorSimpleMaximum()
    if raw == "autoscale":
        return PollerBehaviorAutoscaling()
    if raw.startswith("autoscale:"):
        parts = raw.split(":")[1:]
        if len(parts) == 2 and all(p.isdigit() for p in parts) and 1 <= int(parts[0]) <= int(parts[1]):
            low, high = int(parts[0]), int(parts[1])
            return PollerBehaviorAutoscaling(minimum=low, maximum=high, initial=min(max(5, low), high))
        raise WorkerSettingError(f"{name}={raw!r}: MIN and MAX must be whole numbers with 1 <= MIN <= MAX; {fix}")
    if raw.isdigit() and int(raw) >= minimum:
        return PollerBehaviorSimpleMaximum(maximum=int(raw))
    raise WorkerSettingError(f"{name}={raw!r} is not a poller setting: {fix}")


def capacity(env: Mapping[str, str] = os.environ) -> Capacity:
    """The worker's capacity settings from the environment (module docstring); WorkerSettingError
    names the variable and the fix for a value that cannot be used."""
    sandbox = env.get("DRDRILL_WORKFLOW_SANDBOX", "").strip().lower() or "shared"
    if sandbox not in ("shared", "isolated"):
        raise WorkerSettingError(f"DRDRILL_WORKFLOW_SANDBOX={sandbox!r}: set it to shared (the default) or isolated")
    return Capacity(
        max_activities=_whole(env, "DRDRILL_MAX_ACTIVITIES", 100, 1),
        # The SDK needs two workflow task slots when it caches workflows.
        max_workflow_tasks=_whole(env, "DRDRILL_MAX_WORKFLOW_TASKS", 100, 2),
        max_cached_workflows=_whole(env, "DRDRILL_MAX_CACHED_WORKFLOWS", 2000, 0),
        # Workflow task polls: at least two (a sticky and a normal queue), as the SDK requires.
        workflow_pollers=_pollers(env, "DRDRILL_WORKFLOW_POLLERS", 2),
        activity_pollers=_pollers(env, "DRDRILL_ACTIVITY_POLLERS", 1),
        sandbox=sandbox,
        nonsticky_poll_ratio=_ratio(env, "DRDRILL_WORKFLOW_NONSTICKY_RATIO", 0.2),
    )


def _ratio(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.0 < value <= 1.0:
        raise WorkerSettingError(f"{name}={raw!r} is not a number in (0, 1]: set it to one, or unset it for the default {default}")
    return value


def workflows() -> list:
    """Every workflow drdrill has."""
    return [DrillWorkflow, OrphanSweepWorkflow, LimiterWorkflow, CoverageCheckWorkflow]


def host_queue(base: str) -> str:
    """This host's own task queue: `<queue>@<host id>` (DRDRILL_HOST_ID, default the hostname).

    Keep the host id stable across restarts (e.g. a StatefulSet pod name), so that a restarted
    worker picks up the teardown of what the previous process on this host created."""
    return f"{base}@{os.environ.get('DRDRILL_HOST_ID') or socket.gethostname()}"


def activity_objects(
    providers: Optional[dict] = None, state_dir: Optional[str] = None, host_queue_name: str = "", temporal: tuple[str, str] = ("", "")
) -> tuple[list, list]:
    """(activity callables, objects to close) for every activity drdrill has. `temporal`: the
    worker's (address, namespace), where the probes it starts report."""
    drill = DrillActivities(providers=providers, state_dir=state_dir, host_queue=host_queue_name, temporal=temporal)
    validation = ValidationActivities(state_dir=state_dir)
    ops = OpsActivities(state_dir=state_dir)
    notify = NotifyActivities()
    probe = ProbeActivities()
    coverage = CoverageActivities(providers)
    acts = [
        drill.claim_host,
        drill.discover,
        drill.find_recovery_point,
        drill.create_isolation,
        drill.verify_isolation,
        drill.stage,
        drill.restore,
        drill.wait_ready,
        drill.teardown,
        drill.list_orphans,
        drill.delete_orphan,
        drill.record_evidence,
        validation.validate,
        probe.wait_for_probe,
        ops.request_permit,
        ops.closed_workflows,
        ops.active_drill_ids,
        ops.record_sweep,
        ops.observe_result,
        notify.notify,
        coverage.check_coverage,
    ]
    return acts, [drill, coverage]


@asynccontextmanager
async def running_worker(
    client: Client,
    *,
    task_queue_name: Optional[str] = None,
    providers: Optional[dict] = None,
    state_dir: Optional[str] = None,
    max_concurrent_activities: Optional[int] = None,
    disable_eager_activities: bool = False,
    settings: Optional[Capacity] = None,
) -> AsyncIterator[Worker]:
    """Run a worker with every workflow and activity until the block exits, then shut it down cleanly.

    A second worker polls this host's own queue (activities only), for providers whose resources
    live on the host: see DrillActivities.claim_host. `settings`: its capacity (default: from the
    environment, `capacity()`); `max_concurrent_activities` overrides its activity slots."""
    # long: the two workers (the shared queue's and this host's) are built side by side from one capacity, to be read together
    settings = settings or capacity()
    max_concurrent_activities = max_concurrent_activities or settings.max_activities
    queue = task_queue_name or task_queue()
    temporal = (reached_at(client), client.namespace)
    acts, closables = activity_objects(providers, state_dir, host_queue(queue), temporal)
    executor = ThreadPoolExecutor(max_workers=max_concurrent_activities, thread_name_prefix="drdrill-activity")
    host_worker = Worker(
        client,
        task_queue=host_queue(queue),
        activities=acts,
        activity_executor=executor,
        max_concurrent_activities=max_concurrent_activities,
        activity_task_poller_behavior=settings.activity_pollers,
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
        # Capacity (bench/RESULTS.md, scale-out): the cache holds every drill in flight, so a drill's
        # next step never replays its history.
        max_concurrent_workflow_tasks=settings.max_workflow_tasks,
        max_cached_workflows=settings.max_cached_workflows,
        workflow_task_poller_behavior=settings.workflow_pollers,
        nonsticky_to_sticky_poll_ratio=settings.nonsticky_poll_ratio,
        activity_task_poller_behavior=settings.activity_pollers,
        # Heartbeats reach the server at least every 5 s, so a cancellation reaches a waiting
        # activity promptly (the default lets up to 80% of the heartbeat timeout pass).
        max_heartbeat_throttle_interval=timedelta(seconds=5),
        default_heartbeat_throttle_interval=timedelta(seconds=5),
        workflow_runner=settings.workflow_runner(),
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


async def main(providers: Optional[dict] = None) -> None:
    """The worker process (`python worker.py`); `providers` replaces the registry's (benchmarks)."""
    logs.setup()
    try:
        settings = capacity()
    except WorkerSettingError as exc:
        print(f"drdrill worker: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    port = metrics.serve()
    runtime = sdk_runtime()
    if port:
        logging.getLogger("drdrill.worker").info("drdrill metrics on :%d/metrics; Temporal SDK metrics per DRDRILL_SDK_METRICS_PORT (default the next port)", port)
    client = await connect(runtime=runtime)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # The embedded evidence PostgreSQL (without DRDRILL_EVIDENCE_DSN) runs while the worker lives
    # and is stopped when it exits.
    with embedded_server():
        async with running_worker(client, providers=providers, settings=settings):
            logging.getLogger("drdrill.worker").info("worker polling task queue %s", task_queue())
            await stop.wait()
    logging.getLogger("drdrill.worker").info("worker stopped cleanly")


if __name__ == "__main__":
    exit_without_finalizing(lambda: asyncio.run(main()))
