"""When to look again: the polling schedule of a readiness wait.

A drill measures its RTO when it *notices* that a restored resource is ready, so the detection
delay (ready → noticed) is an error in the RTO. Polling often keeps that error small but costs
provider API calls, and a drill fleet that polls too often gets throttled. `ReadinessSchedule`
says how long a wait sleeps before its next probe. It is pure (no clock, no SDK, no Temporal):
`poll_until` (drdrill/providers/base.py) gives it the time waited and the number of probes.

The provider's own ready time: `poll_until` returns the probe's value unchanged, so a probe can
carry what the cloud reports. A provider that knows when the resource became ready puts it in
the RestoredResource its wait_ready returns, as `details["ready_at"]` (ISO 8601 with a zone).
The next drill's prior then takes the restore's end from it (drdrill/evidence/history.py, via
`ready_time`, which falls back to the time the drill noticed when there is none or it is
implausible), so that prior carries no detection delay. No provider reports one yet. The RTO
itself ends when the last required check first passed (drdrill/core/judging.py), which comes
after readiness was noticed, so the detection delay is part of it.

The yardstick is polling every 15 s (the boto3 waiters' default). What the schedule guarantees,
with the default parameters (bench/readiness.py measures it):

**Budget, with or without a prior.** A wait of T ≥ 10 min (`budget_from`) costs at most the probes
that polling every 15 s (`budget_interval`) would have made, ceil(T/15) + 1, whatever the prior
and however wrong it is. Each sleep enforces it: the 41st probe (ceil(600/15) + 1) never comes
before 10 minutes, and from then on probe n never before 15 × (n − 1) s, when fixed polling makes
its n-th. Without a prior the default intervals reach 10 minutes with 39–40 probes, just within
it. The exception is a caller with much shorter intervals than the defaults (tests poll every
50 ms, the simulator every second): probes in the first 5 minutes are never held back, so a test
cannot stall, and such a caller may exceed the budget; it then polls every 15 s (or, if it reaches
its 40th probe after 5 minutes, waits for the 10-minute mark).

**Without a prior** (the first drill of a target): the interval grows from `initial` (0.25 s) by
`factor` to `maximum` (5 s), so a resource ready within half a minute is noticed at most 5 s late;
then to `proportion` (15%) of the time waited, never more than `ceiling` (30 s). The delay is at
most 15% of the wait, at most 30 s, and a long wait costs about 60% of fixed 15 s polling.

**With a prior** (`expected` seconds from the start of the wait, and `spread`: how far off it may
be, 20% of it by default; see `expected_window`) the resource should be ready within a window
around `expected`:
- Inside the window the interval is the accuracy target, max(5 s, 0.2% of the wait) (`accuracy`,
  `accuracy_share`; `maximum` when that is smaller), so a resource ready there is noticed at
  most that late, *as far as the budget pays for it*: when the probes the budget still allows by
  the window's end are fewer than the target needs, every interval is stretched by the same
  factor. For a prior within ±20% the target holds in every trial at 2 min, 1 h and 2 h; at 10
  and 30 minutes a 5 s spacing across the window costs more probes than fixed 15 s polling makes,
  and the delay is up to about 6 s (bench/RESULTS.md §2).
- Before the window, probes are sparse, never more often than without a prior: when the window
  needs the whole budget the interval doubles (`sparse_share` of the time waited), otherwise the
  probes the window will not need are spread evenly up to it, and one probe lands on the window's
  start. A resource ready long before its window (a prior far too long) is noticed at most twice
  its ready time (`maximum` at the least) after the start; with budget to spare, within one interval.
  A wrong prior costs accuracy, never budget.
- After the window (the resource is later than every earlier drill), the interval grows again
  from the accuracy target by `proportion` of the time past the window, up to the no-prior one.

Every sleep ends at the deadline at the latest. Jitter shortens each interval by up to `jitter`
(10%), never lengthens it, so the bounds above hold; it spreads many drills' probes apart, and it is
drawn from `random.Random(seed)`, so a seeded schedule is reproducible.
"""

from __future__ import annotations

import math
import random
import time
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Any, Iterator, Optional

DEFAULT_SPREAD = 0.2  # without a spread, the prior is taken to be good to within 20%
MIN_SLEEP = 1e-3  # seconds: never probe twice at the same instant
MAX_SPREAD = 0.9  # a spread of 90% of the expected time (or more) means: ready within 10× expected


def expected_window(expected: float, spread: float) -> tuple[float, float]:
    """When the resource should become ready: expected/(1 + r) to expected/(1 − r), r = spread/expected.

    Durations vary by a factor, not by a fixed amount, so the spread is read as how far the prior
    may be off *as a share of the actual time*: a prior within 20% (expected = actual × 0.8 … 1.2)
    puts the actual between expected/1.2 and expected/0.8. (readiness_history computes its spread
    that way, so the window contains every earlier run it came from.)
    """
    if expected <= 0:
        return (0.0, max(0.0, spread))
    r = min(spread / expected, MAX_SPREAD)
    return (expected / (1 + r), expected / (1 - r))


class ReadinessSchedule:
    """How long to sleep before the next readiness probe (see the module docstring).

    All times are seconds since the wait started. `deadline` is when the wait gives up.
    """

    def __init__(
        self,
        *,
        expected: Optional[float] = None,
        spread: Optional[float] = None,
        deadline: float = math.inf,
        initial: float = 0.25,
        factor: float = 1.6,
        maximum: float = 5.0,
        proportion: float = 0.15,
        ceiling: float = 30.0,
        accuracy: float = 5.0,
        accuracy_share: float = 0.002,
        sparse_share: float = 1.0,
        budget_interval: float = 15.0,
        budget_from: float = 600.0,
        jitter: float = 0.1,
        seed: Any = None,
    ) -> None:
        if expected is not None and (not math.isfinite(expected) or expected < 0):
            expected = None  # a nonsensical prior is no prior
        self.expected = expected
        self.window: Optional[tuple[float, float]] = None
        if expected is not None:
            if spread is None or not math.isfinite(spread) or spread < 0:
                spread = DEFAULT_SPREAD * expected
            self.window = expected_window(expected, spread)
        self.deadline = deadline
        self.initial, self.factor, self.maximum = initial, factor, maximum
        self.proportion, self.ceiling = proportion, max(ceiling, maximum)
        self.accuracy, self.accuracy_share, self.sparse_share = accuracy, accuracy_share, sparse_share
        self.budget_interval, self.budget_from = budget_interval, budget_from
        self.jitter = jitter
        self._rng = random.Random(seed)

    # ---------------------------------------------------------------- the answer

    def next_sleep(self, elapsed: float, polls: int) -> float:
        """Seconds to sleep after probe number `polls` (1 = the first) failed at `elapsed`."""
        remaining = self.deadline - elapsed
        if remaining <= 0:
            return 0.0
        interval = self._desired(elapsed, polls) * self._rng.uniform(1.0 - self.jitter, 1.0)
        if self._phase(elapsed) == "window":
            # what the budget affords, not jittered: jitter would spend the probes kept for the window's end
            interval = max(interval, self._affordable_interval(elapsed, polls))
        at = elapsed + max(interval, MIN_SLEEP)
        if self._phase(elapsed) == "before" and at > self.window[0]:
            at = self.window[0]  # land on the window's start
        at = max(at, self._earliest_in_budget(elapsed, polls))
        return max(0.0, min(at - elapsed, remaining))

    def accuracy_at(self, elapsed: float) -> float:
        """The detection delay aimed at around the expected finish: max(5 s, 0.2% of the wait)."""
        return max(min(self.maximum, self.accuracy), self.accuracy_share * elapsed)

    # ---------------------------------------------------------------- the parts

    def _without_prior(self, elapsed: float, polls: int) -> float:
        ramp = self.initial * self.factor ** max(0, polls - 1)
        if ramp < self.maximum:
            return ramp
        return min(max(self.maximum, self.proportion * elapsed), self.ceiling)

    def _phase(self, elapsed: float) -> str:
        """"none" (no prior), "before", "window" or "after" the window."""
        if self.window is None:
            return "none"
        lo, hi = self.window
        if elapsed < lo - MIN_SLEEP:
            return "before"
        return "window" if elapsed <= hi else "after"

    def _desired(self, elapsed: float, polls: int) -> float:
        phase = self._phase(elapsed)
        if phase == "none":
            return self._without_prior(elapsed, polls)
        if phase == "before":
            return self._before_window(elapsed, polls)
        dense = self.accuracy_at(elapsed)
        if phase == "window":
            return dense
        late = self.proportion * (elapsed - self.window[1])
        return max(dense, min(late, self._without_prior(elapsed, polls)))

    def _before_window(self, elapsed: float, polls: int) -> float:
        """Sparse: never more often than without a prior (after its first ramp); as sparse as
        doubling the interval each probe when the window needs the whole budget, and in between
        spreading evenly what the budget has beyond the window's needs."""
        lo, hi = self.window
        floor = min(max(self.maximum, self.proportion * elapsed), self.ceiling)
        doubling = max(floor, self.sparse_share * elapsed)
        allowed = self._allowed_by(hi)
        if allowed is None:
            return doubling
        spare = allowed - polls - self._probes_to_cover(lo, hi)
        if spare < 1:
            return doubling
        return max(floor, min(doubling, (lo - elapsed) / spare))

    def _probes_to_cover(self, start: float, end: float, *, margin: bool = True) -> float:
        """Probes that poll [start, end] at the accuracy target; with `margin`, count in that
        jittered intervals are up to `jitter` shorter, and one more."""
        floor, share = min(self.maximum, self.accuracy), self.accuracy_share
        turn = floor / share if share > 0 else math.inf  # where 0.2% of the wait passes 5 s
        probes = 0.0
        if start < turn:
            probes += (max(start, min(end, turn)) - start) / floor
        if end > turn:
            probes += math.log(end / max(start, turn)) / share
        return probes / (1.0 - self.jitter) + 1.0 if margin else probes

    def _allowed_by(self, until: float) -> Optional[float]:
        """How many probes the budget allows by `until` (keeping one in hand), or None when the
        budget says nothing about a wait that short."""
        if until >= self.budget_from:
            return until / self.budget_interval  # probe n comes at budget_interval × (n − 1) at the earliest
        if until >= self.budget_from / 2:
            return self._before_budget() - 1.0
        return None

    def _affordable_interval(self, elapsed: float, polls: int) -> float:
        """In the window: the accuracy target stretched by as much as the budget needs, so the
        probes it still allows last to the window's end (0 when the budget allows them all)."""
        hi = self.window[1]
        allowed = self._allowed_by(hi)
        if allowed is None:
            return 0.0
        left = allowed - polls
        if left < 1:  # the next probe at the window's end (the hard limit is _earliest_in_budget's)
            return hi - elapsed
        need = self._probes_to_cover(elapsed, hi, margin=False)
        return self.accuracy_at(elapsed) * need / left if need > left else 0.0

    def _before_budget(self) -> int:
        """How many probes fixed `budget_interval` polling makes before `budget_from`."""
        return math.ceil(self.budget_from / self.budget_interval)

    def _earliest_in_budget(self, elapsed: float, polls: int) -> float:
        """The earliest time probe `polls + 1` may come so that a wait of budget_from or more costs
        no more probes than fixed budget_interval polling: at most `_before_budget()` probes before
        budget_from, and from then on probe n no earlier than budget_interval × (n − 1).

        Probes in the first half of budget_from are never held back (a test polling every 50 ms
        must not stall); a schedule that spent more than the budget there polls every
        budget_interval from then on.
        """
        before = self._before_budget()
        if polls < before or elapsed < self.budget_from / 2:
            return 0.0
        if polls == before and elapsed < self.budget_from:
            return self.budget_from
        return min(self.budget_interval * polls, elapsed + self.budget_interval)


# -------------------------------------------------------------------- the provider's own ready time


def reported_ready_at(value: Any) -> Optional[datetime]:
    """The time the provider says the resource became ready, if the probe's value carries one.

    The convention (documented in `poll_until`): a probe that knows it returns a value with
    `ready_at`, either a `RestoredResource` whose `details["ready_at"]` is an ISO 8601 time with a
    zone (or a timezone-aware datetime), or a dict with a "ready_at" key. Anything else: None.
    """
    details = getattr(value, "details", None)
    raw = details.get("ready_at") if isinstance(details, dict) else None
    if raw is None and isinstance(value, dict):
        raw = value.get("ready_at")
    return parse_ready_at(raw)


def parse_ready_at(raw: Any) -> Optional[datetime]:
    """An aware datetime from a datetime or an ISO 8601 string; None for anything unusable
    (a naive time is ambiguous, so it is not used)."""
    if isinstance(raw, str):
        try:
            raw = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            return None
    if isinstance(raw, datetime) and raw.tzinfo is not None:
        return raw.astimezone(timezone.utc)
    return None


def ready_time(reported: Optional[datetime], *, noticed: datetime, not_before: Optional[datetime] = None) -> datetime:
    """When the resource became ready, for the RTO: the provider's own time when it has one and it
    is plausible (not after we noticed, not before the restore started: clocks differ), else the
    time we noticed."""
    if reported is None or reported > noticed or (not_before is not None and reported < not_before):
        return noticed
    return reported


# ---------------------------------------------------------------------- the expected finish of a wait

# (monotonic time the resource should be ready at, spread in seconds), set around a provider's
# wait_ready by the activity that knows earlier drills of the target (activities/drill.py).
_EXPECTED: ContextVar[Optional[tuple[float, Optional[float]]]] = ContextVar("drdrill_expected_ready", default=None)


@contextmanager
def expecting_ready_in(seconds: Optional[float], spread: Optional[float] = None) -> Iterator[None]:
    """Within this block, every `poll_until` that is not told otherwise expects the resource ready
    `seconds` from now (± `spread`). A provider's wait_ready may poll several times in a row (the
    instance runs, then its status checks pass): each wait gets the time left until that moment.
    None: no prior."""
    token = _EXPECTED.set((time.monotonic() + seconds, spread) if seconds is not None and seconds > 0 else None)
    try:
        yield
    finally:
        _EXPECTED.reset(token)


def expected_from_now(now: float) -> tuple[Optional[float], Optional[float]]:
    """(seconds from `now` (monotonic) until the expected ready time, spread), or (None, None)."""
    found = _EXPECTED.get()
    if found is None:
        return None, None
    at, spread = found
    return max(0.0, at - now), spread
