"""Benchmark: what signing the evidence costs.

Records N sample runs (a complete DrillResult each: 11 events) into a fresh evidence database on
the machine's PostgreSQL with `record_run` (what the record_evidence activity does: store, signed
log entry, evidence.json, report.html, junit.xml), then verifies the whole signed log N times less
often. Reports: one Ed25519 signature, one record_run, and one verification of the signed log of
N runs (signatures, chain, record hashes).

    python -m bench.evidence_signing --runs 200
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

from bench.common import ADMIN_DSN, summary, time_limit, write_result
from drdrill.evidence.record import record_run
from drdrill.evidence.signing import FileSigner, trusted_keys
from drdrill.evidence.store import open_store
from tests.evidence_fixtures import sample_result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--verifications", type=int, default=5)
    args = ap.parse_args()
    time_limit(600)
    name = f"drdrill_bench_sign_{uuid.uuid4().hex[:6]}"
    state = Path(tempfile.mkdtemp(prefix="drdrill-bench-sign-"))
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = ADMIN_DSN.replace("dbname=postgres", f"dbname={name}")
    try:
        key = FileSigner(state / "evidence-signing-key.pem")
        payload = b"x" * 400  # about the size of a log entry
        signs = []
        for _ in range(1000):
            t0 = time.perf_counter()
            key.sign(payload)
            signs.append(time.perf_counter() - t0)
        records = []
        for i in range(args.runs):
            result = sample_result(f"bench{i % 10}")
            t0 = time.perf_counter()
            record_run(state, result, dsn=dsn)
            records.append(time.perf_counter() - t0)
        trusted = trusted_keys(state)
        verifies = []
        with open_store(dsn) as store:
            for _ in range(args.verifications):
                t0 = time.perf_counter()
                check = store.verify_log(trusted)
                verifies.append(time.perf_counter() - t0)
                assert check.ok, check.message
        data = {"runs": args.runs, "sign_seconds": summary(signs), "record_run_seconds": summary(records),
                "verify_log_seconds": summary(verifies)}
        path = write_result("evidence_signing", data)
        print(f"sign {data['sign_seconds']['median'] * 1e6:.0f} µs; record_run {data['record_run_seconds']['median'] * 1e3:.1f} ms; "
              f"verify the log of {args.runs} runs {data['verify_log_seconds']['median'] * 1e3:.0f} ms  ({path})")
    finally:
        shutil.rmtree(state, ignore_errors=True)
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
