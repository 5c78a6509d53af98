"""Benchmark 2: readiness detection.

How long after a resource becomes ready the drill notices, and how many provider calls the wait
costs. A simulated resource becomes ready R seconds after the wait starts (R jittered ±10% per
trial); we run the product's real `drdrill.providers.base.poll_until` against it on a virtual
clock (its `sleep` advances the clock, its `clock` reads it), so hours of waiting take
milliseconds and every schedule sees the same ready times. Compared with polling at a fixed 15 s
(boto3 waiters' default delay) and with poll_until's schedule before this benchmark (proportion=0:
capped at 5 s). A real-time run (--real) checks that the virtual clock predicts wall-clock
behaviour.

    python -m bench.readiness --trials 200 --real-trials 5
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from drdrill.providers.base import NotReadyYet, poll_until
from bench.common import summary, time_limit, write_result

READY_TIMES = [30, 120, 300, 600, 1800, 3600]


class Resource:
    def __init__(self, ready_at: float, clock):
        self.ready_at, self.clock, self.calls = ready_at, clock, 0

    def probe(self):
        self.calls += 1
        if self.clock() < self.ready_at:
            raise NotReadyYet("starting")
        return self.clock()


def virtual_trial(schedule: str, ready: float) -> tuple[float, int]:
    now = [0.0]
    clock = lambda: now[0]  # noqa: E731

    def sleep(s: float) -> None:
        now[0] += s

    res = Resource(ready, clock)
    if schedule == "fixed-15s":
        while True:
            try:
                seen = res.probe()
                break
            except NotReadyYet:
                sleep(15.0)
    else:
        proportion = 0.0 if schedule == "capped-5s (before)" else 0.04
        seen = poll_until(res.probe, timeout=10 * ready + 60, what="sim", sleep=sleep, clock=clock, proportion=proportion)
    return seen - ready, res.calls


def real_trial(schedule: str, ready_in: float) -> tuple[float, int]:
    start = time.monotonic()
    res = Resource(start + ready_in, time.monotonic)
    if schedule == "fixed-15s":
        while True:
            try:
                seen = res.probe()
                break
            except NotReadyYet:
                time.sleep(15.0)
    else:
        seen = poll_until(res.probe, timeout=10 * ready_in, what="sim")
    return seen - res.ready_at, res.calls


SCHEDULES = ["drdrill poll_until", "capped-5s (before)", "fixed-15s"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--real-trials", type=int, default=5)
    ap.add_argument("--real-ready", type=float, default=20.0)
    ap.add_argument("--timeout", type=float, default=900)
    a = ap.parse_args()
    time_limit(a.timeout)
    random.seed(7)
    rows = []
    for ready in READY_TIMES:
        rng = random.Random(ready)
        readies = [ready * rng.uniform(0.9, 1.1) for _ in range(a.trials)]
        for sched in SCHEDULES:
            delays, calls = [], []
            for r in readies:
                d, c = virtual_trial(sched, r)
                delays.append(d / r * 100)
                calls.append(c)
            delays.sort()
            row = {"ready_seconds": ready, "schedule": sched, "median_delay_pct": statistics.median(delays),
                   "p95_delay_pct": delays[int(0.95 * len(delays))], "max_delay_pct": delays[-1],
                   "median_delay_seconds": statistics.median(delays) * ready / 100, "median_calls": statistics.median(calls)}
            rows.append(row)
            print(f"R={ready:5d}s {sched:20s} delay median {row['median_delay_pct']:5.2f}% ({row['median_delay_seconds']:5.1f}s) p95 {row['p95_delay_pct']:5.2f}%  calls {row['median_calls']:.0f}", flush=True)
    real = {}
    for sched in ("drdrill poll_until", "fixed-15s") if a.real_trials > 0 else ():
        ds, cs = [], []
        for _ in range(a.real_trials):
            d, c = real_trial(sched, a.real_ready)
            ds.append(d)
            cs.append(c)
        vd = [virtual_trial(sched, a.real_ready)[0] for _ in range(200)]
        real[sched] = {"ready_seconds": a.real_ready, "delay_seconds": summary(ds), "calls": summary(cs), "virtual_median_delay_seconds": statistics.median(vd)}
        print(f"real R={a.real_ready:.0f}s {sched}: delay median {statistics.median(ds):.2f}s (virtual {statistics.median(vd):.2f}s), calls {statistics.median(cs):.0f}", flush=True)
    path = write_result("readiness", {"trials": a.trials, "jitter": "ready time uniform in ±10% of R", "rows": rows, "real_time_check": real})
    print(path)


if __name__ == "__main__":
    main()
