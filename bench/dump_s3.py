"""Benchmark 6: a pg_dump custom archive in S3 (moto_server), drilled as it is.

The whole drill (real Temporal dev server, real worker, PostgresProvider with `source: {s3: ...}`:
throwaway cluster, the object streamed from S3 straight into pg_restore, readiness, a sql check,
teardown, evidence) against what a person would do by hand: boto3 `download_file` of the object,
then a throwaway cluster (LocalCluster, as the drill makes), createdb and a bare `pg_restore -j 2`
of the downloaded file. The archive is written uncompressed (`pg_dump -Fc -Z0`) of a generated
database about 4/3 its size, so that the archive is about the size asked for. Runs alternate (bare, drill, bare, drill, ...) so background load hits both.

    python -m bench.dump_s3 --size 1 --runs 5     # a 1 GiB dump
    python -m bench.dump_s3 --size 0.05 --runs 1  # a quick run
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import boto3
import psycopg
from boto3.s3.transfer import TransferConfig

from app.temporal import DevServer, free_port
from bench import datagen
from bench.common import load, summary, time_limit, write_result
from bench.simdrill import run_passing
from drdrill.providers.spec import parse_spec
from drdrill.providers.postgres.provider import PostgresProvider
from drdrill.localpg.cluster import LocalCluster, tool
from worker import connect, running_worker

BUCKET = "bench-dumps"
KEY = "shop/nightly/bench.dump"
DRILL = """
version: 1
name: bench-dump-s3
objectives: {{rto: 1h, rpo: 30d}}
max_duration: 1h
targets:
  - name: bench
    provider: postgres
    source: {{s3: {{bucket: {bucket}, prefix: shop/nightly/, region: us-east-1, endpoint_url: '{endpoint}'}}, format: custom}}
    restore: {{jobs: {jobs}, timeout: 50m}}
validations:
  - {{type: sql, target: bench, name: rows-present, query: "SELECT count(*) FROM narrow", expect: "> 0"}}
"""


def start_moto(work: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = open(work / "moto.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url + "/moto-api/data.json", timeout=2):
                return proc, url
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("moto_server did not start")
            time.sleep(0.2)  # allowed: polling for the moto_server subprocess to listen


def bare_restore(s3, root: Path, work: Path, jobs: int) -> dict:
    """boto3 download_file, then a throwaway cluster, createdb and pg_restore -j N of the file."""
    local = work / f"download-{uuid.uuid4().hex[:6]}.dump"
    t0 = time.perf_counter()
    s3.download_file(BUCKET, KEY, str(local), Config=TransferConfig(max_concurrency=4))
    t1 = time.perf_counter()
    cluster = LocalCluster(root / f"bare-{uuid.uuid4().hex[:6]}")
    cluster.create({"drdrill:bench": "bare"})
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE bench TEMPLATE template0")
        conn.execute("DO $$BEGIN CREATE ROLE postgres NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END$$")
    t2 = time.perf_counter()
    proc = subprocess.run([tool("pg_restore"), "-j", str(jobs), "-d", cluster.dsn("bench"), str(local)], capture_output=True, text=True)
    t3 = time.perf_counter()
    cluster.destroy()
    local.unlink()
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    # The same object fetched with one GET (as the drill reads it), for a fair second baseline:
    # download_file splits it into ranged GETs, which an S3 stand-in may serve slower than one.
    t4 = time.perf_counter()
    body = s3.get_object(Bucket=BUCKET, Key=KEY)["Body"]
    with open(local, "wb") as out:
        while chunk := body.read(1 << 20):
            out.write(chunk)
    single_get = time.perf_counter() - t4
    local.unlink()
    return {"download_seconds": t1 - t0, "cluster_seconds": t2 - t1, "pg_restore_seconds": t3 - t2, "total_seconds": t3 - t0,
            "single_get_seconds": single_get, "single_get_total_seconds": single_get + (t3 - t1)}


async def drill_once(client, queue: str, spec) -> dict:
    drill_id = f"bench-dump-s3-{uuid.uuid4().hex[:6]}"
    wall, result = await run_passing(client, queue, spec, drill_id)
    restore_end = max(e.ended for e in result.timeline if e.phase == "restore" and e.target is None)
    restored = result.restored[0]
    return {
        "wall_seconds": wall,
        "declared_to_ready_seconds": (restore_end - result.declared).total_seconds(),
        "rto_seconds": result.rto_seconds,
        "restore_seconds_inside_drill": restored.details.get("seconds"),
        "tool": restored.details.get("tool"),
        "findings": [f.code for f in result.findings],
    }


TABLES_PER_ARCHIVE_GIB = 1 / 0.75  # a -Z0 custom archive of datagen's tables is about 3/4 of their size


async def run(a) -> dict:
    gb = round(a.size * TABLES_PER_ARCHIVE_GIB, 2)
    existed = datagen.exists(gb)
    dsn = datagen.generate(gb)
    work = Path(tempfile.mkdtemp(prefix="drs3-", dir="/tmp"))
    root = work / "c"
    root.mkdir()
    root.chmod(0o711)
    work.chmod(0o711)
    archive = work / "bench.dump"
    t0 = time.perf_counter()
    subprocess.run([tool("pg_dump"), "-Fc", "-Z0", "-f", str(archive), "-d", dsn], check=True)
    size = archive.stat().st_size
    print(f"pg_dump {time.perf_counter() - t0:.1f}s, archive {size / 2**20:.0f} MiB", flush=True)
    moto, endpoint = start_moto(work)
    server = DevServer(log_path=str(work / "temporal.log")).start()
    # Evidence goes to a database of its own on the machine's PostgreSQL, as in the tests (the
    # embedded store would live under this benchmark's cluster root).
    evidence_db = f"drdrill_bench_evidence_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(datagen.ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{evidence_db}"')
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "DRDRILL_EVIDENCE_DSN")}
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "DRDRILL_EVIDENCE_DSN": datagen.ADMIN_DSN.replace("dbname=postgres", f"dbname={evidence_db}")})
    bare, drills, loads = [], [], []
    try:
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        s3.upload_file(str(archive), BUCKET, KEY)
        archive.unlink()
        spec = parse_spec(DRILL.format(bucket=BUCKET, endpoint=endpoint, jobs=a.jobs), "<bench>")
        client = await connect(server.address)
        queue = f"bench-{uuid.uuid4().hex[:6]}"
        async with running_worker(client, task_queue_name=queue, providers={"postgres": PostgresProvider(root=str(root))}, state_dir=str(work / "state")):
            for i in range(a.runs):
                b = await asyncio.to_thread(bare_restore, s3, root, work, a.jobs)
                bare.append(b)
                print(f"run {i + 1} bare: {b['total_seconds']:.1f}s (download_file {b['download_seconds']:.1f}s, cluster {b['cluster_seconds']:.1f}s, "
                      f"pg_restore -j {a.jobs} {b['pg_restore_seconds']:.1f}s; one GET {b['single_get_seconds']:.1f}s) load {load()}", flush=True)
                d = await drill_once(client, queue, spec)
                drills.append(d)
                print(f"run {i + 1} drill: RTO {d['rto_seconds']:.1f}s, declared->ready {d['declared_to_ready_seconds']:.1f}s, "
                      f"{d['tool']} {d['restore_seconds_inside_drill']:.1f}s, findings {d['findings']} load {load()}", flush=True)
                loads.append(load())
    finally:
        server.stop()
        moto.terminate()
        moto.wait()
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        shutil.rmtree(work, ignore_errors=True)
        with psycopg.connect(datagen.ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{evidence_db}" WITH (FORCE)')
        if not existed and not a.keep_db:
            datagen.drop(gb)
    med = lambda key, rows: summary([r[key] for r in rows])  # noqa: E731
    out = {
        "size_gib_asked": a.size, "archive_bytes": size, "jobs": a.jobs, "runs": a.runs,
        "bare": {k: med(k, bare) for k in ("download_seconds", "cluster_seconds", "pg_restore_seconds", "total_seconds",
                                           "single_get_seconds", "single_get_total_seconds")},
        "drill": {k: med(k, drills) for k in ("wall_seconds", "declared_to_ready_seconds", "rto_seconds", "restore_seconds_inside_drill")},
        "drill_tool": drills[0]["tool"] if drills else None,
        "drill_findings": drills[0]["findings"] if drills else None,
        "loads": loads,
    }
    out["rto_vs_download_plus_restore"] = out["drill"]["rto_seconds"]["median"] / out["bare"]["total_seconds"]["median"]
    out["rto_vs_single_get_plus_restore"] = out["drill"]["rto_seconds"]["median"] / out["bare"]["single_get_total_seconds"]["median"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=float, default=1.0, help="GiB of the dump (-Fc -Z0 of a generated database)")
    ap.add_argument("--keep-db", action="store_true", help="keep the generated database")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=3600)
    a = ap.parse_args()
    time_limit(a.timeout)
    out = asyncio.run(run(a))
    path = write_result(f"dump_s3_{str(a.size).replace('.', '_')}gib", out)
    print({k: round(out[k], 3) for k in ("rto_vs_download_plus_restore", "rto_vs_single_get_plus_restore")})
    print(path)


if __name__ == "__main__":
    main()
