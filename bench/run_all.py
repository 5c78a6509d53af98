"""Run every benchmark (`make bench`), each in its own process with a time limit; results land in
bench/out/*.json (--quick: bench/out/quick/). bench/RESULTS.md is written by hand from such runs.

    python -m bench.run_all            # the full set (about 30 minutes on 2 cores)
    python -m bench.run_all --quick    # a smoke run of every script on tiny sizes (about 1 minute)
    python -m bench.run_all --only readiness,overhead
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from bench import datagen
from bench.common import OUT, load

FULL = {
    "readiness": (["--trials", "200"], 900),
    "overhead": (["--restore-time", "30", "--runs", "5", "--sizes", "1,10,50", "--seq-restore-time", "1"], 1800),
    "fleet": (["--sizes", "100,500,1000", "--restore-time", "5", "--runs", "1"], 2400),
    "validation_throughput": (["--gb", "1", "--runs", "5"], 1800),
    "restore_rto": (["--gb", "1", "--runs", "5", "--jobs", "2"], 3000),
    "dump_s3": (["--size", "1", "--runs", "5", "--jobs", "2"], 3600),
    "pitr": (["--gb", "1", "--wal-mb", "512", "--steps", "4", "--runs", "5", "--jobs", "2"], 1800),
    "embedded_gate": (["--runs", "5", "--calls", "200"], 120),
    "approvals": (["--runs", "200"], 300),
    "integrity": (["--scale", "68", "--runs", "7", "--restores", "3", "--jobs", "2"], 3600),
}
QUICK = {
    "readiness": (["--trials", "20"], 120),
    "overhead": (["--restore-time", "2", "--runs", "1", "--sizes", "1,5", "--seq-restore-time", "0.2"], 300),
    "fleet": (["--sizes", "20", "--restore-time", "1", "--sample", "5"], 300),
    "validation_throughput": (["--gb", "0.02", "--runs", "1"], 300),
    "restore_rto": (["--gb", "0.02", "--runs", "1", "--jobs", "2"], 600),
    "dump_s3": (["--size", "0.02", "--runs", "1", "--jobs", "2"], 600),
    "pitr": (["--gb", "0.02", "--wal-mb", "32", "--steps", "2", "--runs", "1", "--jobs", "2"], 300),
    "embedded_gate": (["--runs", "1", "--calls", "20"], 60),
    "approvals": (["--runs", "20"], 120),
    "integrity": (["--scale", "1", "--runs", "1", "--restores", "1", "--jobs", "2"], 300),
}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smoke run on tiny sizes")
    ap.add_argument("--only", default="", help="comma-separated subset")
    ap.add_argument("--keep-db", action="store_true", help="keep the generated databases")
    a = ap.parse_args()
    plan = QUICK if a.quick else FULL
    env = dict(os.environ)
    if a.quick:  # smoke results never overwrite real ones
        env["DRDRILL_BENCH_OUT"] = str(OUT / "quick")
    names = [n for n in plan if not a.only or n in a.only.split(",")]
    OUT.mkdir(parents=True, exist_ok=True)
    failed = []
    for name in names:
        args, limit = plan[name]
        cmd = [sys.executable, "-m", f"bench.{name}", *args, "--timeout", str(limit)]
        print(f"== {' '.join(cmd[1:])}  (load {load()})", flush=True)
        t0 = time.monotonic()
        try:
            rc = subprocess.run(cmd, timeout=limit + 60, env=env).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        print(f"== {name}: {'ok' if rc == 0 else f'FAILED ({rc})'} in {time.monotonic() - t0:.0f}s", flush=True)
        if rc != 0:
            failed.append(name)
    if not a.keep_db:
        for gb in ({0.02} if a.quick else {1.0}):
            datagen.drop(gb)
    print(f"results in {env.get('DRDRILL_BENCH_OUT', OUT)}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
