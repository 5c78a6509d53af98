"""Helpers shared by the benchmarks: a sim drill spec, starting a drill, running one to its result."""

from __future__ import annotations

import time
import uuid
from typing import Optional

from drdrill.core.models import DrillResult
from drdrill.providers.spec import DrillInput, parse_spec
from workflows.drill import DrillWorkflow


def sim_spec(name: str, targets: int, restore_time: float, ready_after: float = 0.0, validate: bool = True):
    """`targets` sim targets, each restoring in `restore_time` s; one cheap command check each
    (/bin/true: the orchestration is measured, not a validation's own cost)."""
    tl = "\n".join(
        f"  - {{name: db{i}, provider: sim, source: {{restore_time: {restore_time}, ready_after: {ready_after}}}, restore: {{timeout: 30m}}}}"
        for i in range(targets)
    )
    vl = "\n".join(f"  - {{type: command, target: db{i}, name: up-db{i}, timeout: 1m, argv: [/bin/true]}}" for i in range(targets)) if validate else "  []"
    return parse_spec(
        f"version: 1\nname: {name}\nobjectives: {{rto: 1h, rpo: 1d}}\nmax_duration: 1h\ntargets:\n{tl}\nvalidations:\n{vl}\n", "<bench>"
    )


async def start(client, queue: str, spec, drill_id: Optional[str] = None):
    drill_id = drill_id or f"{spec.name}-{uuid.uuid4().hex[:8]}"
    return await client.start_workflow(
        DrillWorkflow.run, DrillInput(spec=spec, drill_id=drill_id, started_by="bench"), id=drill_id, task_queue=queue
    )


async def run_one(client, queue: str, spec, drill_id: Optional[str] = None) -> tuple[float, DrillResult]:
    """(wall seconds from start to result, the result) of one drill."""
    t0 = time.perf_counter()
    handle = await start(client, queue, spec, drill_id)
    result = await handle.result()
    return time.perf_counter() - t0, result


async def run_passing(client, queue: str, spec, drill_id: str) -> tuple[float, DrillResult]:
    """run_one, for a benchmark whose figure means nothing unless the drill PASSED."""
    wall, result = await run_one(client, queue, spec, drill_id)
    if result.verdict != "PASSED":
        raise RuntimeError(
            f"drill {drill_id}: {result.verdict}: {[f.message for f in result.findings]} {[v.detail for v in result.validations]}"
        )
    return wall, result


class MemoryState:
    """The sim's state kept in this process's memory (a lock instead of a flock'd JSON file).

    Same interface as drdrill.providers.sim.SimState, for benchmarks that measure the
    orchestrator rather than the simulator's file: the file-backed state rewrites the whole JSON
    document under one exclusive lock on every operation, which serialises all drills of a worker.
    """

    def __init__(self, name: str = "memory"):
        import threading
        from pathlib import Path

        from drdrill.providers.sim.provider import _empty

        self.path = Path(f"/nonexistent/{name}.json")
        self._data = _empty()
        self._lock = threading.RLock()

    def read(self) -> dict:
        with self._lock:
            return {k: (dict(v) if isinstance(v, dict) else list(v)) if isinstance(v, (dict, list)) else v for k, v in self._data.items()}

    def edit(self):
        from contextlib import contextmanager

        @contextmanager
        def _edit():
            with self._lock:
                yield self._data
                if len(self._data["events"]) > 5000:
                    del self._data["events"][:-5000]

        return _edit()

    def resources(self) -> dict:
        return self.read()["resources"]


def sim_provider(kind: str, path):
    """A SimProvider on a fresh state: "file" (the real flock'd JSON file at `path`) or "memory"."""
    from drdrill.providers.sim.provider import SimProvider

    p = SimProvider(state_path=path, speed=1.0)
    if kind == "memory":
        p.state = MemoryState()
    return p
