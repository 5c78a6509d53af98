"""The provider interface: every cloud (and PostgreSQL, and the simulator) is one module behind it.

A provider is synchronous (the cloud SDKs are); activities run it in the worker's thread pool.
Long waits call `heartbeat()` on every poll so Temporal notices a dead worker quickly and so a
cancellation reaches the activity.

Rules every provider keeps:
- names are deterministic (`ctx.resource_name(target)`), and creation is idempotent: asking twice
  for the same thing returns the first one;
- every created resource carries `ctx.tags(target)` at creation;
- teardown deletes only resources carrying this drill's `drdrill:drill-id` tag, and treats
  "already gone" as done;
- bad input raises `ProviderError(..., retryable=False)`; transient trouble raises a retryable one.
"""

from __future__ import annotations

import random
import time
from abc import ABC, abstractmethod
from datetime import datetime, timedelta
from typing import Any, Callable, Optional, Sequence

from activities.models import (
    TAG_DRILL_ID,
    DrillContext,
    Environment,
    Finding,
    IsolationProof,
    Orphan,
    RecoveryPoint,
    RestoredResource,
    TeardownReport,
)
from activities.providers.readiness import ReadinessSchedule


class ProviderError(Exception):
    """A provider operation failed. `code` is a stable finding code (e.g. RECOVERY_POINT_NOT_FOUND)."""

    def __init__(self, code: str, message: str, *, retryable: bool = False, could_not_verify: bool = False):
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable
        self.could_not_verify = could_not_verify

    def finding(self, target: Optional[str] = None) -> Finding:
        return Finding(code=self.code, message=self.message, target=target, could_not_verify=self.could_not_verify)


class NotReadyYet(Exception):
    """Raised by a readiness probe that should be polled again."""


def heartbeat(*details: Any) -> None:
    """Heartbeat the running activity (no-op outside an activity, e.g. in `drdrill backup`)."""
    try:
        from temporalio import activity

        if activity.in_activity():
            activity.heartbeat(*details)
            if activity.is_cancelled():
                from temporalio.exceptions import CancelledError

                raise CancelledError("the drill was cancelled")
    except RuntimeError:
        pass


def poll_until(
    probe: Callable[[], Any],
    *,
    timeout: float,
    what: str,
    initial: float = 0.25,
    maximum: float = 5.0,
    factor: float = 1.6,
    proportion: float = 0.15,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    expected: Optional[float] = None,
    spread: Optional[float] = None,
    seed: Any = None,
) -> Any:
    """Call `probe` until it returns without raising NotReadyYet; return the probe's value.

    When to probe again is `ReadinessSchedule`'s answer (activities/providers/readiness.py, which
    states what it guarantees). Without `expected` the interval grows from `initial` by `factor`
    to `maximum`, then to `proportion` of the time waited (at most 30 s). With `expected` (seconds
    from the start of *this* wait until the resource is ready, e.g. from earlier drills of the
    same target: activities/readiness_history.py) and optionally its `spread`, probes are sparse
    early and dense around the expected finish, so the detection delay, which the measured RTO
    carries, is max(5 s, 0.2% of the wait) wherever the probe budget allows. Either way a wait of
    10 minutes or more costs no more probes than polling every 15 s. `seed` seeds the jitter.

    The provider's own ready time: poll_until returns the probe's value unchanged, so a probe can
    carry what the cloud reports. A provider that knows when the resource became ready puts it in
    the RestoredResource its wait_ready returns, as `details["ready_at"]` (ISO 8601 with a zone).
    The RTO then uses `readiness.ready_time(readiness.reported_ready_at(resource), noticed=...)`,
    which falls back to the time the drill noticed when there is none or it is implausible.

    Heartbeats after every probe that is not ready, and during a long sleep at least every third
    of the activity's heartbeat timeout (10 s outside an activity), so the sleep neither outlives
    the heartbeat timeout nor delays a cancellation. Raises ProviderError(READY_TIMEOUT) at the
    deadline, after one last probe there.
    """
    schedule = ReadinessSchedule(
        expected=expected, spread=spread, deadline=timeout, initial=initial, maximum=maximum, factor=factor,
        proportion=proportion, seed=seed,
    )
    pause = 10.0
    try:
        from temporalio import activity

        if activity.in_activity() and activity.info().heartbeat_timeout:
            pause = max(0.01, activity.info().heartbeat_timeout.total_seconds() / 3)
    except RuntimeError:
        pass
    started = clock()
    polls = 0
    while True:
        polls += 1
        try:
            return probe()
        except NotReadyYet as exc:
            waiting = {"waiting_for": what, "polls": polls, "last": str(exc)}
            heartbeat(waiting)
            waited = clock() - started
            if waited >= timeout:
                raise ProviderError("READY_TIMEOUT", f"{what} was not ready after {timeout:.0f}s ({polls} polls): {exc}") from None
            nap = schedule.next_sleep(waited, polls)
            while nap > 1e-9:
                piece = min(nap, pause)
                sleep(piece)
                nap -= piece
                if nap > 1e-9:
                    heartbeat({**waiting, "sleeping": round(nap, 1)})


def select_point(
    points: Sequence[RecoveryPoint],
    rule: str,
    *,
    now: datetime,
    at: Optional[datetime] = None,
    within: Optional[timedelta] = None,
    seed: Optional[int | str] = None,
    max_age: Optional[timedelta] = None,
    target: str = "",
) -> RecoveryPoint:
    """Apply a recovery-point rule to candidates (shared by every provider).

    latest: the newest; at: the newest at or before `at`; random: uniformly among those no older
    than `within` (seeded, so a retried activity picks the same one). `max_age` adds a finding.
    """
    ordered = sorted(points, key=lambda p: p.consistent_time)
    if not ordered:
        raise ProviderError("RECOVERY_POINT_NOT_FOUND", f"target {target}: no recovery point exists")
    if rule == "latest":
        chosen = ordered[-1]
    elif rule == "at":
        assert at is not None
        eligible = [p for p in ordered if p.consistent_time <= at]
        if not eligible:
            raise ProviderError(
                "RECOVERY_POINT_NOT_FOUND",
                f"target {target}: no recovery point at or before {at.isoformat()} "
                f"(oldest is {ordered[0].consistent_time.isoformat()})",
            )
        chosen = eligible[-1]
    elif rule == "random":
        assert within is not None
        eligible = [p for p in ordered if now - within <= p.consistent_time <= now]
        if not eligible:
            raise ProviderError(
                "RECOVERY_POINT_NOT_FOUND", f"target {target}: no recovery point within the last {within}"
            )
        chosen = random.Random(str(seed)).choice(eligible)
    else:
        raise ProviderError("BAD_RULE", f"unknown recovery point rule {rule!r}")
    chosen = chosen.model_copy(deep=True)
    chosen.candidates = len(ordered)
    age = now - chosen.consistent_time
    if max_age is not None and age > max_age:
        chosen.findings.append(
            Finding(
                code="RECOVERY_POINT_STALE",
                message=f"target {target}: the chosen recovery point is {age} old, older than max_age {max_age}",
                target=target,
            )
        )
    return chosen


def select_for_target(points: Sequence[RecoveryPoint], ctx: DrillContext, target: Any) -> RecoveryPoint:
    """Apply `target.recovery_point` to candidate points, as of the drill's declared time.

    A random choice is seeded by the drill and target (or the rule's own seed), so a retried
    activity picks the same point and each target of a drill draws independently.
    """
    rule = target.recovery_point
    return select_point(
        points,
        rule.rule,
        now=ctx.declared,
        at=rule.at,
        within=rule.within,
        seed=rule.seed if rule.seed is not None else f"{ctx.drill_id}/{target.name}",
        max_age=rule.max_age,
        target=target.name,
    )


def require_drill_tag(tags: Optional[dict[str, str]], drill_id: Optional[str] = None) -> bool:
    """True when `tags` say drdrill created this resource (for `drill_id`, when given)."""
    if not tags or not isinstance(tags, dict):
        return False
    value = tags.get(TAG_DRILL_ID)
    if not value or not isinstance(value, str):  # a malformed tag is not drdrill's
        return False
    return drill_id is None or value == drill_id


class Provider(ABC):
    """One provider family (postgres, aws, azure, gcp, sim). Construct with its clients/settings."""

    family: str = ""

    @abstractmethod
    def find_recovery_point(self, ctx: DrillContext, target: Any) -> RecoveryPoint:
        """Pick the recovery point for `target` (a drills.spec target model) by its rule."""

    @abstractmethod
    def create_isolation(self, ctx: DrillContext, isolation: Any, targets: list[Any]) -> Environment:
        """Create (idempotently) the drill's isolated environment for this family's targets."""

    @abstractmethod
    def verify_isolation(self, ctx: DrillContext, env: Environment) -> IsolationProof:
        """Read the environment back and prove there is no route to production."""

    @abstractmethod
    def restore(self, ctx: DrillContext, target: Any, point: RecoveryPoint, env: Environment) -> RestoredResource:
        """Restore `point` into `env` (idempotently: deterministic names / client tokens)."""

    @abstractmethod
    def wait_ready(self, ctx: DrillContext, target: Any, resource: RestoredResource, timeout: float) -> RestoredResource:
        """Wait (heartbeating) until the restored resource serves; fill in its endpoint."""

    @abstractmethod
    def teardown(self, ctx: DrillContext, env: Environment) -> TeardownReport:
        """Delete everything this drill created in `env` and only that. Absent is success."""

    @abstractmethod
    def list_orphans(self, now: datetime, active_drill_ids: set[str]) -> list[Orphan]:
        """Tagged resources whose drill is not active or whose expires-at has passed."""

    @abstractmethod
    def delete_orphan(self, orphan: Orphan) -> str:
        """Delete one orphan (re-checking its tag first). Returns what was done."""

    def close(self) -> None:
        """Release clients."""


def _default_from_environment(cls, env, settings):  # pragma: no cover - trivial
    return cls()


Provider.from_environment = classmethod(_default_from_environment)  # type: ignore[attr-defined]
