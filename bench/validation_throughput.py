"""Benchmark 4: data validation throughput.

drdrill's checksum validation (drdrill/validation/data.py check_checksum: per table count(*) and
sum(hashtextextended(row::text, 0)), tables in parallel connections) on a generated database,
against (a) `pg_dump | sha256sum`, the common alternative, and (b) the physical limit, a parallel
sequential scan (SELECT count(*) per table, same connections). Throughput = bytes of table data
(heap + TOAST, from pg_table_size) / wall seconds. Warm page cache for every method alike.

    python -m bench.validation_throughput --gb 1 --runs 5
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import datetime, timezone

import psycopg
from psycopg import sql

from drdrill.core.models import RecoveryPoint, RestoredResource
from drdrill.localpg.data import fingerprints_parallel, list_tables, table_ident
from drdrill.localpg.cluster import tool
from drdrill.providers.postgres.backup import libpq_env
from drdrill.providers.activity_io import ValidateInput
from drdrill.validation.run import run_validation
from bench import datagen
from bench.common import load, sh, summary, time_limit, write_result
from drdrill.providers.spec import parse_spec


def checksum_input(dsn: str, manifest_tables: dict) -> ValidateInput:
    spec = parse_spec(
        "version: 1\nname: bench-checksum\nobjectives: {rto: 1h, rpo: 1d}\n"
        "targets: [{name: db, provider: postgres, source: {repository: /nonexistent}}]\n"
        "validations: [{type: checksum, target: db, timeout: 30m}]\n",
        "<bench>",
    )
    now = datetime.now(timezone.utc)
    return ValidateInput(
        validation=spec.validations[0],
        name="checksum",
        resource=RestoredResource(target="db", provider="postgres", id="bench", endpoint={"dsn": dsn}, ready=True),
        point=RecoveryPoint(target="db", provider="postgres", id="bench", consistent_time=now, metadata={"manifest": {"tables": manifest_tables}}),
        declared=now,
        rpo_objective_seconds=86400,
    )


def run_checksum(inp: ValidateInput) -> float:
    t0 = time.perf_counter()
    res = run_validation(inp)
    dt = time.perf_counter() - t0
    assert res.outcome == "PASSED", res.detail
    return dt


def run_pg_dump_sha(dsn: str) -> float:
    t0 = time.perf_counter()
    sh(f"{tool('pg_dump')} | sha256sum", env=libpq_env(dsn), timeout=1800)
    return time.perf_counter() - t0


def run_count_scan(dsn: str, tables: list[str], workers: int) -> float:
    def connect():
        conn = psycopg.connect(dsn, autocommit=True)
        conn.execute("SET enable_indexonlyscan = off")  # a heap scan, not the primary key's index
        return conn

    def one(conn, t):
        return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table_ident(t))).fetchone()[0]

    # Same scheduling as the checksum: tables spread over `workers` connections.
    from concurrent.futures import ThreadPoolExecutor

    n = max(1, min(workers, len(tables)))
    chunks = [tables[i::n] for i in range(n)]
    t0 = time.perf_counter()

    def work(chunk):
        with connect() as conn:
            return [one(conn, t) for t in chunk]

    with ThreadPoolExecutor(n) as pool:
        list(pool.map(work, chunks))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=2400)
    ap.add_argument("--keep", action="store_true", help="keep the generated database (benchmark 5 reuses it)")
    ap.add_argument("--methods", default="checksum,count,pg_dump", help="also: checksum_text (the check before the record hash)")
    a = ap.parse_args()
    time_limit(a.timeout)
    dsn = datagen.generate(a.gb)
    nbytes = datagen.table_bytes(a.gb)
    with psycopg.connect(dsn) as conn:
        tables = list_tables(conn)
    workers = int(os.environ.get("DRDRILL_CHECKSUM_WORKERS", "4"))
    # The manifest the check compares with: the same fingerprint, computed once up front (this also warms the cache).
    manifest = fingerprints_parallel(lambda: psycopg.connect(dsn, autocommit=True), tables, workers=workers)
    inp = checksum_input(dsn, manifest)
    # The check as it was before the "record" hash (every table hashed as text): for comparison.
    text_manifest = fingerprints_parallel(lambda: psycopg.connect(dsn, autocommit=True), tables, workers=workers,
                                          methods={t: "text" for t in tables}) if "checksum_text" in a.methods else {}
    inp_text = checksum_input(dsn, text_manifest)
    methods = a.methods.split(",")
    times: dict[str, list[float]] = {m: [] for m in methods}
    loads = []
    for i in range(a.runs):  # interleaved, so background load hits every method alike
        for m in methods:
            if m == "checksum":
                times[m].append(run_checksum(inp))
            elif m == "checksum_text":
                times[m].append(run_checksum(inp_text))
            elif m == "count":
                times[m].append(run_count_scan(dsn, tables, workers))
            elif m == "pg_dump":
                times[m].append(run_pg_dump_sha(dsn))
            print(f"run {i + 1} {m}: {times[m][-1]:.2f}s  load {load()}", flush=True)
        loads.append(load())
    res = {m: {**summary(ts), "mb_per_s": nbytes / 2**20 / summary(ts)["median"]} for m, ts in times.items()}
    out = {"gb": a.gb, "database": datagen.dbname(a.gb), "table_bytes": nbytes, "tables": len(tables), "workers": workers,
           "cache": "warm", "results": res, "loads": loads}
    if "checksum" in res and "pg_dump" in res:
        out["speedup_vs_pg_dump"] = res["pg_dump"]["median"] / res["checksum"]["median"]
    if "checksum" in res and "count" in res:
        out["fraction_of_scan"] = res["count"]["median"] / res["checksum"]["median"]
    path = write_result(f"validation_throughput_{datagen.dbname(a.gb)}", out)
    for m, r in res.items():
        print(f"{m:9s} median {r['median']:.2f}s  {r['mb_per_s']:.0f} MiB/s  runs {[round(x, 2) for x in r['runs']]}")
    for k in ("speedup_vs_pg_dump", "fraction_of_scan"):
        if k in out:
            print(f"{k}: {out[k]:.2f}")
    print(path)
    if not a.keep and os.environ.get("DRDRILL_BENCH_KEEP_DB") != "1":
        pass  # run_all drops databases at the very end (benchmark 5 reuses this one)


if __name__ == "__main__":
    main()
