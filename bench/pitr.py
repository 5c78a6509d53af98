"""Benchmark 6: point-in-time recovery RTO, pgBackRest.

A source cluster (LocalCluster) archiving WAL into a pgBackRest stanza: a generated database of
--gb, a full backup, then --wal-mb of WAL written by updates in --steps chunks, a marker row (with
its time) after each chunk; production is then stopped. Compared, interleaved (bare, drill, ...):

- bare: what an operator types: `pgbackrest restore --type=time --target=<last marker + 0.5 s>
  --target-action=promote --archive-mode=off`, `pg_ctl start` on a private socket, and polling
  `pg_is_in_recovery()` until recovery has ended;
- drill: the whole drill through a real dev server and worker (find the backup, isolate, restore,
  replay through drdrill's WAL spool, promote, the isolation questions, a boundary and an sql check,
  teardown, evidence).

Then how replay grows with WAL: bare recoveries to each marker in turn (1 run each).

    python -m bench.pitr --gb 1 --wal-mb 512 --steps 4 --runs 5
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

import psycopg

from app.temporal import DevServer
from bench.common import load, summary, time_limit, write_result
from bench.simdrill import run_passing
from drdrill.providers.spec import parse_spec
from drdrill.providers.postgres.provider import PostgresProvider
from drdrill.localpg.cluster import LocalCluster, run_user
from drdrill.localpg.recovered import server_pid
from worker import connect, running_worker

DRILL = """
version: 1
name: bench-pitr
objectives: {{rto: 1h, rpo: 1d}}
max_duration: 1h
targets:
  - name: bench
    provider: postgres
    source: {{database: bench, pgbackrest: {{stanza: main, config: {config}, user: drdrill}}}}
    recovery_point: {{rule: at, at: '{target}'}}
    restore: {{jobs: {jobs}, timeout: 45m}}
validations:
  - {{name: boundary, type: boundary, target: bench, table: markers, column: at, max_gap: 10m}}
  - {{name: rows-present, type: sql, target: bench, query: "SELECT count(*) > 0 FROM big", expect: "== true"}}
"""


def ids() -> dict:
    user = run_user()
    return {"user": user.pw_uid, "group": user.pw_gid} if user else {}


def owned(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    user = run_user()
    if user is not None:
        os.chown(path, user.pw_uid, user.pw_gid)
    return path


class Source:
    """The production cluster, its stanza, its backup and the WAL after it."""

    def __init__(self, work: Path, jobs: int):
        self.home = owned(work / "pgbr")
        for d in ("repo", "lock", "log"):
            owned(self.home / d)
        self.config = self.home / "pgbackrest.conf"
        self.prod = LocalCluster(work / "c" / "prod")
        self.config.write_text(
            f"[global]\nrepo1-path={self.home / 'repo'}\nrepo1-retention-full=9\nlock-path={self.home / 'lock'}\n"
            f"log-path={self.home / 'log'}\nlog-level-file=off\nstart-fast=y\ncompress-type=lz4\nprocess-max={jobs}\n"
            f"[main]\npg1-path={self.prod.data}\npg1-socket-path={self.prod.sock}\npg1-port=5432\npg1-user=drdrill\n"
        )
        os.chmod(self.config, 0o644)
        self.markers: list[dict] = []

    def pgbackrest(self, *args: str, as_server: bool = True) -> str:
        proc = subprocess.run(
            ["pgbackrest", f"--config={self.config}", "--stanza=main", *args], capture_output=True, text=True, **(ids() if as_server else {})
        )
        if proc.returncode != 0:
            raise RuntimeError(f"pgbackrest {args}: {proc.stderr or proc.stdout}")
        return proc.stdout

    def build(self, gb: float, wal_mb: int, steps: int) -> dict:
        t0 = time.perf_counter()
        self.prod.create(
            {"drdrill:bench": "pitr source"},
            settings={
                "wal_level": "replica", "archive_mode": "on", "max_wal_senders": "4", "checkpoint_timeout": "30min",
                "archive_command": f"'pgbackrest --config={self.config} --stanza=main archive-push %p'",
            },
        )
        with psycopg.connect(self.prod.dsn(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench")
        dsn = self.prod.dsn("bench")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE big (id bigint PRIMARY KEY, payload text, at timestamptz DEFAULT now())")
            conn.execute("CREATE TABLE markers (id serial PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp(), lsn pg_lsn)")
            batch, n = 500_000, 0
            while conn.execute("SELECT pg_database_size('bench')").fetchone()[0] < gb * 2**30:
                conn.execute(
                    "INSERT INTO big (id, payload) SELECT g, md5(g::text) || md5((g * 7)::text) || md5((g * 13)::text) "
                    "FROM generate_series(%s, %s) g", (n + 1, n + batch),
                )
                n += batch
            size = conn.execute("SELECT pg_database_size('bench')").fetchone()[0]
            self.rows = n
        generated = time.perf_counter() - t0
        self.pgbackrest("stanza-create")
        t1 = time.perf_counter()
        self.pgbackrest("backup", "--type=full")
        backup_seconds = time.perf_counter() - t1
        info = json.loads(self.pgbackrest("info", "--output=json"))[0]["backup"][-1]
        t2 = time.perf_counter()
        with psycopg.connect(dsn, autocommit=True) as conn:
            start = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
            per_step = wal_mb * 2**20 / steps
            chunk, step_rows = 0, max(1000, n // 200)
            for _ in range(steps):
                begin = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
                while conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (begin,)).fetchone()[0] < per_step:
                    lo = (chunk * step_rows) % n
                    conn.execute("UPDATE big SET payload = md5(payload), at = now() WHERE id > %s AND id <= %s", (lo, lo + step_rows))
                    chunk += 1
                at, lsn = conn.execute("INSERT INTO markers (lsn) VALUES (pg_current_wal_lsn()) RETURNING at, lsn").fetchone()
                wal = conn.execute("SELECT pg_wal_lsn_diff(%s, %s)", (lsn, start)).fetchone()[0]
                self.markers.append({"at": at, "wal_bytes": int(wal)})
            time.sleep(1)  # allowed: a commit one second after the last marker, so recovery to the marker + 0.5 s has one to stop before
            conn.execute("INSERT INTO markers (lsn) VALUES (pg_current_wal_lsn())")
            segment = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
            while (conn.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()[0] or "") < segment:
                time.sleep(0.2)  # allowed: polling the archiver (a condition)
        wal_seconds = time.perf_counter() - t2
        self.prod.stop(mode="fast")
        return {
            "database_bytes": size, "rows": n, "generate_seconds": generated, "backup_seconds": backup_seconds,
            "backup": {"label": info["label"], "repo_bytes": info["info"]["repository"]["size"]},
            "wal_seconds_to_write": wal_seconds, "markers": [{"at": m["at"].isoformat(), "wal_bytes": m["wal_bytes"]} for m in self.markers],
        }


def pg_time(moment) -> str:
    """2026-11-29 19:46:13.941518+00: the form pgBackRest parses (it refuses ISO 8601's 'T')."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f+00")


def bare(source: Source, root: Path, target, jobs: int) -> dict:
    """pgbackrest restore + pg_ctl start + wait until recovery has ended, as an operator would."""
    d = owned(root / f"bare-{uuid.uuid4().hex[:6]}")
    data, sock = owned(d / "data"), owned(d / "sock")
    os.chmod(data, 0o700)
    t0 = time.perf_counter()
    source.pgbackrest(
        f"--pg1-path={data}", "--type=time", f"--target={pg_time(target)}", "--target-action=promote",
        "--archive-mode=off", f"--process-max={jobs}", "restore",
    )
    t1 = time.perf_counter()
    log = d / "server.log"
    subprocess.run(
        [source.prod.tool("pg_ctl"), "start", "-D", str(data), "-l", str(log), "-W",
         "-o", f"-c unix_socket_directories={sock} -c listen_addresses='' -c port=5432"],
        check=True, capture_output=True, **ids(),
    )
    dsn = f"host={sock} port=5432 user=drdrill dbname=bench"
    while True:
        try:
            with psycopg.connect(dsn, connect_timeout=2, autocommit=True) as conn:
                if not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                    break
        except psycopg.OperationalError:
            if server_pid(data) is None and log.exists() and "FATAL" in log.read_text():
                raise RuntimeError(f"bare recovery failed: {log.read_text()[-600:]}") from None
        time.sleep(0.1)  # allowed: polling for the end of recovery (a condition), as an operator's script would
    t2 = time.perf_counter()
    subprocess.run([source.prod.tool("pg_ctl"), "stop", "-D", str(data), "-m", "immediate"], capture_output=True, **ids())
    shutil.rmtree(d, ignore_errors=True)
    return {"restore_seconds": t1 - t0, "replay_seconds": t2 - t1, "total_seconds": t2 - t0}


async def drill_once(client, queue: str, spec) -> dict:
    drill_id = f"bench-pitr-{uuid.uuid4().hex[:6]}"
    wall, result = await run_passing(client, queue, spec, drill_id)
    restore_end = max(e.ended for e in result.timeline if e.phase == "restore" and e.target is None)
    details = result.restored[0].details
    return {
        "wall_seconds": wall,
        "declared_to_ready_seconds": (restore_end - result.declared).total_seconds(),
        "rto_seconds": result.rto_seconds,
        "lay_down_seconds": details["seconds"]["lay_down"],
        "restore_and_replay_seconds": details["seconds"]["total"],
        "segments": details["wal_segments_replayed"],
    }


async def run(a) -> dict:
    work = Path(tempfile.mkdtemp(prefix="drp-", dir="/tmp"))
    work.chmod(0o711)
    root = owned(work / "c")
    root.chmod(0o711)
    # The drill's evidence goes to a store of this run's own state directory (stopped at the end).
    os.environ["DRDRILL_STATE_DIR"] = str(work / "state")
    os.environ["DRDRILL_CLUSTER_ROOT"] = str(root)
    source = Source(work, a.jobs)
    bares, drills, growth, loads = [], [], [], []
    server = None
    try:
        built = source.build(a.gb, a.wal_mb, a.steps)
        print(f"built: {json.dumps(built, default=str)}", flush=True)
        last = source.markers[-1]["at"] + timedelta(milliseconds=500)
        while datetime.now(timezone.utc) <= last:  # a recovery target must have passed (drdrill lint refuses the future)
            time.sleep(0.1)  # allowed: waiting for the clock to pass the target
        spec = parse_spec(DRILL.format(config=source.config, target=last.isoformat(), jobs=a.jobs), "<bench>")
        server = DevServer(log_path=str(work / "temporal.log")).start()
        client = await connect(server.address)
        queue = f"bench-{uuid.uuid4().hex[:6]}"
        async with running_worker(client, task_queue_name=queue, providers={"postgres": PostgresProvider(root=str(root))}, state_dir=str(work / "state")):
            for i in range(a.runs):
                b = await asyncio.to_thread(bare, source, root, last, a.jobs)
                bares.append(b)
                print(f"run {i + 1} bare: {b['total_seconds']:.1f}s (restore {b['restore_seconds']:.1f}s, start + replay {b['replay_seconds']:.1f}s) load {load()}", flush=True)
                d = await drill_once(client, queue, spec)
                drills.append(d)
                print(f"run {i + 1} drill: to ready {d['declared_to_ready_seconds']:.1f}s, RTO {d['rto_seconds']:.1f}s, wall {d['wall_seconds']:.1f}s "
                      f"(lay down {d['lay_down_seconds']:.1f}s, {d['segments']} segments) load {load()}", flush=True)
                loads.append(load())
        for m in source.markers:
            g = await asyncio.to_thread(bare, source, root, m["at"] + timedelta(milliseconds=500), a.jobs)
            growth.append({"wal_bytes": m["wal_bytes"], **g})
            print(f"growth: {m['wal_bytes'] / 2**20:.0f} MiB of WAL: restore {g['restore_seconds']:.1f}s, start + replay {g['replay_seconds']:.1f}s", flush=True)
    finally:
        if server is not None:
            server.stop()
        from drdrill.evidence.embedded import embedded_cluster

        embedded_cluster(work / "state").stop(mode="fast")
        source.prod.destroy()
        shutil.rmtree(work, ignore_errors=True)
    med = lambda key, rows: summary([r[key] for r in rows])  # noqa: E731
    out = {
        "gb": a.gb, "wal_mb": a.wal_mb, "steps": a.steps, "jobs": a.jobs, "source": built,
        "bare": {k: med(k, bares) for k in ("restore_seconds", "replay_seconds", "total_seconds")},
        "drill": {k: med(k, drills) for k in ("declared_to_ready_seconds", "rto_seconds", "wall_seconds", "lay_down_seconds", "restore_and_replay_seconds")},
        "growth": growth,
        "loads": loads,
    }
    bt = out["bare"]["total_seconds"]["median"]
    out["ratio_ready_vs_bare"] = out["drill"]["declared_to_ready_seconds"]["median"] / bt
    out["ratio_rto_vs_bare"] = out["drill"]["rto_seconds"]["median"] / bt
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--wal-mb", type=int, default=512)
    ap.add_argument("--steps", type=int, default=4, help="markers along the WAL, for the growth series")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=1800)
    a = ap.parse_args()
    time_limit(a.timeout)
    out = asyncio.run(run(a))
    path = write_result(f"pitr_{a.gb:g}gb_{a.wal_mb}mb", out)
    print({k: v for k, v in out.items() if k.startswith("ratio")})
    print(path)


if __name__ == "__main__":
    main()
