"""Where a submitted PITR drill's wall time goes (issue 25): phase by phase, activity by activity.

bench/server_fixed_cost.py's setup (bench/pitr.py's Source, a running `drdrill server`, a client
already connected) and, per run: the bare path, then the drill submitted to the server; for the
drill, its workflow history read back: each activity's dispatch gap (scheduled → started), its
own time (started → closed), and the gaps between them (workflow tasks); its timeline; and the
restore's own split (details["seconds"]). Also bare + `pg_amcheck` on the bare server, the
like-for-like comparison for a drill with amcheck on. Each drill runs with amcheck on and off
(`restore: {integrity: {enabled: false}}`); with --baseline (another install's `drdrill`, e.g. main
checked out with its own venv) a second server runs the same drills on the same data (before/after).
Reported in bench/RESULTS.md §16.

    python -m bench.drill_trace --gb 0.8 --wal-mb 128 --runs 3 [--baseline /path/to/other/.venv/bin/drdrill]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

from app import server_file
from bench.common import load, summary, time_limit, write_result
from bench.pitr import DRILL, Source, bare, ids, owned
from bench.server_fixed_cost import Server, drill_span
from drdrill.providers.spec import parse_spec


def cpu_seconds() -> float:
    """CPU seconds (user + system) of the whole machine so far, from /proc/stat."""
    fields = open("/proc/stat").readline().split()[1:]
    busy = sum(int(x) for i, x in enumerate(fields[:8]) if i not in (3, 4))  # all but idle, iowait
    return busy / os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its descendants: the live ones' own, plus what every one of
    them has reaped (cutime + cstime), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = open(f"/proc/{entry}/stat").read()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        stats[int(entry)] = fields
        children.setdefault(int(fields[1]), []).append(int(entry))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        f = stats.get(p)
        if f is None:
            continue
        total += sum(int(x) for x in f[11:15]) / tick  # utime stime cutime cstime
        todo += children.get(p, [])
    return total


def activities(history) -> list[dict]:
    """Each activity of a workflow history: its name, scheduled/started/closed times (s from the
    first event); last, the workflow's end and the time its workflow tasks took (the dispatch)."""
    from temporalio.api.enums.v1 import EventType

    events = list(history.events)
    t0 = events[0].event_time.ToDatetime().timestamp()
    at = lambda e: e.event_time.ToDatetime().timestamp() - t0  # noqa: E731
    rows: dict[int, dict] = {}
    tasks = []
    for e in events:
        t = e.event_type
        if t == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            a = e.activity_task_scheduled_event_attributes
            rows[e.event_id] = {"name": a.activity_type.name, "scheduled": at(e)}
        elif t == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            rows[e.activity_task_started_event_attributes.scheduled_event_id]["started"] = at(e)
        elif t in (EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED, EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED):
            attrs = e.activity_task_completed_event_attributes if t == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED else e.activity_task_failed_event_attributes
            rows[attrs.scheduled_event_id]["closed"] = at(e)
        elif t == EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED:
            tasks.append({"scheduled": at(e)})
        elif t == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            tasks[-1]["completed"] = at(e)
    end = {"name": "(workflow end)", "scheduled": at(events[-1]), "workflow_tasks": len(tasks),
           "workflow_task_seconds": sum(x.get("completed", x["scheduled"]) - x["scheduled"] for x in tasks)}
    return list(rows.values()) + [end]


async def submit(state: Path, spec, server_pid: int) -> dict:
    from drdrill.providers.spec import DrillInput
    from worker import connect
    from workflows.drill import DrillWorkflow

    info = server_file.find(state)
    client = await connect(info.address, namespace=info.namespace, proxy=info.proxy)
    drill_id = f"bench-trace-{uuid.uuid4().hex[:6]}"
    c0, t0, p0 = cpu_seconds(), time.perf_counter(), tree_cpu(server_pid)
    handle = await client.start_workflow(DrillWorkflow.run, DrillInput(spec=spec, drill_id=drill_id, started_by="bench"),
                                         id=drill_id, task_queue=info.task_queue)
    result = await handle.result()
    wall, cpu, server_cpu = time.perf_counter() - t0, cpu_seconds() - c0, tree_cpu(server_pid) - p0
    if result.verdict != "PASSED":
        raise RuntimeError(f"{drill_id}: {result.verdict}: {[f.message for f in result.findings]}")
    hist = await handle.fetch_history()
    timeline = [{"phase": e.phase, "target": e.target, "seconds": (e.ended - e.started).total_seconds() if e.ended and e.started else None,
                 "from_declared": (e.started - result.declared).total_seconds() if e.started else None} for e in result.timeline]
    details = result.restored[0].details
    return {"wall_seconds": wall, "machine_cpu_seconds": cpu, "server_tree_cpu_seconds": server_cpu, "span_seconds": drill_span(result), "rto_seconds": result.rto_seconds,
            "activities": activities(hist), "timeline": timeline, "restore_seconds": details.get("seconds"),
            "integrity": details.get("integrity", {}).get("seconds") if isinstance(details.get("integrity"), dict) else None}


def bare_amcheck(source: Source, root: Path, target, jobs: int) -> dict:
    """bare, then `pg_amcheck --heapallindexed --install-missing -j jobs` (what drdrill runs) on the recovered server before it is stopped (what an
    operator who also checks the indexes would run)."""
    import resource

    import bench.pitr as pitr

    real = subprocess.run
    seen = {}

    def hooked(argv, *a, **kw):  # run pg_amcheck right before bare's `pg_ctl stop`
        if isinstance(argv, list) and len(argv) > 1 and argv[1] == "stop":
            data = Path(argv[3])
            sock = data.parent / "sock"
            postmaster = int((data / "postmaster.pid").read_text().split()[0])
            seen["server_cpu_seconds"] = tree_cpu(postmaster)
            t, u0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
            proc = real([source.prod.tool("pg_amcheck"), "-h", str(sock), "-p", "5432", "-U", "drdrill", "-d", "bench", "-j", str(jobs), "--heapallindexed", "--install-missing"],
                        capture_output=True, text=True, **ids())
            seen["amcheck_seconds"] = time.perf_counter() - t
            seen["server_cpu_with_amcheck_seconds"] = tree_cpu(postmaster)
            u1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            seen["amcheck_tool_cpu"] = u1.ru_utime + u1.ru_stime - u0.ru_utime - u0.ru_stime
            seen["amcheck_rc"] = proc.returncode
            seen["amcheck_err"] = proc.stderr[-300:]
        return real(argv, *a, **kw)

    pitr.subprocess.run = hooked
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        b = bare(source, root, target, jobs)
    finally:
        pitr.subprocess.run = real
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    b.update(seen)
    # pgbackrest restore, pg_ctl, pg_amcheck (reaped children) + the server's own tree (read before its stop)
    tools = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
    b["cpu_seconds"] = tools - seen.get("amcheck_tool_cpu", 0.0) + seen.get("server_cpu_seconds", 0.0)
    b["cpu_with_amcheck_seconds"] = tools + seen.get("server_cpu_with_amcheck_seconds", 0.0)
    b["total_with_amcheck_seconds"] = b["total_seconds"] + seen.get("amcheck_seconds", 0.0)
    return b


def run(a) -> dict:
    work = Path(tempfile.mkdtemp(prefix="dtr-", dir="/tmp"))
    work.chmod(0o711)
    root = owned(work / "c")
    root.chmod(0o711)
    clusters = work / "drills"
    clusters.mkdir(mode=0o711)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "DRDRILL_"))}
    base["DRDRILL_CLUSTER_ROOT"] = str(clusters)
    srv_env = {**base, "DRDRILL_STATE_DIR": str(work / "srv")}
    source = Source(work, a.jobs)
    servers = {"": Server(srv_env, work / "srv")}
    if a.baseline:  # the same drill on another install's `drdrill server` (e.g. main before a change), same data
        (work / "drills-base").mkdir(mode=0o711)
        servers["base "] = Server({**base, "DRDRILL_STATE_DIR": str(work / "srv-base"), "DRDRILL_CLUSTER_ROOT": str(work / "drills-base")},
                                  work / "srv-base")
    rows = []
    try:
        built = source.build(a.gb, a.wal_mb, a.steps)
        print(f"built: {built['database_bytes'] / 2**20:.0f} MiB database, backup {built['backup']['repo_bytes'] / 2**20:.0f} MiB", flush=True)
        last = source.markers[-1]["at"] + timedelta(milliseconds=500)
        while datetime.now(timezone.utc) <= last:
            time.sleep(0.1)  # allowed: waiting for the clock to pass the recovery target
        variants = {}
        for name, integrity in (("amcheck", ""), ("no-amcheck", "integrity: {{enabled: false}}, ")):
            text = DRILL.replace("restore: {{jobs:", "restore: {{" + integrity + "jobs:").format(config=source.config, target=last.isoformat(), jobs=a.jobs)
            (work / f"{name}.yaml").write_text(text)
            variants[name] = parse_spec(text, str(work / f"{name}.yaml"))
        import bench.server_fixed_cost as sfc

        own = sfc.DRDRILL
        for prefix, server in servers.items():
            sfc.DRDRILL = a.baseline if prefix else own
            server.start()
            asyncio.run(submit(server.state, variants["amcheck"], server.proc.pid))  # warm-up
        sfc.DRDRILL = own
        for i in range(a.runs):
            c0 = cpu_seconds()
            b = bare_amcheck(source, root, last, a.jobs)
            b["machine_cpu_seconds"] = cpu_seconds() - c0
            row = {"run": i + 1, "bare": b, "load_before": load()}
            for name, spec in variants.items():
                if name not in a.variants:
                    continue
                for prefix, server in servers.items():
                    row[prefix + name] = asyncio.run(submit(server.state, spec, server.proc.pid))
            row["load_after"] = load()
            rows.append(row)
            names = [p + n for n in a.variants for p in servers]
            print(json.dumps({"run": i + 1, "bare": round(b["total_seconds"], 2), "bare+amcheck": round(b["total_with_amcheck_seconds"], 2),
                              "bare cpu": round(b["cpu_seconds"], 2), "bare+amcheck cpu": round(b["cpu_with_amcheck_seconds"], 2),
                              **{n: round(row[n]["wall_seconds"], 2) for n in names},
                              **{n + " cpu": round(row[n]["server_tree_cpu_seconds"], 2) for n in names}, "load": row["load_after"]}), flush=True)
            for n in names:
                if n in row and a.verbose:
                    for x in row[n]["activities"]:
                        print(f"  {n}: {x}")
                    for x in row[n]["timeline"]:
                        print(f"  {n}: {x}")
                    print(f"  {n}: restore split {row[n]['restore_seconds']}")
    finally:
        from drdrill.evidence.embedded import embedded_cluster

        for server in servers.values():
            if getattr(server, "proc", None) is not None and server.proc.poll() is None:
                server.stop()
            embedded_cluster(server.state).stop(mode="fast")
        source.prod.destroy()
        shutil.rmtree(work, ignore_errors=True)
    out = {"gb": a.gb, "wal_mb": a.wal_mb, "jobs": a.jobs, "source": built, "rows": rows,
           "bare": summary([r["bare"]["total_seconds"] for r in rows]),
           "bare_amcheck": summary([r["bare"]["total_with_amcheck_seconds"] for r in rows])}
    for n in [p + v for v in a.variants for p in servers]:
        out[n] = summary([r[n]["wall_seconds"] for r in rows if n in r])
        out[n + " cpu"] = summary([r[n]["server_tree_cpu_seconds"] for r in rows if n in r])
    out["bare cpu"] = summary([r["bare"]["cpu_seconds"] for r in rows])
    out["bare_amcheck cpu"] = summary([r["bare"]["cpu_with_amcheck_seconds"] for r in rows])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=0.25)
    ap.add_argument("--wal-mb", type=int, default=128)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--variants", default="amcheck,no-amcheck")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--baseline", default="", help="another install's drdrill executable: its server runs the same drills (before/after)")
    ap.add_argument("--timeout", type=float, default=2400)
    a = ap.parse_args()
    a.variants = a.variants.split(",")
    time_limit(a.timeout)
    out = run(a)
    path = write_result(f"drill_trace_{a.gb:g}gb_{a.wal_mb}mb", out)
    print(json.dumps({k: v["median"] for k, v in out.items() if isinstance(v, dict) and "median" in v}, default=str))
    print(path)


if __name__ == "__main__":
    main()
