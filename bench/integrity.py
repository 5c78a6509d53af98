"""Benchmark: the cost of proving the restored data sound (drdrill/providers/postgres/integrity.py,
dumpmanifest.py), on a pgbench database.

- amcheck against restore: a sandboxed throwaway cluster (as a drill makes it) restored with
  `pg_restore -j N`, then `run_amcheck` (pg_amcheck --heapallindexed --jobs N, in the sandbox);
- `drdrill dump -Fc` against a bare `pg_dump -Fc` of the same database, interleaved run by run
  (bare, drdrill, [before], bare, drdrill, …); `--before REV` adds the `drdrill dump` of an earlier
  commit (its dumpmanifest.py, run with this checkout's other modules) as a third method;
- the CPU seconds each side's server backend spent (pg_dump's COPY, the fingerprints), from /proc;
- the manifest's bytes.

    python -m bench.integrity --scale 68 --runs 7 --restores 3 --jobs 2 --database drdrill_bench_a26_s68   # 1 GiB
    python -m bench.integrity --scale 10 --runs 3 --restores 3 --jobs 2     # ~150 MiB, quicker
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Optional

import psycopg

from bench.common import ADMIN_DSN, load, summary, time_limit, write_result
from drdrill.localpg.cluster import LocalCluster, tool
from drdrill.providers.postgres.integrity import run_amcheck
from drdrill.localpg.sandbox import Inputs

DRDRILL = str(Path(sys.executable).parent / "drdrill")


def database(scale: int, name: str) -> str:
    """A pgbench database of `scale` on the admin server, made once and reused (--keep-db)."""
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


class Backends(threading.Thread):
    """CPU seconds of the server backends of database `dbname` (every 10 ms, from /proc: a backend's
    title names its database once it has connected; the server runs on this machine). A process
    is known by its pid and start time; a backend's last <10 ms are missed."""

    def __init__(self, dbname: str) -> None:
        super().__init__(daemon=True)
        self.mark, self.seen, self.ours, self.done = f" {dbname} ", {}, set(), threading.Event()
        self.tick = os.sysconf("SC_CLK_TCK")

    def scan(self) -> None:
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                comm, _, rest = Path(f"/proc/{name}/stat").read_text().partition(") ")
                if not comm.endswith("(postgres"):
                    continue
                fields = rest.split()
                key = (int(name), fields[19])  # pid, start time: a reused pid is another process
                if key not in self.ours:
                    if self.mark not in Path(f"/proc/{name}/cmdline").read_text():
                        continue  # not ours, or not connected yet: looked at again next time
                    self.ours.add(key)
                self.seen[key] = (int(fields[11]) + int(fields[12])) / self.tick
            except OSError:
                continue

    def run(self) -> None:
        while not self.done.wait(0.01):
            self.scan()

    def stop(self) -> float:
        self.scan()
        self.done.set()
        self.join()
        return sum(self.seen.values())


def timed(argv: list[str], cpu: Optional[list[float]] = None, env: Optional[dict] = None, server: Optional[tuple[str, list[float]]] = None) -> float:
    """Wall seconds of `argv`; its CPU seconds (user + system, with its children: pg_dump, pg_restore -l)
    appended to `cpu`; with `server` (database, list), its backends' CPU seconds appended to the list."""
    poll = Backends(server[0]) if server else None
    if poll:
        poll.scan()  # backends already there (none expected) are counted from their current CPU
        before = sum(poll.seen.values())
        poll.start()
    r0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **env} if env else None)
    wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    if poll:
        server[1].append(poll.stop() - before)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]}: {proc.stderr.strip()}")
    if cpu is not None:
        cpu.append(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
    return wall


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
        return {"restore_seconds": restore, "amcheck_seconds": amcheck, "relations": len(run.checked), "load": load()}
    finally:
        cluster.destroy()


def before_command(rev: str, work: Path) -> list[str]:
    """`drdrill dump` as commit `rev` had it: that commit's whole tree (git archive), run by this
    interpreter, as its `drdrill` entry point would."""
    old = work / "before"
    old.mkdir()
    archive = subprocess.run(["git", "-C", str(Path(__file__).resolve().parent.parent), "archive", rev, "app", "drdrill"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(old)], check=True)  # as an installed tree is: no compiling in the timed runs
    return [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(old)!r}); from app.entry import main; sys.exit(main())", "dump"]


def dumps(dsn: str, work: Path, runs: int, before: Optional[list[str]], one_connection: bool = False) -> dict:
    """Interleaved: bare pg_dump -Fc, drdrill dump -Fc (and with one connection, and the earlier
    drdrill dump), `runs` times."""
    methods = {"pg_dump": [tool("pg_dump")], "drdrill_dump": [DRDRILL, "dump"], **({"one_connection": [DRDRILL, "dump"]} if one_connection else {}),
               **({"before": before} if before else {})}
    times: dict[str, list[float]] = {m: [] for m in methods}
    cpu: dict[str, list[float]] = {m: [] for m in methods}
    server: dict[str, list[float]] = {m: [] for m in methods}
    dbname = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    loads = []
    for i in range(runs):
        for m, cmd in methods.items():
            out = work / f"{m}.dump"
            env = {"DRDRILL_DUMP_WORKERS": "1"} if m == "one_connection" else None
            times[m].append(timed([*cmd, "-Fc", "-f", str(out), "-d", dsn], cpu[m], env, (dbname, server[m])))
        loads.append(load())
        print(f"run {i + 1}: " + ", ".join(f"{m} {t[-1]:.2f}s (CPU client {cpu[m][-1]:.2f} + server {server[m][-1]:.2f})" for m, t in times.items())
              + f", load {loads[-1]}", flush=True)
    manifest = work / "drdrill_dump.dump.manifest.json"
    return {"times": times, "client_cpu": cpu, "server_cpu": server, "loads": loads, "archive": work / "drdrill_dump.dump", "manifest_bytes": manifest.stat().st_size,
            "ranges": {t: len(v.get("ranges") or {}) for t, v in json.loads(manifest.read_text())["tables"].items()},
            "ratios": [d / b for d, b in zip(times["drdrill_dump"], times["pg_dump"])]}


def backend_cpu(dsn: str, statement: str) -> float:
    """CPU seconds (user + system, from /proc) that one server backend spends on `statement`; the
    server runs on this machine (127.0.0.1)."""
    tick = os.sysconf("SC_CLK_TCK")

    def cpu(pid: int) -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick

    with psycopg.connect(dsn, autocommit=True) as conn:
        for setting in ("jit = off", "enable_sort = off", "max_parallel_workers_per_gather = 0"):  # as drdrill dump plans
            conn.execute(f"SET {setting}")
        pid = conn.info.backend_pid
        c0 = cpu(pid)
        if statement.startswith("COPY"):
            with conn.cursor().copy(statement) as copy:
                for _ in copy:
                    pass
        else:
            conn.execute(statement).fetchall()
        return cpu(pid) - c0


def dump_query(dsn: str, method: str) -> str:
    """drdrill dump's own query of pgbench_accounts' key ranges with `method`, as one part."""
    from drdrill.providers.postgres.dumpfingerprints import plan_table, part_query
    from drdrill.localpg.data import hash_columns

    with psycopg.connect(dsn) as conn:
        plan = plan_table(conn, "public.pgbench_accounts", 1, False)
        plan.method, plan.columns = method, hash_columns(conn, plan.table, method)
        return part_query(plan, (0, None)).as_string(conn)


def cpu_split(dsn: str, scale: int) -> dict:
    """Where the server's CPU goes: pg_dump's COPY of pgbench_accounts against the fingerprints'
    aggregates (per key range, as drdrill dump runs it; whole table; a bare count)."""
    n = max(1, scale * 100)  # rows per range: pgbench_accounts holds scale × 100,000 rows, ~1,000 ranges
    row = "hash_record_extended(ROW(aid, bid, abalance, filler), 0)"
    return {
        "copy_out": backend_cpu(dsn, "COPY pgbench_accounts TO STDOUT"),
        "dump_key_ranges_columns": backend_cpu(dsn, dump_query(dsn, "columns")),  # what drdrill dump runs (issue 26's method)
        "dump_key_ranges_record": backend_cpu(dsn, dump_query(dsn, "record")),  # … and ran before it
        "fingerprint_key_ranges": backend_cpu(dsn, f"SELECT (aid - 1) / {n}, count(*), sum({row})::text FROM pgbench_accounts AS t GROUP BY 1"),
        "fingerprint_whole_table": backend_cpu(dsn, f"SELECT count(*), sum({row})::text FROM pgbench_accounts AS t"),
        "count_only": backend_cpu(dsn, "SELECT count(*) FROM pgbench_accounts"),
        # not what drdrill dump computes: what a per-column fingerprint format would cost (RESULTS.md §15)
        "per_column_hashes_key_ranges": backend_cpu(dsn, f"SELECT (aid - 1) / {n}, count(*), sum(hashint4extended(aid, 0) # hashint4extended(bid, 1) "
                                                         f"# hashint4extended(abalance, 2) # hashbpcharextended(filler, 3))::text FROM pgbench_accounts AS t GROUP BY 1"),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3, help="interleaved dump runs")
    ap.add_argument("--restores", type=int, default=3, help="restore + amcheck runs")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--database", help="the pgbench database's name (default drdrill_bench_pgbench_s<scale>)")
    ap.add_argument("--before", metavar="REV", help="also time the drdrill dump of this git revision")
    ap.add_argument("--one-connection", action="store_true", help="also time drdrill dump with DRDRILL_DUMP_WORKERS=1")
    ap.add_argument("--keep-db", action="store_true", help="keep the pgbench database for the next run")
    a = ap.parse_args()
    time_limit(a.timeout)
    name = a.database or f"drdrill_bench_pgbench_s{a.scale}"
    dsn = database(a.scale, name)
    mib = size_mib(dsn)
    print(f"pgbench scale {a.scale}: {mib:.0f} MiB", flush=True)
    work = Path(tempfile.mkdtemp(prefix="drb-int-", dir="/tmp"))
    work.chmod(0o711)
    root = work / "c"
    root.mkdir(mode=0o711)
    checks = []
    try:
        d = dumps(dsn, work, a.runs, before_command(a.before, work) if a.before else None, a.one_connection)
        cpu = cpu_split(dsn, a.scale)
        for i in range(a.restores):
            checks.append(restore_and_check(root, d["archive"], a.jobs))
            print(f"restore {i + 1}: restore {checks[-1]['restore_seconds']:.2f}s, amcheck {checks[-1]['amcheck_seconds']:.2f}s, load {load()}", flush=True)
        archive_mib = d["archive"].stat().st_size / 2**20
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not a.keep_db:
            with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    out = {
        "scale": a.scale, "database_mib": mib, "archive_mib": archive_mib, "jobs": a.jobs,
        **{f"{m}_seconds": summary(t) for m, t in d["times"].items()}, "dump_loads": d["loads"],
        **{f"{m}_client_cpu_seconds": summary(t) for m, t in d["client_cpu"].items()},
        **{f"{m}_server_cpu_seconds": summary(t) for m, t in d["server_cpu"].items()},
        "ratio_per_run": summary(d["ratios"]), "server_backend_cpu_seconds": cpu,
        "restore_seconds": summary([c["restore_seconds"] for c in checks]),
        "amcheck_seconds": summary([c["amcheck_seconds"] for c in checks]),
        "restore_loads": [c["load"] for c in checks], "relations_checked": checks[-1]["relations"] if checks else 0, "manifest_bytes": d["manifest_bytes"], "ranges_per_table": d["ranges"],
    }
    out["dump_ratio"] = out["drdrill_dump_seconds"]["median"] / out["pg_dump_seconds"]["median"]
    if a.one_connection:
        out["one_connection_ratio"] = out["one_connection_seconds"]["median"] / out["pg_dump_seconds"]["median"]
    if a.before:
        out["before_ratio"] = out["before_seconds"]["median"] / out["pg_dump_seconds"]["median"]
    if checks:
        out["amcheck_over_restore"] = out["amcheck_seconds"]["median"] / out["restore_seconds"]["median"]
    out["manifest_bytes_per_gib"] = d["manifest_bytes"] / (mib / 1024)
    path = write_result(f"integrity_pgbench_s{a.scale}", out)
    print({k: out.get(k) for k in ("dump_ratio", "one_connection_ratio", "before_ratio", "amcheck_over_restore", "manifest_bytes", "manifest_bytes_per_gib", "server_backend_cpu_seconds")})
    print(path)


if __name__ == "__main__":
    main()
