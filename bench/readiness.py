"""Benchmark 2: readiness detection.

How long after a resource becomes ready the drill notices (the error the measured RTO carries),
and how many provider calls the wait costs. A simulated resource becomes ready R seconds after the
wait starts (R jittered ±10% per trial, so no schedule is in phase with it); the product's real
`drdrill.providers.base.poll_until` runs against it on a virtual clock (its `sleep` advances the
clock, its `clock` reads it), so two hours of waiting take milliseconds and every schedule sees the
same ready times. Each trial is seeded: the run is reproducible.

Schedules compared:
- "prior": poll_until given `expected` = R × a factor drawn uniformly from [0.8, 1.2] (what earlier
  drills of the target would say), default spread (20%);
- "no prior": poll_until without `expected` (a target's first drill);
- "proportional 4%": poll_until as it was before this change (back off to 4% of the time waited);
- "fixed 15 s": a probe every 15 s (the boto3 waiters' default), the yardstick for calls.
Plus two rows with a wrong prior (2× too short, 2× too long) at 1 h, to show what it costs.

Goal: delay ≤ max(5 s, 0.2% of R) for waits up to 2 h, and, for waits of 10 minutes or more, no
more calls than fixed 15 s polling (checked per trial against fixed polling for the same R).

    python -m bench.readiness --trials 200
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
from typing import Callable, Optional

from drdrill.providers.base import NotReadyYet, ProviderError, poll_until
from bench.common import time_limit, write_result

WAITS = [120, 600, 1800, 3600, 7200]
SCHEDULES = ["prior", "no prior", "proportional 4% (before)", "fixed 15 s"]
WRONG_PRIORS = [("prior 2x too short", 0.5), ("prior 2x too long", 2.0)]


class Resource:
    """Ready `ready_in` seconds after the wait starts, on a virtual clock only sleeps advance."""

    def __init__(self, ready_in: float):
        self.ready_in, self.now, self.calls = ready_in, 0.0, 0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def probe(self) -> float:
        self.calls += 1
        if self.now < self.ready_in:
            raise NotReadyYet("starting")
        return self.now


def proportional_before(probe: Callable[[], float], *, timeout: float, sleep, clock, rng: random.Random) -> float:
    """poll_until as it was before this change (commit 0dba4e0): 0.25 s growing by 1.6 to 5 s, then
    to 4% of the time waited, jitter 0.8–1.0."""
    started, delay = clock(), 0.25
    while True:
        try:
            return probe()
        except NotReadyYet:
            now = clock()
            remaining = started + timeout - now
            if remaining <= 0:
                raise ProviderError("READY_TIMEOUT", "not ready") from None
            delay = min(delay, max(5.0, 0.04 * (now - started)))
            sleep(min(delay * rng.uniform(0.8, 1.0), remaining))
            delay *= 1.6


def fixed_15s(probe: Callable[[], float], *, sleep) -> float:
    while True:
        try:
            return probe()
        except NotReadyYet:
            sleep(15.0)


def trial(schedule: str, ready_in: float, seed: int, prior: Optional[float]) -> tuple[float, int]:
    """(detection delay in seconds, calls) of one wait."""
    res = Resource(ready_in)
    timeout = 10 * ready_in + 600
    if schedule == "fixed 15 s":
        seen = fixed_15s(res.probe, sleep=res.sleep)
    elif schedule.startswith("proportional"):
        seen = proportional_before(res.probe, timeout=timeout, sleep=res.sleep, clock=res.clock, rng=random.Random(seed))
    else:
        seen = poll_until(res.probe, timeout=timeout, what="sim", sleep=res.sleep, clock=res.clock, expected=prior, seed=seed)
    return seen - ready_in, res.calls


def goal_seconds(ready_in: float) -> float:
    return max(5.0, 0.002 * ready_in)


def measure(wait: int, schedule: str, trials: int, prior_factor: Optional[float] = None) -> dict:
    rng = random.Random(wait)  # the same ready times and priors for every schedule
    delays, calls, within_goal, within_budget, budget_trials = [], [], 0, 0, 0
    for i in range(trials):
        ready_in = wait * rng.uniform(0.9, 1.1)
        factor = rng.uniform(0.8, 1.2)
        if prior_factor is not None:
            prior: Optional[float] = ready_in * prior_factor
        else:
            prior = ready_in * factor if schedule == "prior" else None
        delay, n = trial(schedule, ready_in, seed=wait * 100_003 + i, prior=prior)
        delays.append(delay)
        calls.append(n)
        within_goal += delay <= goal_seconds(ready_in) + 1e-9
        if ready_in >= 600:
            budget_trials += 1
            within_budget += n <= math.ceil(ready_in / 15) + 1  # fixed 15 s polling's calls for this wait
    delays.sort()
    return {
        "wait_seconds": wait,
        "schedule": schedule,
        "goal_seconds": goal_seconds(wait),
        "median_delay_seconds": statistics.median(delays),
        "p95_delay_seconds": delays[int(0.95 * len(delays))],
        "max_delay_seconds": delays[-1],
        "share_within_goal": within_goal / trials,
        "median_calls": statistics.median(calls),
        "max_calls": max(calls),
        "share_calls_within_fixed_15s": within_budget / budget_trials if budget_trials else None,
    }


def line(row: dict) -> str:
    budget = row["share_calls_within_fixed_15s"]
    return (
        f"R={row['wait_seconds']:5d}s {row['schedule']:26s} delay median {row['median_delay_seconds']:6.1f}s "
        f"p95 {row['p95_delay_seconds']:6.1f}s max {row['max_delay_seconds']:6.1f}s (goal {row['goal_seconds']:4.1f}s: "
        f"{row['share_within_goal']:4.0%} of trials)  calls median {row['median_calls']:4.0f} max {row['max_calls']:4d}"
        + (f"  ≤ fixed 15 s in {budget:4.0%} of trials ≥ 10 min" if budget is not None else "")
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--timeout", type=float, default=300)
    # bench/run_all.py still passes the options of the former wall-clock check: accepted, unused
    a = ap.parse_args()
    time_limit(a.timeout)
    rows = []
    for wait in WAITS:
        for schedule in SCHEDULES:
            rows.append(measure(wait, schedule, a.trials))
            print(line(rows[-1]), flush=True)
    for name, factor in WRONG_PRIORS:
        row = measure(3600, "prior", a.trials, prior_factor=factor)
        row["schedule"] = name
        rows.append(row)
        print(line(row), flush=True)
    path = write_result(
        "readiness",
        {
            "trials": a.trials,
            "jitter": "ready time uniform in ±10% of R; prior = ready time × uniform(0.8, 1.2)",
            "goal": "delay ≤ max(5 s, 0.2% of R) up to 2 h; calls ≤ fixed 15 s polling for R ≥ 10 min",
            "rows": rows,
        },
    )
    print(path)


if __name__ == "__main__":
    main()
