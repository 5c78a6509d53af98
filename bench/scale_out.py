"""Benchmark: scale-out. 1,000 concurrent simulated drills against one Temporal, with 1, 2 and 4
worker replicas, each a separate `python worker.py` process as a deployment runs them.

For each replica count N: a fresh Temporal dev server (in memory), a fresh evidence database on
the shared PostgreSQL (DRDRILL_EVIDENCE_DSN, as replicas on several hosts would share one), N
workers on one task queue (each its own DRDRILL_HOST_ID and state directory), then all drills
started at once, or evenly over --spread seconds (1 sim target each, restore --restore-time s, one
/bin/true check: bench/simdrill.py), and awaited. Reported per N:

- total time (first start -> last result) and throughput (drills/min);
- workflow-task latency p50/p99 **from the histories** of a sample of the drills:
  WorkflowTaskScheduled -> WorkflowTaskStarted (schedule-to-start: waiting for a worker) and
  WorkflowTaskScheduled -> WorkflowTaskCompleted (the whole task);
- from the workers' SDK metrics (Prometheus): the SDK's own schedule-to-start histogram
  (temporal_workflow_task_schedule_to_start_latency, bucketed), sticky cache hits/misses, and
  workflow-task execution latency;
- CPU seconds of the workers, of the Temporal server and of this (client) process, also per drill,
  read from /proc: on a shared 2-core machine wall times do not transfer, CPU per drill does; the
  workers' also by thread name (Python threads against the SDK's Rust core);
- a drill's first workflow task (on the shared queue, behind every new drill's) apart from its later
  ones (on the worker's sticky queue): schedule-to-start p50/p99 of each.

The sim's cloud is its state file shared by all replicas (DRDRILL_SIM_STATE, --state file: the
real provider code, whose one flock'd JSON document serialises every operation of every worker),
or, with --state memory, each replica's own memory with the sim pinned to the replica that claimed
the drill, as postgres drills are (bench/scale_worker.py): that measures the orchestration only.

Every process started here is stopped at the end, on an error, on Ctrl-C and on SIGTERM.

    python -m bench.scale_out --replicas 1,2,4 --drills 1000
    python -m bench.scale_out --replicas 1 --drills 200 --worker-env DRDRILL_MAX_CACHED_WORKFLOWS=1000
    python -m bench.scale_out --replicas 1 --drills 200 --state memory --spread 60   (arrivals over 60 s)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Optional

from app.temporal import DevServer, _die_with_parent, free_port
from bench.common import ADMIN_DSN, REPO, load, time_limit, write_result
from bench.fleet import latencies, pct
from bench.simdrill import sim_spec, start
from worker import connect

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and every descendant still alive (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                children.setdefault(int(fields[1]), []).append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICK
        except (OSError, IndexError, ValueError):
            pass
        todo.extend(children.get(p, []))
    return total


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of a process's threads by thread name: a replica's Python threads ("python": the
    event loop and the activity threads) against the SDK's Rust core ("tokio-rt-worker" …)."""
    out: dict[str, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / TICK
    return out


def self_cpu() -> float:
    t = os.times()
    return t.user + t.system


class Processes:
    """The replicas started by this benchmark: each in a session of its own, stopped (SIGTERM,
    then SIGKILL) with everything it started when `stop_all` runs or this process dies."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, argv: list[str], env: dict, log: Path) -> subprocess.Popen:
        with open(log, "ab") as out:
            p = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True, preexec_fn=_die_with_parent)
        self.procs.append(p)
        return p

    def stop_all(self, grace: float = 30.0) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:  # the whole session: the worker and anything it started (its evidence server)
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
        self.procs = []


def worker_env(a, server: DevServer, queue: str, dsn: str, work: Path, i: int, metrics_port: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DRDRILL_", "TEMPORAL_"))}
    env.update(
        TEMPORAL_ADDRESS=server.address, DRDRILL_TASK_QUEUE=queue, DRDRILL_HOST_ID=f"replica{i}",
        DRDRILL_STATE_DIR=str(work / f"state-{i}"), DRDRILL_SIM_STATE=str(work / "sim-state.json"),
        DRDRILL_EVIDENCE_DSN=dsn, DRDRILL_SDK_METRICS_PORT=str(metrics_port), DRDRILL_LOG_LEVEL="WARNING",
    )
    for kv in a.worker_env:
        k, _, v = kv.partition("=")
        env[k] = v
    return env


async def wait_for_pollers(client, queue: str, n: int, procs: list[subprocess.Popen], timeout: float = 120) -> None:
    """Until n distinct workers poll `queue` for workflow tasks (a replica that exits is an error)."""
    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"a worker replica exited with {p.returncode} before polling (see its log in the work directory)")
        r = await client.workflow_service.describe_task_queue(DescribeTaskQueueRequest(
            namespace=client.namespace, task_queue=TaskQueue(name=queue), task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW))
        if len({pi.identity for pi in r.pollers}) >= n:
            return
        await asyncio.sleep(0.5)  # allowed: polling the server for the replicas to come up
    raise RuntimeError(f"{n} worker replicas did not poll {queue} within {timeout:.0f}s")


def scrape(port: int) -> dict[str, float]:
    """The SDK's Prometheus metrics of one worker: {'name{labels}': value}."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            try:
                out[key] = out.get(key, 0.0) + float(value)
            except ValueError:
                continue
    return out


def sdk_summary(scrapes: list[dict[str, float]]) -> dict:
    """Sum over replicas: sticky cache hits/misses, and the SDK's schedule-to-start histogram
    quantiles (upper bucket bounds, as Prometheus' histogram_quantile would give at best)."""
    def total(prefix: str, must: str = "") -> float:
        return sum(v for s in scrapes for k, v in s.items() if k.startswith(prefix) and must in k)

    def quantiles(name: str) -> dict:
        buckets: dict[float, float] = {}
        for s in scrapes:
            for k, v in s.items():
                if k.startswith(name + "_bucket{") and 'task_queue="' in k and "le=" in k:
                    le = k.split('le="', 1)[1].split('"', 1)[0]
                    bound = float("inf") if le == "+Inf" else float(le)
                    buckets[bound] = buckets.get(bound, 0.0) + v
        if not buckets:
            return {}
        count = max(buckets.values())
        q = lambda p: next((b for b in sorted(buckets) if buckets[b] >= p * count), None)  # noqa: E731
        return {"n": count, "p50_le": q(0.5), "p99_le": q(0.99)}

    return {
        "sticky_cache_hit": total("temporal_sticky_cache_hit"), "sticky_cache_miss": total("temporal_sticky_cache_miss"),
        "sticky_cache_forced_eviction": total("temporal_sticky_cache_total_forced_eviction"),
        "workflow_task_schedule_to_start": quantiles("temporal_workflow_task_schedule_to_start_latency"),
        "workflow_task_execution_latency": quantiles("temporal_workflow_task_execution_latency"),
        "workflow_task_replay_latency": quantiles("temporal_workflow_task_replay_latency"),
        "workflow_slots_used_max": None,
    }


async def history_facts(client, ids: list[str]) -> dict:
    """Per drill of the sample: events, workflow tasks, and those that timed out or failed (a
    timed-out task is done again: wasted work under overload)."""
    from temporalio.api.enums.v1 import EventType

    events, tasks, timed_out, failed, first, later = [], 0, 0, 0, [], []
    for wid in ids:
        n, scheduled = 0, {}
        async for e in client.get_workflow_handle(wid).fetch_history_events():
            n += 1
            tasks += e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
            timed_out += e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT
            failed += e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
            if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED:
                scheduled[e.event_id] = e.event_time.ToDatetime().timestamp()
            elif e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
                sid = e.workflow_task_started_event_attributes.scheduled_event_id
                # the drill's first task (on the shared queue, behind every other drill's start) or a later one
                (first if sid == min(scheduled) else later).append(e.event_time.ToDatetime().timestamp() - scheduled[sid])
        events.append(n)
    return {"history_events_per_drill_p50": pct(events, 50), "workflow_tasks_per_drill": tasks / max(1, len(ids)),
            "workflow_tasks_timed_out": timed_out, "workflow_tasks_failed": failed,
            "first_workflow_task_schedule_to_start": {"p50": pct(first, 50), "p99": pct(first, 99)},
            "later_workflow_tasks_schedule_to_start": {"p50": pct(later, 50), "p99": pct(later, 99)}}


def evidence_db(name: str, drop: bool = False) -> str:
    import psycopg

    with psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if not drop:
            conn.execute(f'CREATE DATABASE "{name}"')
    return ADMIN_DSN.replace("dbname=postgres", f"dbname={name}")


async def drive(client, queue: str, a) -> dict:
    """Start every drill at once, await them all: wall, throughput, verdicts, completion times."""
    spec = sim_spec("scale", 1, a.restore_time)
    t0 = time.perf_counter()
    sem = asyncio.Semaphore(200)  # starts in flight at once: the client's gRPC channel, not the drills

    async def one(i: int):
        if a.spread:  # arrivals spread evenly over `spread` seconds instead of all at once
            await asyncio.sleep(max(0.0, t0 + i * a.spread / a.drills - time.perf_counter()))  # allowed: the start schedule
        async with sem:
            h = await start(client, queue, spec, f"scale-{i}-{uuid.uuid4().hex[:4]}")
        r = await h.result()
        return h.id, r.verdict, time.perf_counter() - t0

    done = await asyncio.gather(*(one(i) for i in range(a.drills)))
    wall = time.perf_counter() - t0
    times = [d[2] for d in done]
    return {"ids": [d[0] for d in done], "wall_seconds": wall, "drills_per_minute": a.drills / wall * 60,
            "passed": sum(d[1] == "PASSED" for d in done), "verdicts": sorted({d[1] for d in done}),
            "completion_p50_seconds": pct(times, 50), "completion_p99_seconds": pct(times, 99)}


async def one_count(a, n: int, work: Path, procs: Processes) -> dict:
    """One replica count: its own dev server, evidence database, task queue and replicas."""
    dbname = f"drb_scale_{os.getpid()}_{n}"
    dsn = evidence_db(dbname)
    server = DevServer(log_path=str(work / f"temporal-{n}.log")).start()
    try:
        client = await connect(server.address)
        queue = f"scale-{uuid.uuid4().hex[:6]}"
        ports = [free_port() for _ in range(n)]
        argv = [sys.executable, "worker.py"] if a.state == "file" else [sys.executable, "-m", "bench.scale_worker"]
        started = [procs.start(argv, worker_env(a, server, queue, dsn, work, i, ports[i]), work / f"worker-{n}-{i}.log") for i in range(n)]
        await wait_for_pollers(client, queue, n, started)
        cpu0 = ([cpu_seconds(p.pid) for p in started], cpu_seconds(server.proc.pid), self_cpu())
        threads0 = [thread_cpu(p.pid) for p in started]
        res = await drive(client, queue, a)
        cpu1 = ([cpu_seconds(p.pid) for p in started], cpu_seconds(server.proc.pid), self_cpu())
        threads = {}
        for before, p in zip(threads0, started):
            for name, sec in thread_cpu(p.pid).items():
                threads[name] = threads.get(name, 0.0) + sec - before.get(name, 0.0)
        sdk = sdk_summary([scrape(p) for p in ports])
        ids = res.pop("ids")
        sample = random.Random(n).sample(ids, min(a.sample, len(ids)))
        lat = {**await latencies(client, sample), **await history_facts(client, sample)}
        procs.stop_all()
        workers_cpu = sum(cpu1[0]) - sum(cpu0[0])
        return {
            "replicas": n, "drills": a.drills, "spread_seconds": a.spread, "restore_time": a.restore_time, "state": a.state, "worker_env": a.worker_env, **res,
            "cpu_seconds": {"workers": workers_cpu, "per_worker": [b - x for b, x in zip(cpu1[0], cpu0[0])],
                            "temporal_server": cpu1[1] - cpu0[1], "client": cpu1[2] - cpu0[2]},
            "worker_cpu_seconds_per_drill": workers_cpu / a.drills,
            "worker_thread_cpu_ms_per_drill": {k: round(v * 1000 / a.drills, 1) for k, v in sorted(threads.items(), key=lambda kv: -kv[1])},
            "all_cpu_seconds_per_drill": (workers_cpu + cpu1[1] - cpu0[1] + cpu1[2] - cpu0[2]) / a.drills,
            "latency_source": "histories (sample) + SDK Prometheus metrics of every replica",
            "latency_sample": min(a.sample, len(ids)), **lat, "sdk": sdk, "load_at_end": load(),
        }
    finally:
        procs.stop_all()
        server.stop()
        try:
            evidence_db(dbname, drop=True)
        except Exception:  # noqa: BLE001 - a leftover database is named after the benchmark; report only
            print(f"could not drop the evidence database {dbname}", file=sys.stderr)


def line(r: dict) -> str:
    w, s = r["workflow_task_scheduled_to_completed"], r["workflow_task_schedule_to_start"]
    c = r["cpu_seconds"]
    return (f"N={r['replicas']}: {r['wall_seconds']:.1f}s, {r['drills_per_minute']:.0f} drills/min, passed {r['passed']}/{r['drills']}, "
            f"WFT s2s p50 {s['p50']:.2f}s p99 {s['p99']:.2f}s, sched->completed p50 {w['p50']:.2f}s p99 {w['p99']:.2f}s, "
            f"first WFT s2s p50/p99 {r['first_workflow_task_schedule_to_start']['p50']:.2f}/{r['first_workflow_task_schedule_to_start']['p99']:.2f}s, "
            f"later {r['later_workflow_tasks_schedule_to_start']['p50']:.2f}/{r['later_workflow_tasks_schedule_to_start']['p99']:.2f}s, "
            f"SDK s2s p99<={r['sdk']['workflow_task_schedule_to_start'].get('p99_le')}, WFT timed out {r['workflow_tasks_timed_out']}, sticky hit/miss "
            f"{r['sdk']['sticky_cache_hit']:.0f}/{r['sdk']['sticky_cache_miss']:.0f}, CPU workers {c['workers']:.0f}s "
            f"({r['worker_cpu_seconds_per_drill'] * 1000:.0f} ms/drill: {r['worker_thread_cpu_ms_per_drill']}) server {c['temporal_server']:.0f}s ({c['temporal_server'] * 1000 / r['drills']:.0f} ms/drill) client {c['client']:.0f}s, load {load()}")


async def run(a) -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix="drb-scale-"))
    procs = Processes()
    out = []
    try:
        for n in [int(x) for x in a.replicas.split(",")]:
            r = await one_count(a, n, work, procs)
            out.append(r)
            print(line(r), flush=True)
    finally:
        procs.stop_all()
        if a.keep:
            print(f"logs kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return out


def _sigterm(signum, frame):  # noqa: ARG001
    """SIGTERM stops the run as Ctrl-C does; a second one (`timeout` forwards its own) does not
    interrupt the cleanup that the first one started."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--replicas", default="1,2,4", help="worker replica counts, comma-separated")
    ap.add_argument("--drills", type=int, default=1000)
    ap.add_argument("--restore-time", type=float, default=5.0)
    ap.add_argument("--sample", type=int, default=200, help="drills whose histories give the latencies")
    ap.add_argument("--state", choices=["file", "memory"], default="file")
    ap.add_argument("--spread", type=float, default=0.0, help="start the drills evenly over this many seconds (default 0: all at once)")
    ap.add_argument("--worker-env", action="append", default=[], metavar="NAME=VALUE", help="an extra setting of every replica")
    ap.add_argument("--out", default="scale_out")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    ap.add_argument("--timeout", type=float, default=3600)
    a = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    time_limit(a.timeout)
    out = asyncio.run(run(a))
    print(write_result(a.out, {"runs": out}))


if __name__ == "__main__":
    main()
