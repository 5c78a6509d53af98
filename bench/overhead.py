"""Benchmark 1: orchestration overhead.

Drills of 1, 10 and 50 `sim` targets, each restore taking a fixed simulated time T, through a
real Temporal dev server and worker. Wall time (start_workflow -> result, including isolation,
validation, teardown and evidence) divided by T, the critical path (all restores run in
parallel). Compared with a plain sequential script making the same simulated provider calls
(find point, isolate, verify, restore, wait ready, /bin/true check per target, teardown): what
teams write today.

    python -m bench.overhead --restore-time 30 --runs 5 --sizes 1,10,50 --seq-restore-time 1
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from app.temporal import DevServer
from bench.common import load, summary, time_limit, write_result
from bench.simdrill import run_one, sim_provider, sim_spec
from drdrill.core.models import DrillContext
from drdrill.providers.sim.provider import SimProvider
from worker import connect, running_worker


def sequential(spec, state: Path) -> float:
    """The plain script: one target after another, same provider calls, no orchestrator."""
    p = SimProvider(state_path=state, speed=1.0)
    now = datetime.now(timezone.utc)
    ctx = DrillContext(drill_id=f"seq-{uuid.uuid4().hex[:6]}", drill_name=spec.name, declared=now, expires_at=now.replace(year=now.year + 1))
    t0 = time.perf_counter()
    env = p.create_isolation(ctx, spec.isolation, spec.targets)
    p.verify_isolation(ctx, env)
    for t in spec.targets:
        point = p.find_recovery_point(ctx, t)
        res = p.restore(ctx, t, point, env)
        p.wait_ready(ctx, t, res, 1800)
        subprocess.run(["/bin/true"], check=True)
    p.teardown(ctx, env)
    return time.perf_counter() - t0


async def run(a) -> dict:
    work = Path(tempfile.mkdtemp(prefix="drb-ovh-"))
    try:
        return await _run(a, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def _run(a, work: Path) -> dict:
    sizes = [int(x) for x in a.sizes.split(",")]
    out: dict = {"restore_time": a.restore_time, "seq_restore_time": a.seq_restore_time, "drill": {}, "sequential": {}}
    server = DevServer(log_path=str(work / "temporal.log")).start()
    try:
        client = await connect(server.address)
        queue = f"bench-{uuid.uuid4().hex[:6]}"
        sim = sim_provider(a.state, work / "sim-warmup.json")
        async with running_worker(client, task_queue_name=queue, providers={"sim": sim}, state_dir=str(work / "state")):
            await run_one(client, queue, sim_spec("bench-warmup", 1, 0.1))  # first drill pays imports and sandbox warm-up
            for n in sizes:
                spec = sim_spec(f"bench-ovh-{n}", n, a.restore_time)
                walls = []
                for i in range(a.runs):
                    # Each drill in a fresh simulated cloud (the file-backed state otherwise grows
                    # with every earlier drill's counters and events, slowing every later call).
                    sim.state = sim_provider(a.state, work / f"sim-{n}-{i}.json").state
                    wall, result = await run_one(client, queue, spec)
                    assert result.verdict == "PASSED", (result.verdict, [f.message for f in result.findings])
                    walls.append(wall)
                    print(f"drill n={n} run {i + 1}: {wall:.2f}s = {wall / a.restore_time:.3f} T  load {load()}", flush=True)
                s = summary(walls)
                out["drill"][n] = {**s, "ratio": s["median"] / a.restore_time, "overhead_seconds": s["median"] - a.restore_time}
    finally:
        server.stop()
    for n in sizes if a.seq_restore_time > 0 else ():
        spec = sim_spec(f"bench-seq-{n}", n, a.seq_restore_time)
        walls = []
        for i in range(a.runs):
            walls.append(sequential(spec, work / f"seq-{n}-{i}.json"))
            print(f"sequential n={n} run {i + 1}: {walls[-1]:.2f}s = {walls[-1] / a.seq_restore_time:.2f} T  load {load()}", flush=True)
        s = summary(walls)
        out["sequential"][n] = {**s, "ratio": s["median"] / a.seq_restore_time}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--restore-time", type=float, default=30.0)
    ap.add_argument("--seq-restore-time", type=float, default=1.0, help="T for the sequential script (its ratio is ~N at any T); 0 skips it")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--sizes", default="1,10,50")
    ap.add_argument("--state", choices=["file", "memory"], default="file", help="the sim's state: its JSON file, or memory")
    ap.add_argument("--out", default="overhead", help="name of the result file in bench/out")
    ap.add_argument("--timeout", type=float, default=1800)
    a = ap.parse_args()
    time_limit(a.timeout)
    out = asyncio.run(run(a))
    for n, r in out["drill"].items():
        print(f"n={n}: drill {r['ratio']:.3f} T (overhead {r['overhead_seconds']:.2f}s)  sequential {out['sequential'].get(n, {}).get('ratio', float('nan')):.2f} T")
    print(write_result(a.out, {"state": a.state, **out}))


if __name__ == "__main__":
    main()
