"""Running a physical source's backup tool (pgbackrest, barman-cloud-*): to its end, heartbeating,
stopped with a cancelled drill; the environment it is given by name; its last line for a finding;
the repository's times.

pgbackrest.py, barman.py and walarchive.py use it; recovery.py runs the recovery around them.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable, Optional

from drdrill.core.durations import format_duration
from drdrill.providers.base import ProviderError, heartbeat


def run_tool(
    argv: list[str], env: dict[str, str], target: str, step: str, timeout: Optional[float] = None, spawn: Optional[Callable[..., Any]] = None
) -> subprocess.CompletedProcess:
    """Run a backup tool to its end, heartbeating meanwhile; a cancelled drill stops it. `spawn`
    (a sandbox's popen, which sets the environment itself) starts it instead of subprocess.Popen."""
    if spawn is not None:
        proc = spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    else:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    out: dict[str, str] = {}
    readers = [
        threading.Thread(target=lambda: out.__setitem__("stdout", proc.stdout.read()), daemon=True),  # type: ignore[union-attr]
        threading.Thread(target=lambda: out.__setitem__("stderr", proc.stderr.read()), daemon=True),  # type: ignore[union-attr]
    ]
    for r in readers:
        r.start()
    started = time.monotonic()
    try:
        while proc.poll() is None:
            heartbeat({"target": target, "step": step, "seconds": round(time.monotonic() - started, 1)})
            if timeout is not None and time.monotonic() - started > timeout:
                raise ProviderError("TOOL_TIMEOUT", f"target {target}: {step} did not finish within {format_duration(timeout)}")
            try:
                proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for r in readers:
        r.join()
    return subprocess.CompletedProcess(argv, proc.returncode, out.get("stdout", ""), out.get("stderr", ""))


def named_env(names: list[str], target: str, prefixes: tuple[str, ...]) -> dict[str, str]:
    """The worker's environment for a backup tool: variables with `prefixes` only as the drill names
    them (by name; a named one that is unset is bad input), everything else as it is."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    unset = [n for n in names if not os.environ.get(n)]
    if unset:
        raise ProviderError(
            "SOURCE_ENV_MISSING",
            f"target {target}: the drill names {', '.join(unset)}, which this worker does not have set: set "
            f"{'it' if len(unset) == 1 else 'them'} in the worker's environment",
        )
    env.update({n: os.environ[n] for n in names})
    return env


def last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, timezone.utc)


