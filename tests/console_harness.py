"""A real console for the tests: uvicorn serving app.console.create_app on a free port, and a real
worker on a private task queue of the session's Temporal, both in one event loop on a thread of
their own (the test drives a browser from its own thread)."""

from __future__ import annotations

import asyncio
import socket
import threading
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Optional

import uvicorn

from app.console import ConsoleSettings, create_app
from drdrill.providers.sim.provider import SimProvider
from drdrill.providers.spec import DrillInput, DrillSpec
from worker import connect, running_worker
from workflows.drill import DrillWorkflow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveConsole:
    """The loop thread: a worker, and any number of consoles served by uvicorn."""

    def __init__(self, address: str, state_dir: Path, drills_dir: Path, sim_state: Path):
        self.address, self.state_dir, self.drills_dir = address, state_dir, drills_dir
        self.queue = f"console-{uuid.uuid4().hex[:8]}"
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="console-loop", daemon=True)
        self.sim = SimProvider(sim_state, speed=1.0)
        self.servers: list[tuple[uvicorn.Server, Any]] = []
        self._stop: Optional[asyncio.Event] = None
        self._worker_task = None

    def call(self, coro, timeout: float = 120):
        """Run a coroutine on the console's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> "LiveConsole":
        self.thread.start()
        self.client = self.call(connect(self.address))
        ready = threading.Event()

        async def work():
            self._stop = asyncio.Event()
            async with running_worker(self.client, task_queue_name=self.queue, providers={"sim": self.sim}, state_dir=str(self.state_dir)):
                ready.set()
                await self._stop.wait()

        self._worker_task = asyncio.run_coroutine_threadsafe(work(), self.loop)
        assert ready.wait(60), "the worker did not start"
        return self

    def settings(self, **overrides) -> ConsoleSettings:
        async def client():
            return self.client

        values = dict(state_dir=self.state_dir, connect=client, task_queue=self.queue, drills_dir=self.drills_dir,
                      temporal_ui_url="http://temporal-ui.example:8233")
        values.update(overrides)
        return ConsoleSettings(**values)

    def serve(self, settings: ConsoleSettings) -> str:
        """Serve a console for `settings` on 127.0.0.1 (whatever settings.bind_host says: the
        console decides by it); its base URL once uvicorn answers."""
        port = free_port()
        config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="off", proxy_headers=False)
        server = uvicorn.Server(config)
        task = asyncio.run_coroutine_threadsafe(server.serve(), self.loop)
        self.servers.append((server, task))

        async def started():
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.02)  # allowed: polling uvicorn's started flag, bounded by call()'s timeout

        self.call(started(), timeout=30)
        return f"http://127.0.0.1:{port}"

    def start_drill(self, spec: DrillSpec, drill_id: Optional[str] = None):
        drill_id = drill_id or f"{spec.name}-{uuid.uuid4().hex[:6]}"

        async def go():
            return await self.client.start_workflow(
                DrillWorkflow.run, DrillInput(spec=spec, drill_id=drill_id, started_by="test"), id=drill_id, task_queue=self.queue
            )

        return self.call(go())

    def result(self, handle, timeout: float = 120):
        return self.call(handle.result(), timeout=timeout)

    def wait_for_phase(self, handle, phase: str, timeout: float = 120) -> None:
        """Until the drill's status query answers `phase` (polled, bounded; never a fixed sleep)."""

        async def go():
            while True:
                try:
                    if (await handle.query(DrillWorkflow.status)).phase == phase:
                        return
                except Exception:  # noqa: BLE001 - not started yet
                    pass
                await asyncio.sleep(0.05)  # allowed: the polling interval of a bounded wait

        self.call(asyncio.wait_for(go(), timeout), timeout=timeout + 5)

    def stop(self) -> None:
        for server, task in self.servers:
            server.should_exit = True
            try:
                task.result(30)
            except Exception:  # noqa: BLE001 - stopping anyway
                pass
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
            self._worker_task.result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


def http(method: str, url: str, headers: Optional[dict] = None, body: bytes = b"") -> tuple[int, str]:
    """(status, body) of one request, without following redirects."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    req = urllib.request.Request(url, data=body if method == "POST" else None, method=method, headers=headers or {})
    try:
        with opener.open(req, timeout=60) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
