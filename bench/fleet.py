"""Benchmark 3: fleet scale.

N concurrent drills (1 sim target each, restore T seconds, one /bin/true check) started at once
against one worker (worker.running_worker defaults: 100 activity slots, SDK default
workflow cache of 1000) and a Temporal dev server, all on this machine. Reports drills per
minute (N / (last completion - first start)), workflow task latency p50/p99 (scheduled ->
completed, and its schedule-to-start part, from the histories of a sample of the drills), activity
schedule-to-start p50/p99, and the worker process's peak RSS (sampled every 0.25 s).

    python -m bench.fleet --sizes 100,500,1000 --restore-time 5
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from temporalio.api.enums.v1 import EventType

from app.temporal import DevServer
from bench.common import load, time_limit, write_result
from bench.simdrill import sim_provider, sim_spec, start
from worker import connect, running_worker


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] if xs else float("nan")


async def latencies(client, ids: list[str]) -> dict:
    wft_total, wft_sched, act_sched = [], [], []
    for wid in ids:
        events = [e async for e in client.get_workflow_handle(wid).fetch_history_events()]
        sched: dict[int, float] = {}
        started: dict[int, tuple[float, int]] = {}
        for e in events:
            t = e.event_time.ToDatetime().timestamp()
            if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED:
                sched[e.event_id] = t
            elif e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
                s = e.workflow_task_started_event_attributes.scheduled_event_id
                started[e.event_id] = (t, s)
                wft_sched.append(t - sched[s])
            elif e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
                st, s = started[e.workflow_task_completed_event_attributes.started_event_id]
                wft_total.append(t - sched[s])
            elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                sched[e.event_id] = t
            elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                act_sched.append(t - sched[e.activity_task_started_event_attributes.scheduled_event_id])
    f = lambda xs: {"p50": pct(xs, 50), "p99": pct(xs, 99), "max": max(xs) if xs else None, "n": len(xs)}  # noqa: E731
    return {"workflow_task_scheduled_to_completed": f(wft_total), "workflow_task_schedule_to_start": f(wft_sched), "activity_schedule_to_start": f(act_sched)}


async def one_size(client, queue: str, n: int, restore_time: float, sample: int) -> dict:
    spec = sim_spec(f"fleet-{n}", 1, restore_time)
    peak = [rss_mib()]
    before = peak[0]
    stop = asyncio.Event()

    async def sampler():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_mib())
            await asyncio.sleep(0.25)

    samp = asyncio.create_task(sampler())
    t0 = time.perf_counter()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    handles = await asyncio.gather(*(start(client, queue, spec, f"fleet-{n}-{i}-{uuid.uuid4().hex[:4]}") for i in range(n)))
    started = time.perf_counter() - t0
    done_at: list[float] = []

    async def wait(h):
        r = await h.result()
        done_at.append(time.perf_counter() - t0)
        return r.verdict

    verdicts = await asyncio.gather(*(wait(h) for h in handles))
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    stop.set()
    await samp
    lat = await latencies(client, [h.id for h in random.Random(n).sample(handles, min(sample, n))])
    res = {
        "n": n, "restore_time": restore_time, "start_seconds": started, "wall_seconds": wall,
        "drills_per_minute": n / wall * 60, "passed": sum(v == "PASSED" for v in verdicts),
        "completion_p50_seconds": pct(done_at, 50), "completion_p99_seconds": pct(done_at, 99),
        "worker_rss_mib_before": before, "worker_rss_mib_peak": peak[0],
        "worker_cpu_seconds": (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime),
        "latency_sample": min(sample, n), **lat, "load_at_end": load(),
    }
    return res


async def run(a) -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix="drb-fleet-"))
    out = []
    server = DevServer(log_path=str(work / "temporal.log")).start()
    try:
        client = await connect(server.address)
        for n in [int(x) for x in a.sizes.split(",")]:
            for rep in range(a.runs):
                queue = f"fleet-{uuid.uuid4().hex[:6]}"
                sim = sim_provider(a.state, work / f"sim-{n}-{rep}.json")
                async with running_worker(client, task_queue_name=queue, providers={"sim": sim}, state_dir=str(work / "state")):
                    r = await one_size(client, queue, n, a.restore_time, a.sample)
                r["run"] = rep + 1
                r["state"] = a.state
                out.append(r)
                w = r["workflow_task_scheduled_to_completed"]
                print(
                    f"N={n} run {rep + 1}: {r['wall_seconds']:.1f}s, {r['drills_per_minute']:.0f} drills/min, passed {r['passed']}/{n}, "
                    f"WFT p50 {w['p50'] * 1000:.0f}ms p99 {w['p99'] * 1000:.0f}ms, act s2s p99 {r['activity_schedule_to_start']['p99']:.1f}s, "
                    f"RSS {r['worker_rss_mib_before']:.0f}->{r['worker_rss_mib_peak']:.0f} MiB, cpu {r['worker_cpu_seconds']:.0f}s, load {load()}",
                    flush=True,
                )
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100,500,1000")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--restore-time", type=float, default=5.0)
    ap.add_argument("--sample", type=int, default=100)
    ap.add_argument("--state", choices=["file", "memory"], default="memory",
                    help="the sim's state: memory (measures the worker) or its flock'd JSON file (measures the simulator too)")
    ap.add_argument("--out", default="fleet")
    ap.add_argument("--timeout", type=float, default=2400)
    a = ap.parse_args()
    time_limit(a.timeout)
    out = asyncio.run(run(a))
    print(write_result(a.out, {"state": a.state, "runs": out}))


if __name__ == "__main__":
    main()
