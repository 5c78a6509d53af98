"""Benchmark 5: restore RTO, PostgreSQL.

The whole postgres drill (real Temporal dev server, real worker, PostgresProvider: throwaway
cluster, archive sha256, pg_restore -j, readiness, checksum + sql validations, teardown, evidence)
on a generated database, against a hand-run restore of the same archive: initdb + start of an
equivalent throwaway cluster (drdrill/localpg/cluster.py LocalCluster), createdb, `pg_restore -j N`.
Runs alternate (bare, drill, bare, drill, ...) so background load hits both alike.

    python -m bench.restore_rto --gb 1 --runs 5 --jobs 2

With --sandbox, the cost of the restore sandbox (drdrill/localpg/sandbox.py) alone: the
constant (bubblewrap starting /bin/true, as every sandboxed tool pays it), and the same restore
(cluster created and started, pg_restore -j N) on the old direct path against the sandboxed one,
alternating; no Temporal, no checks.

    python -m bench.restore_rto --sandbox --gb 0.15 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

from app.temporal import DevServer
from bench import datagen
from bench.common import load, summary, time_limit, write_result
from bench.simdrill import run_passing
from drdrill.providers.spec import parse_spec
from drdrill.providers.postgres.provider import PostgresProvider
from drdrill.providers.postgres.backup import take_backup
from drdrill.localpg.cluster import LocalCluster, tool
from drdrill.localpg.sandbox import Inputs
from worker import connect, running_worker

DRILL = """
version: 1
name: bench-restore
objectives: {{rto: 1h, rpo: 1d}}
max_duration: 30m
targets:
  - name: bench
    provider: postgres
    source: {{repository: {repo}}}
    restore: {{jobs: {jobs}, timeout: 20m}}
validations:
  - {{type: checksum, target: bench, name: tables-match, timeout: 20m}}
  - {{type: sql, target: bench, name: rows-present, query: "SELECT count(*) FROM narrow", expect: "> 0"}}
"""


def bare_restore(root: Path, archive: Path, jobs: int) -> dict:
    cluster = LocalCluster(root / f"bare-{uuid.uuid4().hex[:6]}")
    t0 = time.perf_counter()
    cluster.create({"drdrill:bench": "bare"})
    t1 = time.perf_counter()
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE bench TEMPLATE template0")
    globals_sql = archive.parent / "globals.sql"  # roles, as the drill applies them (pg_dump does not carry them)
    if globals_sql.exists():
        subprocess.run([tool("psql"), "-X", "-q", "-d", cluster.dsn("bench"), "-f", str(globals_sql)], capture_output=True, text=True)
    proc = subprocess.run([tool("pg_restore"), "-j", str(jobs), "-d", cluster.dsn("bench"), str(archive)], capture_output=True, text=True)
    t2 = time.perf_counter()
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    cluster.destroy()
    return {"cluster_seconds": t1 - t0, "pg_restore_seconds": t2 - t1, "total_seconds": t2 - t0}


def sandboxed_restore(root: Path, archive: Path, jobs: int) -> dict:
    """bare_restore's steps, as a drill now takes them: the cluster and pg_restore in the sandbox."""
    cluster = LocalCluster(root / f"sbx-{uuid.uuid4().hex[:6]}", sandboxed=True)
    t0 = time.perf_counter()
    cluster.create({"drdrill:bench": "sandboxed"})
    t1 = time.perf_counter()
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE bench TEMPLATE template0")
    box = cluster.sandbox()
    globals_sql = archive.parent / "globals.sql"
    with Inputs(cluster.path, box.identity) as inputs:
        if globals_sql.exists():
            box.run([tool("psql"), "-X", "-q", "-d", cluster.dsn("bench"), "-f", inputs.path(globals_sql)], pass_fds=inputs.fds)
        proc = box.run([tool("pg_restore"), "-j", str(jobs), "-d", cluster.dsn("bench"), inputs.path(archive)], pass_fds=inputs.fds)
    t2 = time.perf_counter()
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    cluster.destroy()
    return {"cluster_seconds": t1 - t0, "pg_restore_seconds": t2 - t1, "total_seconds": t2 - t0}


def bwrap_constant(root: Path, runs: int = 20) -> dict:
    """What starting one sandboxed process costs: bubblewrap (and setpriv) around /bin/true."""
    cluster = LocalCluster(root / f"sbx-{uuid.uuid4().hex[:6]}", sandboxed=True)
    cluster.claim({"drdrill:bench": "bwrap"})
    cluster.sock.mkdir(mode=0o700)
    box = cluster.sandbox()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        box.run(["/bin/true"])
        times.append(time.perf_counter() - t0)
    cluster.destroy()
    return summary(times)


def run_sandbox(a) -> dict:
    dsn = datagen.generate(a.gb)
    work = Path(tempfile.mkdtemp(prefix="drb-", dir="/tmp"))
    root = work / "c"
    root.mkdir()
    root.chmod(0o711)
    work.chmod(0o711)
    try:
        point = take_backup(dsn, work / "repo", jobs=a.jobs)
        archive = point / "archive.dump"
        print(f"archive {archive.stat().st_size / 2**20:.0f} MiB", flush=True)
        constant = bwrap_constant(root)
        print(f"bwrap /bin/true: median {constant['median'] * 1000:.1f} ms", flush=True)
        direct, boxed = [], []
        for i in range(a.runs):
            direct.append(bare_restore(root, archive, a.jobs))
            boxed.append(sandboxed_restore(root, archive, a.jobs))
            print(f"run {i + 1}: direct {direct[-1]['total_seconds']:.2f}s, sandboxed {boxed[-1]['total_seconds']:.2f}s load {load()}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = lambda key, rows: summary([r[key] for r in rows])  # noqa: E731
    out = {
        "gb": a.gb, "jobs": a.jobs, "archive_mib": archive.stat().st_size / 2**20 if archive.exists() else None,
        "bwrap_true_seconds": constant,
        "direct": {k: med(k, direct) for k in ("cluster_seconds", "pg_restore_seconds", "total_seconds")},
        "sandboxed": {k: med(k, boxed) for k in ("cluster_seconds", "pg_restore_seconds", "total_seconds")},
    }
    d, b = out["direct"]["total_seconds"]["median"], out["sandboxed"]["total_seconds"]["median"]
    out["sandbox_overhead_seconds"] = b - d
    out["sandbox_overhead_ratio"] = b / d - 1
    return out


async def drill_once(client, queue: str, spec) -> dict:
    drill_id = f"bench-restore-{uuid.uuid4().hex[:6]}"
    wall, result = await run_passing(client, queue, spec, drill_id)
    phases = {}
    for e in result.timeline:
        if e.target is None and e.phase != "declared":
            phases[e.phase] = (e.ended - e.started).total_seconds()
    restore_end = max(e.ended for e in result.timeline if e.phase == "restore" and e.target is None)
    restored = result.restored[0]
    return {
        "wall_seconds": wall,
        "declared_to_ready_seconds": (restore_end - result.declared).total_seconds(),
        "rto_seconds": result.rto_seconds,
        "pg_restore_seconds_inside_drill": restored.details.get("seconds"),
        "phases": phases,
    }


async def run(a) -> dict:
    dsn = datagen.generate(a.gb)
    work = Path(tempfile.mkdtemp(prefix="drb-", dir="/tmp"))
    root = work / "c"
    root.mkdir()
    root.chmod(0o711)
    work.chmod(0o711)
    repo = work / "repo"
    t0 = time.perf_counter()
    point = take_backup(dsn, repo, jobs=a.jobs)
    backup_seconds = time.perf_counter() - t0
    archive = point / "archive.dump"
    print(f"backup {backup_seconds:.1f}s, archive {archive.stat().st_size / 2**20:.0f} MiB", flush=True)
    spec = parse_spec(DRILL.format(repo=repo, jobs=a.jobs), "<bench>")
    server = DevServer(log_path=str(work / "temporal.log")).start()
    bare, drills, loads = [], [], []
    try:
        client = await connect(server.address)
        queue = f"bench-{uuid.uuid4().hex[:6]}"
        async with running_worker(client, task_queue_name=queue, providers={"postgres": PostgresProvider(root=str(root))}, state_dir=str(work / "state")):
            for i in range(a.runs):
                b = await asyncio.to_thread(bare_restore, root, archive, a.jobs)
                bare.append(b)
                print(f"run {i + 1} bare: {b['total_seconds']:.1f}s (cluster {b['cluster_seconds']:.1f}s, pg_restore {b['pg_restore_seconds']:.1f}s) load {load()}", flush=True)
                d = await drill_once(client, queue, spec)
                drills.append(d)
                print(f"run {i + 1} drill: {d['wall_seconds']:.1f}s, declared->ready {d['declared_to_ready_seconds']:.1f}s, RTO {d['rto_seconds']:.1f}s, phases { {k: round(v, 1) for k, v in d['phases'].items()} } load {load()}", flush=True)
                loads.append(load())
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    med = lambda key, rows: summary([r[key] for r in rows])  # noqa: E731
    out = {
        "gb": a.gb, "jobs": a.jobs,
        "backup_seconds": backup_seconds,
        "bare": {k: med(k, bare) for k in ("cluster_seconds", "pg_restore_seconds", "total_seconds")},
        "drill": {k: med(k, drills) for k in ("wall_seconds", "declared_to_ready_seconds", "rto_seconds", "pg_restore_seconds_inside_drill")},
        "drill_phases": {p: summary([d["phases"].get(p, 0.0) for d in drills]) for p in drills[0]["phases"]} if drills else {},
        "loads": loads,
    }
    bt = out["bare"]["total_seconds"]["median"]
    out["overhead_to_ready_vs_bare"] = out["drill"]["declared_to_ready_seconds"]["median"] / bt - 1
    out["overhead_rto_vs_bare"] = out["drill"]["rto_seconds"]["median"] / bt - 1
    out["overhead_wall_vs_bare"] = out["drill"]["wall_seconds"]["median"] / bt - 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=3000)
    ap.add_argument("--sandbox", action="store_true", help="only the restore sandbox's cost: direct vs sandboxed")
    a = ap.parse_args()
    time_limit(a.timeout)
    if a.sandbox:
        out = run_sandbox(a)
        path = write_result(f"restore_sandbox_{datagen.dbname(a.gb)}", out)
        print({k: v for k, v in out.items() if k.startswith("sandbox_overhead")})
        print(path)
        return
    out = asyncio.run(run(a))
    path = write_result(f"restore_rto_{datagen.dbname(a.gb)}", out)
    print({k: v for k, v in out.items() if k.startswith("overhead")})
    print(path)


if __name__ == "__main__":
    main()
