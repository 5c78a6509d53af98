"""Benchmark: where the time of the post-restore corruption check goes (issue 26), on a pgbench
database restored into a sandboxed throwaway cluster as a drill makes it.

Each round restores the same `pg_dump -Fc` archive into a fresh cluster (`pg_restore -j N`, in the
sandbox) and then runs one check method on it; methods are interleaved round by round. While the
check runs, /proc is sampled every 10 ms for every process of the cluster's sandbox uid (the
server's backends, pg_amcheck, bwrap): their CPU seconds (utime + stime), bytes read/written
(/proc/PID/io), first and last time seen. The server logs every statement with its duration
(log_min_duration_statement = 0, epoch timestamps), so each amcheck call is placed on the timeline
and joined with its backend's CPU.

    python -m bench.amcheck_trace --scale 68 --rounds 2 --jobs 2 --methods current
"""

from __future__ import annotations

import argparse
import atexit
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import psycopg

from bench.common import load, time_limit, write_result
from bench.integrity import database, size_mib
from drdrill.localpg.cluster import LocalCluster, tool
from drdrill.localpg.sandbox import Inputs
from drdrill.providers.postgres import integrity

TICK = os.sysconf("SC_CLK_TCK")
_LOGLINE = re.compile(r"^(\d+\.\d+) \[(\d+)\] LOG:  duration: ([\d.]+) ms  statement: (.*)$")


class Sampler(threading.Thread):
    """Every process of `uid`: CPU seconds, I/O bytes, first/last seen, its command line."""

    def __init__(self, uid: int, every: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.uid, self.every, self.stop_ = uid, every, threading.Event()
        self.procs: dict[int, dict[str, Any]] = {}

    def run(self) -> None:
        while not self.stop_.is_set():
            now = time.time()
            for d in os.listdir("/proc"):
                if not d.isdigit():
                    continue
                try:
                    if os.stat(f"/proc/{d}").st_uid != self.uid:
                        continue
                    stat = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
                    cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                    io = dict(line.split(": ") for line in Path(f"/proc/{d}/io").read_text().splitlines())
                except (OSError, ValueError):
                    continue
                p = self.procs.setdefault(int(d), {"first": now, "cmd0": cmd, "cpu0": (int(stat[11]) + int(stat[12])) / TICK})
                p.update(last=now, cmd=cmd, cpu=(int(stat[11]) + int(stat[12])) / TICK, utime=int(stat[11]) / TICK,
                         rchar=int(io["rchar"]), wchar=int(io["wchar"]), read_bytes=int(io["read_bytes"]), write_bytes=int(io["write_bytes"]))
                if "statements" not in p:
                    p["statements"] = set()
                if " [local] " in cmd and not cmd.endswith("idle"):
                    p["statements"].add(cmd.rsplit(" ", 1)[-1])
            time.sleep(self.every)

    def finish(self) -> dict[int, dict[str, Any]]:
        self.stop_.set()
        self.join()
        for p in self.procs.values():
            p["statements"] = sorted(p["statements"])
        return self.procs


def restore(root: Path, archive: Path, jobs: int, settings: dict) -> tuple[LocalCluster, float, list]:
    """A sandboxed cluster with `archive` restored into database `bench`: (cluster, pg_restore's wall
    seconds, [(seconds since its start, pg_restore -v line)])."""
    cluster = LocalCluster(root / f"sbx-{uuid.uuid4().hex[:6]}", sandboxed=True)
    cluster.create({"drdrill:bench": "amcheck_trace"}, settings=settings)
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE bench TEMPLATE template0")
    box = cluster.sandbox()
    lines: list = []
    t0 = time.perf_counter()
    with Inputs(cluster.path, box.identity) as inputs:
        proc = box.popen([tool("pg_restore"), "-v", "-j", str(jobs), "--no-owner", "-d", cluster.dsn("bench"), inputs.path(archive)],
                         pass_fds=inputs.fds, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for line in proc.stderr:  # type: ignore[union-attr]
            lines.append((round(time.perf_counter() - t0, 3), line.rstrip()))
        proc.wait()
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError("\n".join(l for _, l in lines[-5:]))
    return cluster, seconds, [l for l in lines if "finished item" in l[1] or "launching item" in l[1]]


def _log_statements(cluster: LocalCluster) -> None:
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        for k, v in (("log_min_duration_statement", "0"), ("log_line_prefix", "'%n [%p] '"), ("log_autovacuum_min_duration", "0")):
            conn.execute(f"ALTER SYSTEM SET {k} = {v}")
        conn.execute("SELECT pg_reload_conf()")
    time.sleep(0.3)  # the reload reaches the postmaster asynchronously; only the bench waits on it


def statements(cluster: LocalCluster, since: float) -> list[dict]:
    out = []
    for line in cluster.log.read_text(errors="replace").splitlines():
        m = _LOGLINE.match(line)
        if m and float(m.group(1)) >= since:
            end, ms = float(m.group(1)), float(m.group(3))
            out.append({"pid": int(m.group(2)), "start": round(end - ms / 1000 - since, 3), "end": round(end - since, 3),
                        "seconds": round(ms / 1000, 3), "statement": m.group(4)[:160]})
    return out


def autovacuum_lines(cluster: LocalCluster, since: float) -> list[str]:
    return [l[:200] for l in cluster.log.read_text(errors="replace").splitlines()
            if "automatic" in l and l[:10].isdigit() and float(l.split()[0]) >= since]


def _module_at(rev: str) -> Any:
    """integrity.py as git revision `rev` has it, imported beside this checkout's other modules."""
    text = subprocess.run(["git", "-C", str(Path(__file__).resolve().parent.parent), "show", f"{rev}:drdrill/providers/postgres/integrity.py"],
                          capture_output=True, text=True, check=True).stdout
    import importlib.util

    where = tempfile.mkdtemp(prefix="drb-amt-mod-")
    atexit.register(shutil.rmtree, where, True)
    path = Path(where) / f"integrity_{rev.replace('/', '_')}.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[path.stem] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


METHODS: dict[str, Callable[[LocalCluster, int], Any]] = {
    "current": lambda c, jobs: integrity.run_amcheck(c.dsn("bench"), c, jobs, time.monotonic() + 600, "bench"),
}


def _before(rev: str) -> Callable[[LocalCluster, int], Any]:
    module = _module_at(rev)
    return lambda c, jobs: module.run_amcheck(c.dsn("bench"), c, jobs, time.monotonic() + 600, "bench")


def one_round(root: Path, archive: Path, jobs: int, method: str, settings: dict) -> dict:
    cluster, restore_s, items = restore(root, archive, jobs, settings)
    try:
        _log_statements(cluster)
        ident = cluster.identity
        sampler = Sampler(ident.uid)
        sampler.start()
        t0 = time.time()
        p0 = time.perf_counter()
        run = METHODS[method](cluster, jobs)
        check_s = time.perf_counter() - p0
        procs = sampler.finish()
        stmts = statements(cluster, t0)
        details = run.as_details() if hasattr(run, "as_details") else run
        if isinstance(details, dict) and (details.get("corrupt") or details.get("relations_not_checked") or details.get("failed")):
            raise RuntimeError(f"the check did not pass cleanly: {details}")
        table = [{"pid": pid, "first": round(p["first"] - t0, 3), "last": round(p["last"] - t0, 3), "cpu": round(p["cpu"] - p["cpu0"], 2),
                  "user": round(p["utime"], 2), "rchar_mib": round(p["rchar"] / 2**20, 1), "wchar_mib": round(p["wchar"] / 2**20, 1),
                  "disk_read_mib": round(p["read_bytes"] / 2**20, 1), "disk_write_mib": round(p["write_bytes"] / 2**20, 1),
                  "cmd": p["cmd0"][:90]} for pid, p in sorted(procs.items(), key=lambda kv: kv[1]["first"]) if p["cpu"] - p["cpu0"] >= 0.01 or p["first"] > 0]
        return {"method": method, "restore_seconds": round(restore_s, 3), "check_seconds": round(check_s, 3),
                "ratio": round(check_s / restore_s, 3), "load": load(), "details": details, "statements": stmts,
                "processes": table, "restore_items": items, "autovacuum": autovacuum_lines(cluster, t0 - 60)}
    finally:
        cluster.destroy()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=int, default=68)
    ap.add_argument("--database", help="the pgbench database (default drdrill_bench_amcheck_s<scale>), made once and kept")
    ap.add_argument("--archive", help="a pg_dump -Fc of it, made once and kept (default /tmp/drdrill_bench_amcheck_s<scale>.dump)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--methods", default="current", help="current, and before:REV (integrity.py of git revision REV)")
    ap.add_argument("--set", action="append", default=[], help="a throwaway cluster setting, name=value")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    time_limit(a.timeout)
    name = a.database or f"drdrill_bench_amcheck_s{a.scale}"
    dsn = database(a.scale, name)
    archive = Path(a.archive or f"/tmp/drdrill_bench_amcheck_s{a.scale}.dump")
    if not archive.exists():
        subprocess.run([tool("pg_dump"), "-Fc", "-f", str(archive), "-d", dsn], check=True)
    archive.chmod(0o644)
    settings = dict(s.split("=", 1) for s in a.set)
    for m in a.methods.split(","):
        if m.startswith("before:"):
            METHODS[m] = _before(m.split(":", 1)[1])
    work = Path(tempfile.mkdtemp(prefix="drb-amt-", dir="/tmp"))
    work.chmod(0o711)
    rounds: list[dict] = []
    try:
        for i in range(a.rounds):
            for m in a.methods.split(","):
                r = one_round(work, archive, a.jobs, m, settings)
                rounds.append(r)
                print(f"round {i + 1} {m}: restore {r['restore_seconds']:.2f}s, check {r['check_seconds']:.2f}s = {r['ratio']:.2f}x, load {r['load']}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = {"scale": a.scale, "database_mib": size_mib(dsn), "jobs": a.jobs, "settings": settings, "rounds": rounds}
    path = write_result(a.out or f"amcheck_trace_s{a.scale}", out)
    print(path)


if __name__ == "__main__":
    main()
