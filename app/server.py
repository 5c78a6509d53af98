"""`drdrill server`: one long-lived process that runs a drill programme.

On the embedded defaults (no TEMPORAL_ADDRESS, no --temporal) it runs, for as long as it lives:
- the Temporal dev server, persisted in `<state dir>/temporal.db`, in a network namespace of its
  own behind the gate socket `<state dir>/temporal/frontend.sock` (app/temporal.py,
  app/temporal_gate.py): Temporal Schedules fire, approval gates wait for their answer, and a
  drill that was running when the server stopped resumes when it starts again;
- the worker (worker.py), which runs every drill and schedule;
- the embedded evidence store (drdrill/evidence/store.py), started at once, stopped on exit;
- one HTTP listener (127.0.0.1:7470 by default): the web console (app/console/), `/healthz`
  (ready when Temporal answers) and `/metrics` (Prometheus, drdrill/metrics.py).

Once all of that is ready it writes `<state dir>/server.json` (app/server_file.py): the other
commands of the host (`drdrill run`, `list`, `approve`, `schedule …`) find it there and talk to
its Temporal, so any number of them run at once. SIGTERM or Ctrl-C stops it cleanly: server.json
removed, the console and the worker stopped, then Temporal and the evidence store; nothing is left
running. A second signal stops waiting for running activities.

With `--temporal ADDRESS` (or TEMPORAL_ADDRESS) it is a replica against an existing Temporal
cluster: the worker and the console only, no embedded Temporal, no lock and no server.json. N
replicas share the task queue; Temporal is the only coordination.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Optional

import uvicorn
from prometheus_client import make_asgi_app
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from temporalio.client import Client

from app import server_file
from app.server_file import ServerError
from app.console import ConsoleSettings, create_app
from app.runtime import embedded_lock, state_dir
from app.temporal import DevServer
from drdrill import metrics
from drdrill.evidence.embedded import embedded_server, evidence_dsn
from worker import connect, running_worker, sdk_runtime, task_queue

log = logging.getLogger("drdrill.server")

DEFAULT_LISTEN = ("127.0.0.1", 7470)


@dataclass
class ServerOptions:
    """What `drdrill server` was asked to run (app/cli_server.py builds it from the command line)."""

    listen: tuple[str, int] = DEFAULT_LISTEN
    temporal: Optional[str] = None          # an existing Temporal cluster: no embedded one
    console: bool = True                    # False: a worker-only replica (still /healthz and /metrics)
    drills_dir: Optional[Path] = None
    tokens_file: Optional[Path] = None
    proxy_header: Optional[str] = None
    proxy_addresses: tuple[str, ...] = ()
    temporal_ui_url: Optional[str] = None
    max_concurrent_activities: int = 100
    announce: list = field(default_factory=list)  # callbacks taking one line for the user (the CLI prints them)


def _say(opts: ServerOptions, line: str) -> None:
    log.info(line)
    for out in opts.announce:
        out(line)


class _Listener(uvicorn.Server):
    """uvicorn, leaving SIGTERM and SIGINT to the server (which stops the listener in its order)."""

    def capture_signals(self):  # type: ignore[override]
        return contextlib.nullcontext()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ServerError(f"--listen {host}:{port}: {exc.strerror}; choose another port with --listen HOST:PORT") from None
    sock.listen(128)
    sock.set_inheritable(False)
    return sock




def http_app(opts: ServerOptions, client: Client, state: Path) -> Starlette:
    """`/healthz`, `/metrics`, and the console at `/` (unless --no-console)."""

    async def healthz(_: Request) -> JSONResponse:
        try:
            await asyncio.wait_for(client.service_client.check_health(), timeout=5)
        except Exception as exc:  # noqa: BLE001 - not ready: say why, 503
            return JSONResponse({"ready": False, "temporal": str(exc)}, status_code=503)
        return JSONResponse({"ready": True, "task_queue": task_queue(), "console": opts.console})

    routes = [Route("/healthz", healthz), Mount("/metrics", make_asgi_app())]
    if opts.console:
        settings = ConsoleSettings(
            state_dir=state,
            connect=lambda: _same(client),
            namespace=client.namespace,
            task_queue=task_queue(),
            drills_dir=opts.drills_dir,
            bind_host=opts.listen[0],
            tokens_file=opts.tokens_file,
            proxy_header=opts.proxy_header,
            proxy_addresses=opts.proxy_addresses,
            temporal_ui_url=opts.temporal_ui_url,
        )
        routes.append(Mount("/", create_app(settings)))
    return Starlette(routes=routes)


async def _same(client: Client) -> Client:
    return client


@contextlib.asynccontextmanager
async def _listening(opts: ServerOptions, client: Client, state: Path) -> AsyncIterator[str]:
    """Serve the HTTP app until the block ends; yields its base URL (the bound port, when 0 was asked)."""
    sock = _bind(*opts.listen)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    listener = _Listener(uvicorn.Config(http_app(opts, client, state), log_level="warning", access_log=False, lifespan="auto",
                                         # never X-Forwarded-For: the console trusts only its configured proxy's address
                                         proxy_headers=False))
    task = asyncio.create_task(listener.serve(sockets=[sock]))
    while not listener.started:
        if task.done():
            task.result()  # raises what stopped it
            raise ServerError("the console listener stopped while starting")
        await asyncio.sleep(0.02)  # uvicorn says it has started only through this flag
    try:
        yield f"http://{shown}:{port}/"
    finally:
        listener.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, timeout=10)
        sock.close()


def _stop_on_signals(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT stop the server in order; a second one cancels what it still waits for."""
    if threading.current_thread() is not threading.main_thread():
        return
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()

    def on_signal() -> None:
        if stop.is_set():
            main.cancel()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)


async def serve(opts: ServerOptions) -> int:
    """Run the server until SIGTERM or Ctrl-C; returns the exit code (0 after a clean stop)."""
    began = time.monotonic()
    stop = asyncio.Event()
    _stop_on_signals(stop)
    state = state_dir()
    if metrics.serve():  # DRDRILL_METRICS_PORT, as worker.py serves it (the same metrics are on /metrics too)
        log.info("drdrill metrics also on :%s/metrics (DRDRILL_METRICS_PORT)", os.environ["DRDRILL_METRICS_PORT"])
    with embedded_server():
        if opts.temporal:
            await _replica(opts, state, stop, began)
        else:
            await _embedded(opts, state, stop, began)
    _say(opts, "drdrill server stopped: nothing left running")
    return 0


async def _replica(opts: ServerOptions, state: Path, stop: asyncio.Event, began: float) -> None:
    """A worker (and console) against an existing Temporal cluster."""
    if not os.environ.get("DRDRILL_EVIDENCE_DSN"):
        log.warning("DRDRILL_EVIDENCE_DSN is not set: this replica records evidence in its own embedded store in %s", state)
    client = await connect(opts.temporal, runtime=sdk_runtime())
    await asyncio.to_thread(evidence_dsn, state)
    async with running_worker(client, state_dir=str(state), max_concurrent_activities=opts.max_concurrent_activities):
        async with _listening(opts, client, state) as url:
            _say(opts, f"drdrill server ready in {time.monotonic() - began:.1f}s: worker on task queue {task_queue()} "
                       f"of Temporal {opts.temporal}; {'console' if opts.console else 'health and metrics'} at {url}")
            await stop.wait()
            _say(opts, "drdrill server stopping")


async def _embedded(opts: ServerOptions, state: Path, stop: asyncio.Event, began: float) -> None:
    """The embedded Temporal, persisted in the state directory, plus worker, evidence and console."""
    running = server_file.find(state)
    if running is not None:
        raise ServerError(f"a drdrill server already runs on {state} (pid {running.pid}, console {running.console}); "
                          "stop it first, or set DRDRILL_STATE_DIR to another directory")
    with embedded_lock(state, "server"):
        dev = DevServer(db_filename=str(state / "temporal.db"), log_path=str(state / "temporal.log"), private_dir=state / "temporal")
        evidence = asyncio.create_task(asyncio.to_thread(evidence_dsn, state))  # meanwhile: both take a second or two
        try:
            await asyncio.to_thread(dev.start)
            await evidence
            client = await connect(dev.address, proxy=dev.proxy, runtime=sdk_runtime())
            async with running_worker(client, state_dir=str(state), max_concurrent_activities=opts.max_concurrent_activities):
                async with _listening(opts, client, state) as url:
                    info = server_file.ServerInfo(
                        pid=os.getpid(), started=server_file.process_start(os.getpid()) or "", address=dev.address,
                        proxy=dev.proxy, namespace=client.namespace, task_queue=task_queue(), console=url,
                    )
                    server_file.write(state, info)
                    try:
                        _say(opts, f"drdrill server ready in {time.monotonic() - began:.1f}s: console {url} · state {state} · "
                                   f"Temporal {dev.proxy} · stop with Ctrl-C or SIGTERM")
                        await stop.wait()
                        _say(opts, "drdrill server stopping: console, worker, Temporal, evidence store")
                    finally:
                        server_file.remove(state, os.getpid())
        finally:
            if not evidence.done():
                with contextlib.suppress(BaseException):
                    await evidence
            await asyncio.to_thread(dev.stop)
