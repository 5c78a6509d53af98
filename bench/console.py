"""How fast the web console's pages render with a large evidence store (issue 25): 10,000 runs
recorded the way a worker records them (EvidenceStore.record: the record, its hash-chained events,
an entry signed into the log), 20 drill files, then the Drills page (/) and a run's page
(/runs/ID) fetched over HTTP from uvicorn, with a real Temporal dev server behind the console.

    python -m bench.console --runs 10000 --requests 30

Goal: each page under 300 ms with 10,000 runs in the store.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import time
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg

from bench.common import ADMIN_DSN, OUT, load, summary, time_limit, write_result
from drdrill.evidence.chain import evidence_document
from drdrill.evidence.record import write_evidence_file
from drdrill.evidence.signing import signer
from drdrill.evidence.store import open_store
from tests.evidence_fixtures import sample_result

DRILLS = 20


def drill_files(folder: Path) -> list[str]:
    names = [f"service-{i:02d}" for i in range(DRILLS)]
    for name in names:
        (folder / f"{name}.yaml").write_text(
            f"version: 1\nname: {name}\nobjectives: {{rto: 15m, rpo: 2h}}\ntargets:\n  - {{name: db, provider: sim}}\n"
        )
    return names


def fill(dsn: str, state: Path, names: list[str], runs: int) -> str:
    """Record `runs` runs spread over the drills and two years; the newest run's id."""
    key = signer(state)
    start = datetime(2025, 1, 1, tzinfo=timezone.utc)
    step = timedelta(days=730) / runs
    last = ""
    t0 = time.perf_counter()
    with open_store(dsn) as store:
        for i in range(runs):
            name = names[i % len(names)]
            verdict = "FAILED" if i % 17 == 0 else "PASSED"
            result = sample_result(name, drill_id=f"{name}-{i:05d}-{uuid.uuid4().hex[:4]}", declared=start + step * i, verdict=verdict,
                                   rto=300 + (i % 50) * 11.0, rpo=600 + (i % 30) * 60.0)
            store.record(evidence_document(result), key)
            last = result.drill_id
            if i + 1 == runs:
                write_evidence_file(state, result)
            if (i + 1) % 1000 == 0:
                print(f"  {i + 1} runs recorded ({time.perf_counter() - t0:.0f} s)", flush=True)
    return last


def timed_get(url: str) -> float:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as resp:
        body = resp.read()
        assert resp.status == 200 and body
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--requests", type=int, default=30)
    ap.add_argument("--timeout", type=float, default=3600)
    a = ap.parse_args()
    time_limit(a.timeout)
    load_at_start = load()
    work = OUT / f"console-{uuid.uuid4().hex[:6]}"
    state, drills = work / "state", work / "drills"
    state.mkdir(parents=True)
    drills.mkdir()
    db = f"drdrill_bench_console_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    dsn = ADMIN_DSN.replace("dbname=postgres", f"dbname={db}")
    try:
        names = drill_files(drills)
        t0 = time.perf_counter()
        run_id = fill(dsn, state, names, a.runs)
        fill_seconds = time.perf_counter() - t0
        result = measure(dsn, state, drills, run_id, a.requests)
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        shutil.rmtree(work, ignore_errors=True)
    data = {"runs": a.runs, "drill_files": DRILLS, "requests": a.requests, "fill_seconds": round(fill_seconds, 1), **result,
            "load_at_start": load_at_start}
    path = write_result("console", data)
    for page in ("drills_page", "run_page"):
        s = data[page]
        print(f"{page:<12} median {s['median'] * 1000:6.1f} ms   p95 {s['p95'] * 1000:6.1f} ms   max {s['max'] * 1000:6.1f} ms")
    print(f"recorded {a.runs} runs in {fill_seconds:.0f} s; results in {path}")


def measure(dsn: str, state: Path, drills: Path, run_id: str, requests: int) -> dict:
    """Serve the console (uvicorn, in this process's event loop thread) and time the two pages."""
    import threading

    import uvicorn

    from app.console import ConsoleSettings, create_app
    from app.temporal import DevServer
    from tests.console_harness import free_port
    from worker import connect

    server = DevServer(log_path=str(state / "temporal.log")).start()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        client = asyncio.run_coroutine_threadsafe(connect(server.address), loop).result(60)

        async def connected():
            return client

        settings = ConsoleSettings(state_dir=state, connect=connected, drills_dir=drills, evidence_dsn=dsn, local_user="bench")
        port = free_port()
        web = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="off", proxy_headers=False))
        task = asyncio.run_coroutine_threadsafe(web.serve(), loop)
        deadline = time.monotonic() + 30
        while not web.started and time.monotonic() < deadline:
            time.sleep(0.05)  # allowed: waiting for uvicorn to listen, bounded
        base = f"http://127.0.0.1:{port}"
        out = {}
        for page, url in (("drills_page", base + "/"), ("run_page", f"{base}/runs/{run_id}")):
            for _ in range(3):
                timed_get(url)  # warm: templates compiled, connections open
            times = summary(timed_get(url) for _ in range(requests))
            times["p95"] = times["runs"][min(len(times["runs"]) - 1, int(0.95 * len(times["runs"])))]
            out[page] = times
        web.should_exit = True
        task.result(30)
        return out
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        server.stop()


if __name__ == "__main__":
    main()
