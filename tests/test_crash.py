"""Worker crashes: two real worker processes; SIGKILL the one running the drill's activity during
restore, during validation and during teardown; the other finishes the drill with an honest
verdict, and zero tagged resources remain.

Which process runs an activity: the sim state records the pid of the process running each
simulated operation; the blocking validation command writes its parent's (the worker's) pid.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

import pytest

from drdrill.core.models import DrillResult
from drdrill.providers.sim.provider import SimState
from tests.sim_harness import WorkerProcess, leaked, phase_of, sim_yaml, spec_of, start, wait_until
from worker import connect

HEARTBEAT = 3.0

BLOCKER = """
import os, sys, time, pathlib
d = pathlib.Path(sys.argv[1])
(d / f"pid-{os.getppid()}").write_text("running")
while not (d / "release").exists():
    time.sleep(0.05)  # allowed: the blocking check polls for the gate file the test creates
"""


def _crash_drill(phase: str, tmp: Path) -> str:
    if phase == "restore":
        return sim_yaml(source="{restore_time: 8}")
    if phase == "validate":
        script = tmp / "blocker.py"
        script.write_text(BLOCKER)
        gate = tmp / "gate"
        gate.mkdir()
        return sim_yaml(
            validations=f"  - {{type: command, target: db0, name: blocking-check, timeout: 2m, argv: [{sys.executable}, {script}, {gate}]}}"
        )
    if phase == "teardown":
        return sim_yaml(targets=2, source="{restore_time: 0.1, faults: {latency: {teardown: 2}}}")
    raise ValueError(phase)


async def _victim(phase: str, handle, state: Path, tmp: Path, pids: set[int]) -> int:
    """Wait until `phase` runs in one of the workers; return that worker's pid."""
    if phase == "validate":
        gate = tmp / "gate"

        def running_pid():
            found = [int(p.name[4:]) for p in gate.glob("pid-*")]
            return found[0] if found and found[0] in pids else None

        return await wait_until(running_pid, timeout=90, what="the blocking check to start")  # type: ignore[return-value]
    op = {"restore": "restore", "teardown": "teardown"}[phase]

    def running_pid():
        found = [r["pid"] for r in SimState(state).running(op) if r["pid"] in pids]
        return found[0] if found else None

    return await wait_until(running_pid, timeout=90, what=f"{op} to run")  # type: ignore[return-value]


@pytest.mark.parametrize("phase", ["restore", "validate", "teardown"])
def test_sigkill_the_worker_running_the_drill_and_the_other_finishes_it(temporal_server, tmp_path, phase):
    state, state_dir = tmp_path / "sim.json", tmp_path / "state"
    state_dir.mkdir()
    queue = f"crash-{uuid.uuid4().hex[:8]}"
    workers = [WorkerProcess(temporal_server.address, queue, state, state_dir, tmp_path / f"worker{i}.log") for i in range(2)]
    try:
        result, victim, survivor = asyncio.run(_crash(temporal_server.address, queue, phase, workers, state, tmp_path))
    finally:
        for w in workers:
            w.stop()
        (tmp_path / "gate").mkdir(exist_ok=True)
        (tmp_path / "gate" / "release").write_text("go")  # frees a check orphaned by the kill
    assert result.verdict == "PASSED", (result.findings, result.validations)
    assert leaked(state) == []
    assert result.teardown and all(r.deleted or r.already_gone for r in result.teardown)
    # The survivor did the rest: it ran the operation after the kill.
    if phase == "validate":
        assert (tmp_path / "gate" / f"pid-{survivor}").exists()
    else:
        op = phase
        later = [e["pid"] for e in SimState(state).events(op)]
        assert later[0] == victim and later[-1] == survivor
    if phase == "teardown":
        assert result.teardown[0].attempt >= 2 and "TEARDOWN_RETRIED" in {f.code for f in result.findings}
    assert (state_dir / "runs" / result.drill_id / "evidence.json").exists()


async def _crash(address: str, queue: str, phase: str, workers: list[WorkerProcess], state: Path, tmp: Path):
    await wait_until(lambda: all(w.polling() for w in workers), timeout=60, what="both workers to poll")
    client = await connect(address)
    handle = await start(client, spec_of(_crash_drill(phase, tmp)), queue, heartbeat=HEARTBEAT)
    pids = {w.pid for w in workers}
    victim_pid = await _victim(phase, handle, state, tmp, pids)
    victim = next(w for w in workers if w.pid == victim_pid)
    survivor = next(w for w in workers if w.pid != victim_pid)
    assert await phase_of(handle) == phase
    victim.kill()
    if phase == "validate":
        (tmp / "gate" / "release").write_text("go")
    result: DrillResult = await asyncio.wait_for(handle.result(), timeout=120)
    return result, victim_pid, survivor.pid
