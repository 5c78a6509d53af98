"""Benchmark 14: the fixed cost of a drill, one-shot versus submitted to a running `drdrill server`.

The same pgBackRest PITR drill as bench/pitr.py (its Source: a generated database, a full backup,
WAL after it, production stopped), run three ways, interleaved (bare, one-shot, server, ...):

- bare: `pgbackrest restore --type=time …` + `pg_ctl start` + polling until recovery has ended
  (bench/pitr.py's `bare`);
- one-shot: `drdrill run drill.yaml --json` with nothing running: the command starts the embedded
  Temporal, the evidence store and a worker, runs the drill, and stops them;
- server: the same command while `drdrill server` runs on another state directory: it submits
  the drill to the server and follows it;
- submitted: the drill submitted to that server by a client already running (as the console and
  the schedules do): start_workflow → result, no process start;
- and `drdrill --help` alone: the Python start and imports any command pays.

Wall time is the command's, from exec to exit. The drill's own span is its timeline (declared,
or its first phase, to its last phase or its end); the fixed cost is wall minus that span.

    python -m bench.server_fixed_cost --gb 0.25 --wal-mb 128 --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from app import server_file
from bench.common import load, summary, time_limit, write_result
from bench.pitr import DRILL, Source, bare, owned
from drdrill.core.models import DrillResult
from drdrill.providers.spec import parse_spec

DRDRILL = str(Path(sys.executable).parent / "drdrill")


def drill_span(result: DrillResult) -> float:
    starts = [result.declared] + [e.started for e in result.timeline if e.started]
    ends = [result.ended] + [e.ended for e in result.timeline if e.ended]
    return (max(ends) - min(starts)).total_seconds()


def command(drill: Path, env: dict) -> dict:
    """`drdrill run DRILL --json`: its wall time and the drill's own span."""
    t0 = time.perf_counter()
    proc = subprocess.run([DRDRILL, "run", str(drill), "--json"], env=env, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"drdrill run exited {proc.returncode}: {proc.stderr[-800:]} {proc.stdout[-800:]}")
    result = DrillResult.model_validate_json(proc.stdout)
    span = drill_span(result)
    return {"wall_seconds": wall, "span_seconds": span, "fixed_seconds": wall - span, "rto_seconds": result.rto_seconds}


def submitted(state: Path, spec) -> dict:
    """The drill submitted by a client already running (the console, a schedule, a script): from
    start_workflow to its result, through the server's gate; no process start."""
    import asyncio
    import uuid

    from drdrill.providers.spec import DrillInput
    from worker import connect
    from workflows.drill import DrillWorkflow

    async def go() -> dict:
        info = server_file.find(state)
        client = await connect(info.address, namespace=info.namespace, proxy=info.proxy)
        drill_id = f"bench-pitr-{uuid.uuid4().hex[:6]}"
        t0 = time.perf_counter()
        handle = await client.start_workflow(DrillWorkflow.run, DrillInput(spec=spec, drill_id=drill_id, started_by="bench"),
                                             id=drill_id, task_queue=info.task_queue)
        result = await handle.result()
        wall = time.perf_counter() - t0
        if result.verdict != "PASSED":
            raise RuntimeError(f"{drill_id}: {result.verdict}")
        span = drill_span(result)
        return {"wall_seconds": wall, "span_seconds": span, "fixed_seconds": wall - span, "rto_seconds": result.rto_seconds}

    return asyncio.run(go())


def cli_start(env: dict) -> float:
    """How long `drdrill --help` takes: the Python start and imports every command pays."""
    t0 = time.perf_counter()
    subprocess.run([DRDRILL, "--help"], env=env, capture_output=True, check=True)
    return time.perf_counter() - t0


class Server:
    """`drdrill server` on its own state directory, for the whole benchmark."""

    def __init__(self, env: dict, state: Path):
        self.env, self.state = env, state

    def start(self) -> float:
        t0 = time.perf_counter()
        self.proc = subprocess.Popen([DRDRILL, "server", "--listen", "127.0.0.1:0"], env=self.env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        while (info := server_file.find(self.state)) is None or info.pid != self.proc.pid:
            if self.proc.poll() is not None:
                raise RuntimeError(f"drdrill server exited: {self.proc.stderr.read()}")
            time.sleep(0.05)  # allowed: polling for the server's ready file (a condition)
        return time.perf_counter() - t0

    def stop(self) -> float:
        t0 = time.perf_counter()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.communicate(timeout=120)
        return time.perf_counter() - t0


def run(a) -> dict:
    work = Path(tempfile.mkdtemp(prefix="dsf-", dir="/tmp"))  # as bench/pitr.py: the cluster user must reach it
    work.chmod(0o711)
    root = owned(work / "c")  # the source and the bare restores, as the cluster user
    root.chmod(0o711)
    clusters = work / "drills"  # the drills' throwaway clusters: a cluster root of drdrill's own uid
    clusters.mkdir(mode=0o711)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "DRDRILL_"))}
    base["DRDRILL_CLUSTER_ROOT"] = str(clusters)
    one_env = {**base, "DRDRILL_STATE_DIR": str(work / "one")}
    srv_env = {**base, "DRDRILL_STATE_DIR": str(work / "srv")}
    source = Source(work, a.jobs)
    bares, ones, subs, apis, starts, loads = [], [], [], [], [], []
    server = Server(srv_env, work / "srv")
    started = stopped = None
    try:
        built = source.build(a.gb, a.wal_mb, a.steps)
        print(f"built: {built['database_bytes'] / 2**20:.0f} MiB database, backup {built['backup']['repo_bytes'] / 2**20:.0f} MiB", flush=True)
        last = source.markers[-1]["at"] + timedelta(milliseconds=500)
        while datetime.now(timezone.utc) <= last:
            time.sleep(0.1)  # allowed: waiting for the clock to pass the recovery target
        drill = work / "pitr.yaml"
        drill.write_text(DRILL.format(config=source.config, target=last.isoformat(), jobs=a.jobs))
        command(drill, one_env)  # warm-up: creates the evidence user and stores, the page cache
        started = server.start()
        print(f"server ready in {started:.2f}s", flush=True)
        command(drill, srv_env)  # warm-up of the server's first drill
        spec = parse_spec(drill.read_text(), str(drill))
        for i in range(a.runs):
            b = bare(source, root, last, a.jobs)
            o = command(drill, one_env)
            s = command(drill, srv_env)
            c = submitted(work / "srv", spec)
            h = {"cli_start_seconds": cli_start(srv_env)}
            bares.append(b), ones.append(o), subs.append(s), apis.append(c), starts.append(h), loads.append(load())
            print(f"run {i + 1}: bare {b['total_seconds']:.2f}s · one-shot wall {o['wall_seconds']:.2f}s (fixed {o['fixed_seconds']:.2f}s) · "
                  f"drdrill run with server wall {s['wall_seconds']:.2f}s (fixed {s['fixed_seconds']:.2f}s) · "
                  f"submitted wall {c['wall_seconds']:.2f}s (fixed {c['fixed_seconds']:.2f}s) · drdrill --help {h['cli_start_seconds']:.2f}s · "
                  f"load {load()}", flush=True)
        stopped = server.stop()
    finally:
        if getattr(server, "proc", None) is not None and server.proc.poll() is None:
            server.stop()
        from drdrill.evidence.embedded import embedded_cluster

        for state in ("one", "srv"):
            embedded_cluster(work / state).stop(mode="fast")
        source.prod.destroy()
        shutil.rmtree(work, ignore_errors=True)
    med = lambda key, rows: summary([r[key] for r in rows])  # noqa: E731
    out = {
        "gb": a.gb, "wal_mb": a.wal_mb, "jobs": a.jobs, "runs": a.runs, "source": built,
        "server_start_seconds": started, "server_stop_seconds": stopped,
        "bare": {k: med(k, bares) for k in ("restore_seconds", "replay_seconds", "total_seconds")},
        "one_shot": {k: med(k, ones) for k in ("wall_seconds", "span_seconds", "fixed_seconds", "rto_seconds")},
        "server": {k: med(k, subs) for k in ("wall_seconds", "span_seconds", "fixed_seconds", "rto_seconds")},
        "submitted": {k: med(k, apis) for k in ("wall_seconds", "span_seconds", "fixed_seconds", "rto_seconds")},
        "cli_start_seconds": med("cli_start_seconds", starts),
        "raw": {"bare": bares, "one_shot": ones, "server": subs, "submitted": apis, "cli_start": starts}, "loads": loads,
    }
    bt = out["bare"]["total_seconds"]["median"]
    out["ratio_one_shot_wall_vs_bare"] = out["one_shot"]["wall_seconds"]["median"] / bt
    out["ratio_server_wall_vs_bare"] = out["server"]["wall_seconds"]["median"] / bt
    out["ratio_submitted_wall_vs_bare"] = out["submitted"]["wall_seconds"]["median"] / bt
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=0.25)
    ap.add_argument("--wal-mb", type=int, default=128)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=2400)
    a = ap.parse_args()
    time_limit(a.timeout)
    out = run(a)
    path = write_result(f"server_fixed_cost_{a.gb:g}gb_{a.wal_mb}mb", out)
    print(json.dumps({k: v for k, v in out.items() if k.startswith("ratio") or k.startswith("server_")}, default=str))
    print(path)


if __name__ == "__main__":
    main()
