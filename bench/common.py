"""Shared helpers for the benchmarks: machine facts, load, medians, result files, time limits."""

from __future__ import annotations

import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT = Path(os.environ.get("DRDRILL_BENCH_OUT") or HERE / "out")  # run_all --quick writes to out/quick
ADMIN_DSN = os.environ.get("DRDRILL_BENCH_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")


def machine() -> dict:
    """What the numbers were measured on: cores, memory, CPU model, PostgreSQL, load."""
    info: dict[str, Any] = {"nproc": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        mem = {l.split(":")[0]: l.split(":")[1].strip() for l in Path("/proc/meminfo").read_text().splitlines()}
        info["mem_total_gib"] = round(int(mem["MemTotal"].split()[0]) / 2**20, 1)
    except OSError:
        pass
    try:
        import psycopg

        with psycopg.connect(ADMIN_DSN, connect_timeout=5) as conn:
            info["postgresql"] = conn.execute("SHOW server_version").fetchone()[0]
    except Exception as exc:  # noqa: BLE001 - informational only
        info["postgresql"] = f"unavailable: {exc}"
    try:
        import temporalio

        info["temporalio"] = temporalio.__version__
    except ImportError:
        pass
    info["load_at_start"] = load()
    return info


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def median(xs: Iterable[float]) -> float:
    xs = list(xs)
    return statistics.median(xs) if xs else float("nan")


def summary(xs: Iterable[float]) -> dict:
    xs = sorted(xs)
    if not xs:
        return {"n": 0}
    return {"n": len(xs), "median": statistics.median(xs), "min": xs[0], "max": xs[-1], "runs": xs}


def write_result(name: str, data: dict) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    import __main__

    spec = getattr(__main__, "__spec__", None)
    command = " ".join(["python", "-m", spec.name] if spec else ["python", sys.argv[0]]) + " " + " ".join(sys.argv[1:])
    data = {"benchmark": name, "command": command.strip(), "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": machine(), "load_at_end": load(), **data}
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str))
    return path


def time_limit(seconds: float) -> None:
    """Stop this benchmark process by itself after `seconds` (SIGALRM raises TimeoutError)."""

    def _alarm(signum, frame):  # noqa: ARG001
        raise TimeoutError(f"benchmark exceeded its {seconds:.0f}s limit")

    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(int(seconds))


def sh(cmd: str, env: dict | None = None, timeout: float | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, env=env, timeout=timeout, check=True)


def drop_caches_note() -> str:
    # We cannot drop the OS page cache on a shared machine; say so with every I/O figure.
    return "warm OS page cache (caches are not dropped on this shared machine)"
