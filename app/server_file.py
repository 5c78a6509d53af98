"""How other commands on the host find a running `drdrill server`: `<state dir>/server.json`.

The server writes it (atomically: a temporary file renamed over it) once everything it runs is
ready, and removes it when it stops. It says which process wrote it (pid and that process's start
time, so a pid reused by another program is not mistaken for the server), how to reach its
Temporal (the gate socket of the embedded server: app/temporal_gate.py), and the console's URL.
A file left by a killed server is detected and ignored, never trusted: its process is gone, or is
another one, or the gate socket is gone.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

SERVER_FILE = "server.json"


@dataclass(frozen=True)
class ServerInfo:
    """A running `drdrill server`, as it describes itself in `<state dir>/server.json`."""

    pid: int
    started: str            # the process's start time (/proc/<pid>/stat, clock ticks since boot)
    address: str            # its Temporal frontend's address (inside the server's namespace)
    proxy: Optional[str]    # `unix:PATH` of the gate that reaches it, for the embedded Temporal
    namespace: str
    task_queue: str
    console: Optional[str]  # the console's URL (with /healthz and /metrics beside it)


def process_start(pid: int) -> Optional[str]:
    """The start time of process `pid` (field 22 of /proc/<pid>/stat), or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count fields after the last ')'.
    return stat.rsplit(")", 1)[1].split()[19]


def write(state: Path, info: ServerInfo) -> Path:
    """Write `<state>/server.json` atomically (0600): a reader sees the old file or the new, never half."""
    target = state / SERVER_FILE
    fd, tmp = tempfile.mkstemp(dir=state, prefix=".server.", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(info), f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def remove(state: Path, pid: int) -> None:
    """Remove `<state>/server.json` if it is the one process `pid` wrote."""
    info = _read(state)
    if info is not None and info.pid == pid:
        (state / SERVER_FILE).unlink(missing_ok=True)


def _read(state: Path) -> Optional[ServerInfo]:
    try:
        data = json.loads((state / SERVER_FILE).read_text())
        return ServerInfo(**data)
    except (OSError, ValueError, TypeError):
        return None


def find(state: Path) -> Optional[ServerInfo]:
    """The server running on this state directory, or None (no file, or a stale one)."""
    info = _read(state)
    if info is None or info.pid == os.getpid():
        return None
    if process_start(info.pid) != info.started:
        return None  # its process is gone, or the pid is now another program's
    if info.proxy and info.proxy.startswith("unix:") and not Path(info.proxy[5:]).exists():
        return None
    return info


def stale(state: Path) -> bool:
    """A server.json whose server is not running (call only while holding the embedded lock)."""
    return (state / SERVER_FILE).exists() and find(state) is None


class ServerError(RuntimeError):
    """The server cannot start for an ordinary reason (one line for the user, exit 4)."""
