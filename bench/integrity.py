"""Benchmark: the cost of proving the restored data sound (drdrill/providers/postgres/integrity.py,
dumpmanifest.py), on a pgbench database.

- amcheck against restore: a sandboxed throwaway cluster (as a drill makes it) restored with
  `pg_restore -j N`, then `run_amcheck` (pg_amcheck --heapallindexed --jobs N, in the sandbox);
- `drdrill dump -Fc` against a bare `pg_dump -Fc` of the same database, alternating run by run;
- the manifest's bytes.

    python -m bench.integrity --scale 10 --runs 3 --jobs 2     # pgbench scale 10: ~150 MiB

The issue asks for 1 GiB (scale ~70); on the shared 2-core machine this ran on, runs were kept
under two minutes each, so the figures in bench/RESULTS.md are for scale 10 (~150 MiB).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

from bench.common import ADMIN_DSN, load, summary, time_limit, write_result
from drdrill.localpg.cluster import LocalCluster, tool
from drdrill.providers.postgres.integrity import run_amcheck
from drdrill.localpg.sandbox import Inputs

DRDRILL = str(Path(sys.executable).parent / "drdrill")


def database(scale: int) -> str:
    """A pgbench database of `scale` on the admin server, made once and reused."""
    name = f"drdrill_bench_pgbench_s{scale}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            conn.execute(f'CREATE DATABASE "{name}"')
            made = True
        else:
            made = False
    dsn = ADMIN_DSN.replace("dbname=postgres", f"dbname={name}")
    if made:
        subprocess.run([tool("pgbench"), "-i", "-q", "-s", str(scale), "-d", dsn], check=True, capture_output=True)
    return dsn


def size_mib(dsn: str) -> float:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT pg_database_size(current_database())").fetchone()[0] / 2**20


def timed(argv: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]}: {proc.stderr.strip()}")
    return time.perf_counter() - t0


def restore_and_check(root: Path, archive: Path, jobs: int) -> dict:
    cluster = LocalCluster(root / f"sbx-{uuid.uuid4().hex[:6]}", sandboxed=True)
    try:
        cluster.create({"drdrill:bench": "integrity"})
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench TEMPLATE template0")
        box = cluster.sandbox()
        t0 = time.perf_counter()
        with Inputs(cluster.path, box.identity) as inputs:
            proc = box.run([tool("pg_restore"), "-j", str(jobs), "--no-owner", "-d", cluster.dsn("bench"), inputs.path(archive)], pass_fds=inputs.fds)
        restore = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr)
        t1 = time.perf_counter()
        run = run_amcheck(cluster.dsn("bench"), cluster, jobs, time.monotonic() + 600, "bench")
        amcheck = time.perf_counter() - t1
        if run.problems or run.not_checked or run.unavailable or run.failed:
            raise RuntimeError(f"amcheck did not check everything cleanly: {run.as_details()}")
        return {"restore_seconds": restore, "amcheck_seconds": amcheck, "relations": len(run.checked)}
    finally:
        cluster.destroy()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--keep-db", action="store_true", help="keep the pgbench database for the next run")
    a = ap.parse_args()
    time_limit(a.timeout)
    dsn = database(a.scale)
    mib = size_mib(dsn)
    print(f"pgbench scale {a.scale}: {mib:.0f} MiB", flush=True)
    work = Path(tempfile.mkdtemp(prefix="drb-int-", dir="/tmp"))
    work.chmod(0o711)
    root = work / "c"
    root.mkdir(mode=0o711)
    bare, dumped, checks, manifest_bytes = [], [], [], 0
    try:
        for i in range(a.runs):
            plain, ours = work / "bare.dump", work / "ours.dump"
            bare.append(timed([tool("pg_dump"), "-Fc", "-f", str(plain), "-d", dsn]))
            dumped.append(timed([DRDRILL, "dump", "-Fc", "-f", str(ours), "-d", dsn]))
            manifest = ours.with_name(ours.name + ".manifest.json")
            manifest_bytes = manifest.stat().st_size
            ranges = {t: len(v.get("ranges") or {}) for t, v in json.loads(manifest.read_text())["tables"].items()}
            checks.append(restore_and_check(root, ours, a.jobs))
            print(f"run {i + 1}: pg_dump {bare[-1]:.2f}s, drdrill dump {dumped[-1]:.2f}s, restore {checks[-1]['restore_seconds']:.2f}s, "
                  f"amcheck {checks[-1]['amcheck_seconds']:.2f}s, load {load()}", flush=True)
        archive_mib = ours.stat().st_size / 2**20
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not a.keep_db:
            with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "drdrill_bench_pgbench_s{a.scale}" WITH (FORCE)')
    out = {
        "scale": a.scale, "database_mib": mib, "archive_mib": archive_mib, "jobs": a.jobs,
        "pg_dump_seconds": summary(bare), "drdrill_dump_seconds": summary(dumped),
        "restore_seconds": summary([c["restore_seconds"] for c in checks]),
        "amcheck_seconds": summary([c["amcheck_seconds"] for c in checks]),
        "relations_checked": checks[-1]["relations"], "manifest_bytes": manifest_bytes, "ranges_per_table": ranges,
    }
    out["dump_ratio"] = out["drdrill_dump_seconds"]["median"] / out["pg_dump_seconds"]["median"]
    out["amcheck_over_restore"] = out["amcheck_seconds"]["median"] / out["restore_seconds"]["median"]
    out["manifest_bytes_per_gib"] = manifest_bytes / (mib / 1024)
    path = write_result(f"integrity_pgbench_s{a.scale}", out)
    print({k: out[k] for k in ("dump_ratio", "amcheck_over_restore", "manifest_bytes", "manifest_bytes_per_gib")})
    print(path)


if __name__ == "__main__":
    main()
