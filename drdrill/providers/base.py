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
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Mapping, Optional, Sequence

from drdrill.core.progress import heartbeat, heartbeat_interval
from drdrill.core.times import parse_time_or_none
from drdrill.providers.readiness import ReadinessSchedule, expected_from_now
from drdrill.core.models import (
    TAG_DRILL_ID,
    TAG_EXPIRES_AT,
    TAG_TARGET,
    DeletionOutcome,
    DrillContext,
    Environment,
    Finding,
    IsolationProof,
    Orphan,
    RecoveryPoint,
    RestoredResource,
    TeardownReport,
)
from drdrill.core.errors import ProviderError  # the providers' error, raised below them too (core/errors.py)
from drdrill.core.selection import ProtectedResource
from drdrill.core.schema import IsolationBase, Selection, TargetBase


class NotReadyYet(Exception):
    """Raised by a readiness probe that should be polled again."""


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

    When to probe again is `ReadinessSchedule`'s answer (drdrill/providers/readiness.py, which
    states what it guarantees). Without `expected` the interval grows from `initial` by `factor`
    to `maximum`, then to `proportion` of the time waited (at most 30 s). With `expected` (seconds
    from the start of *this* wait until the resource is ready, e.g. from earlier drills of the
    same target: drdrill/evidence/history.py) and optionally its `spread`, probes are sparse
    early and dense around the expected finish, so the detection delay, which the measured RTO
    carries, is max(5 s, 0.2% of the wait) wherever the probe budget allows. Either way a wait of
    10 minutes or more costs no more probes than polling every 15 s. `seed` seeds the jitter.
    Without `expected`, the expectation set by `readiness.expecting_ready_in` around the provider's
    wait_ready (by the activity, from the target's restore history) applies.

    poll_until returns the probe's value unchanged, so a probe can carry what the cloud reports,
    such as the provider's own ready time (`details["ready_at"]`: see readiness.py).

    Heartbeats after every probe that is not ready, and during a long sleep at least every third
    of the activity's heartbeat timeout (10 s outside an activity), so the sleep neither outlives
    the heartbeat timeout nor delays a cancellation. Raises ProviderError(READY_TIMEOUT) at the
    deadline, after one last probe there.
    """
    if expected is None and clock is time.monotonic:
        expected, spread = expected_from_now(clock())  # set by the activity: earlier drills' restore time
    schedule = ReadinessSchedule(
        expected=expected, spread=spread, deadline=timeout, initial=initial, maximum=maximum, factor=factor,
        proportion=proportion, seed=seed,
    )
    pause = heartbeat_interval()
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
            _sleep_heartbeating(schedule.next_sleep(waited, polls), pause, sleep, waiting)


def _sleep_heartbeating(nap: float, pause: float, sleep: Callable[[float], None], waiting: dict) -> None:
    """Sleep `nap` seconds in pieces of at most `pause`, heartbeating between them."""
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
    """Apply `target.recovery_point` to candidate points, as of the drill's `as_of` moment (its
    declared time unless the drill was started "as of" another moment).

    A drill as of an earlier moment only sees the points that existed then: a later one would be a
    recovery point from after the disaster. A random choice is seeded by the drill and target (or
    the rule's own seed), so a retried activity picks the same point and each target of a drill
    draws independently.
    """
    rule = target.recovery_point
    now = ctx.as_of or ctx.declared
    if now < ctx.declared:
        existing = [p for p in points if p.consistent_time <= now]
        if points and not existing:
            raise ProviderError(
                "RECOVERY_POINT_NOT_FOUND", f"target {target.name}: no recovery point existed as of {now.isoformat()}"
            )
        points = existing
    return select_point(
        points,
        rule.rule,
        now=now,
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


@dataclass
class Resource:
    """One resource a provider found carrying drdrill's tags (or named by an environment).

    `kind` is one of the provider's DELETE_ORDER kinds; `scope` is where it lives (an AWS region, a
    GCP zone or project, an Azure resource group, a directory); `extra` holds whatever the
    provider's own primitives need to delete it (a VPC id, a state)."""

    kind: str
    id: str
    tags: dict[str, str] = field(default_factory=dict)
    scope: Optional[str] = None
    state: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.kind} {self.id}"


class NotOurs(Exception):
    """Raised by a provider's `current_tags` for a resource it must never touch, whatever its tags
    say (a directory outside its root); the message is the reason recorded as `refused`."""


class Provider(ABC):
    """One provider family (postgres, aws, azure, gcp, sim): a template in the style of libcloud's
    NodeDriver. Construct with its clients and settings (`from_environment`).

    A provider supplies two kinds of methods.

    The drill's steps, which are its own: `find_recovery_point`, `create_isolation`,
    `verify_isolation`, `restore`, `wait_ready`.

    The primitives of cleaning up, from which this class builds teardown, the orphan listing and the
    orphan deletion once, for every provider:
    - `DELETE_ORDER`: its resource kinds, in the order they must be deleted (instances before the
      volumes and networks they use); `CONTAINERS`: the kinds that hold others (a VPC, a network).
      A container is kept when anything inside it is not provably this drill's;
    - `inventory(drill_id, env)`: every resource carrying drdrill's tag (this drill's only, when
      `drill_id` is given; within `env`'s scope, when given);
    - `current_tags(resource)`: the tags it carries now, None when it no longer exists;
    - `delete(resource)`: delete it and wait until it is gone; True when it was deleted, False when
      it was already gone;
    - `named_resources(env)`: what the environment record names (optional): a named resource the
      tag search did not find is either gone or not ours, and the report says which;
    - `map_error(exc)`: turn one of its SDK's exceptions into a ProviderError (used by `call`).
    """

    family: str = ""
    DELETE_ORDER: tuple[str, ...] = ()
    CONTAINERS: frozenset[str] = frozenset()
    # The kinds whose restore.environment this provider hands to what it starts (an application,
    # an instance's user data), filled in by the restore and wait_ready activities. A target of
    # another kind that has one is refused (ENVIRONMENT_NOT_SUPPORTED), never silently ignored.
    APPLIES_ENVIRONMENT: tuple[str, ...] = ()

    @classmethod
    def from_environment(cls, env: Mapping[str, str], settings: Optional[dict] = None) -> "Provider":
        """Build the provider from the worker's environment (DRDRILL_* variables, SDK credentials)."""
        return cls()

    # ------------------------------------------------------------------ the drill's steps

    @abstractmethod
    def find_recovery_point(self, ctx: DrillContext, target: TargetBase) -> RecoveryPoint:
        """Pick the recovery point for `target` (a target model of a family schema, drdrill/providers/<family>/schema.py) by its rule."""

    @abstractmethod
    def create_isolation(self, ctx: DrillContext, isolation: IsolationBase, targets: list[TargetBase]) -> Environment:
        """Create (idempotently) the drill's isolated environment for this family's targets."""

    @abstractmethod
    def verify_isolation(self, ctx: DrillContext, env: Environment) -> IsolationProof:
        """Read the environment back and prove there is no route to production."""

    @abstractmethod
    def restore(self, ctx: DrillContext, target: TargetBase, point: RecoveryPoint, env: Environment) -> RestoredResource:
        """Restore `point` into `env` (idempotently: deterministic names / client tokens)."""

    def stage(self, ctx: DrillContext, target: TargetBase, point: RecoveryPoint, isolation: IsolationBase) -> Optional[str]:
        """For a target that `stages`: the part of its restore that starts nothing (a physical
        backup's files laid down), run while the isolation is made and proven; `restore` continues
        from it. What it did, for the timeline; None: nothing to stage (restore does it all)."""
        return None

    @abstractmethod
    def wait_ready(self, ctx: DrillContext, target: TargetBase, resource: RestoredResource, timeout: float) -> RestoredResource:
        """Wait (heartbeating) until the restored resource serves; fill in its endpoint."""

    # ------------------------------------------------------------------ selections and coverage (optional)

    def discover(self, kind: str, selection: Selection) -> list[ProtectedResource]:
        """The resources of target kind `kind` (aws.ebs, azure.vm, …) that `selection` matches, each
        with the `source` that restores it, where it lives (`scope`) and the times of its recovery
        points (drdrill/core/selection.py chooses among them). Never lists what drdrill created."""
        raise ProviderError(
            "SELECTION_NOT_SUPPORTED", f"the {self.family} provider does not support selections: name the resource in 'source:'"
        )

    def protected_inventory(self, protected_tag: Optional[str]) -> list[ProtectedResource]:
        """Every resource of the kinds this provider restores, for coverage: `protected_by` says why
        one is protected (it carries `protected_tag`, it has recovery points), and is empty for one
        that is not. Never lists what drdrill created."""
        raise ProviderError("INVENTORY_NOT_SUPPORTED", f"the {self.family} provider keeps no inventory of protected resources")

    # ------------------------------------------------------------------ primitives of cleaning up

    def inventory(self, drill_id: Optional[str] = None, env: Optional[Environment] = None) -> list[Resource]:
        """Every resource carrying drdrill's tag (this drill's only, when `drill_id` is given)."""
        raise NotImplementedError

    def current_tags(self, resource: Resource) -> Optional[dict[str, str]]:
        """The resource's tags now; None when it does not exist. May raise NotOurs."""
        raise NotImplementedError

    def delete(self, resource: Resource) -> bool:
        """Delete the resource and wait until it is gone: True if deleted, False if already gone."""
        raise NotImplementedError

    def named_resources(self, env: Environment) -> list[Resource]:
        """Resources the environment record names (their tags unknown). Default: none."""
        return []

    def map_error(self, exc: Exception) -> Optional[ProviderError]:
        """The ProviderError for one of this provider's SDK exceptions; None: not an SDK error."""
        return None

    # ------------------------------------------------------------------ shared helpers

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call the SDK, turning its errors into ProviderErrors (`map_error`)."""
        try:
            return fn(*args, **kwargs)
        except ProviderError:
            raise
        except Exception as exc:  # noqa: BLE001 - mapped, or passed on as it is
            mapped = self.map_error(exc)
            if mapped is None:
                raise
            raise mapped from exc

    def resource_of(self, orphan: Orphan) -> Resource:
        """The Resource an orphan (from `list_orphans`) stands for."""
        return Resource(orphan.kind, orphan.id, scope=orphan.region, state=orphan.details.get("state", ""), extra=dict(orphan.details.get("extra") or {}))

    # ------------------------------------------------------------------ the algorithms, once

    def teardown(self, ctx: DrillContext, env: Environment) -> TeardownReport:
        """Delete everything this drill created in `env` and only that, in DELETE_ORDER.

        Absent is success. A resource without this drill's tag is refused, and a container holding
        one is kept (refused) too, so a network with something not ours in it is never deleted.
        Every failure is retryable: the workflow retries teardown until it succeeds, and alerts."""
        try:
            return self._teardown(ctx, env)
        except ProviderError as exc:
            exc.retryable = True
            raise
        except Exception as exc:  # noqa: BLE001 - an SDK error the provider did not map
            mapped = self.map_error(exc) or ProviderError("TEARDOWN_FAILED", f"{type(exc).__name__}: {exc}")
            mapped.retryable = True
            raise mapped from exc

    def _teardown(self, ctx: DrillContext, env: Environment) -> TeardownReport:
        report = TeardownReport(family=self.family, environment_id=env.id)
        found = self.inventory(ctx.drill_id, env)
        found_ids = {(r.kind, r.id) for r in found}
        for named in self.named_resources(env):
            if (named.kind, named.id) in found_ids:
                continue
            try:
                tags = self.current_tags(named)
            except NotOurs as why:
                report.add(named.kind, named.id, "refused", str(why), named.scope)
                continue
            if tags is None:
                report.add(named.kind, named.id, "already_gone", region=named.scope)
            elif not require_drill_tag(tags, ctx.drill_id):
                report.add(named.kind, named.id, "refused", f"it lacks {TAG_DRILL_ID}={ctx.drill_id}", named.scope)
        for res in self._in_delete_order(found):
            if not require_drill_tag(res.tags, ctx.drill_id):  # the inventory filters by tag: never, but check
                report.add(res.kind, res.id, "refused", f"it lacks {TAG_DRILL_ID}={ctx.drill_id}", res.scope)
                continue
            if res.kind in self.CONTAINERS and report.refused:
                report.add(res.kind, res.id, "refused", "kept: it holds resources without this drill's tag", res.scope)
                continue
            heartbeat({"deleting": res.label})
            try:
                deleted = self.delete(res)
            except ProviderError as exc:
                if report.refused:
                    exc.message = f"{exc.message}; left alone because they lack {TAG_DRILL_ID}={ctx.drill_id}: {', '.join(report.refused)}"
                    exc.args = (exc.message,)
                raise
            report.add(res.kind, res.id, "deleted" if deleted else "already_gone", region=res.scope)
        return report

    def _in_delete_order(self, resources: list[Resource]) -> list[Resource]:
        def rank(r: Resource) -> int:
            if r.kind not in self.DELETE_ORDER:
                raise ProviderError("BAD_STATE", f"{self.family}: unknown resource kind {r.kind!r} (not in DELETE_ORDER)")
            return self.DELETE_ORDER.index(r.kind)

        return sorted(resources, key=lambda r: (rank(r), r.id))

    def list_orphans(self, now: datetime, active_drill_ids: set[str]) -> list[Orphan]:
        """Tagged resources whose drill is not active, or whose drdrill:expires-at has passed.

        A resource whose expiry tag is missing or malformed counts as not expired."""
        out: list[Orphan] = []
        for res in self._in_delete_order(self.inventory()):
            drill = res.tags.get(TAG_DRILL_ID, "")
            if not require_drill_tag(res.tags):
                continue
            expires = parse_time_or_none(res.tags.get(TAG_EXPIRES_AT))
            expired = expires is not None and expires < now
            if drill in active_drill_ids and not expired:
                continue
            out.append(
                Orphan(
                    provider=self.family,
                    id=res.id,
                    kind=res.kind,
                    drill_id=drill,
                    expires_at=expires,
                    region=res.scope,
                    details={
                        "target": res.tags.get(TAG_TARGET),
                        "state": res.state,
                        "reason": "expired" if expired else "drill not active",
                        "delete_order": self.DELETE_ORDER.index(res.kind),
                        "extra": res.extra,
                    },
                )
            )
        return sorted(out, key=lambda o: (o.drill_id, o.details["delete_order"], o.id))

    def delete_orphan(self, orphan: Orphan) -> DeletionOutcome:
        """Delete one orphan after re-reading its tags: it must still carry its drill's tag."""
        res = self.resource_of(orphan)
        if res.kind not in self.DELETE_ORDER:
            raise ProviderError("BAD_STATE", f"{self.family}: unknown resource kind {res.kind!r}")
        try:
            tags = self.current_tags(res)
        except NotOurs as why:
            return DeletionOutcome(kind=res.kind, id=res.id, result="refused", reason=str(why), region=res.scope)
        if tags is None:
            return DeletionOutcome(kind=res.kind, id=res.id, result="already_gone", region=res.scope)
        if not orphan.drill_id or not require_drill_tag(tags, orphan.drill_id):
            return DeletionOutcome(
                kind=res.kind,
                id=res.id,
                result="refused",
                reason=f"tag {TAG_DRILL_ID} is {tags.get(TAG_DRILL_ID)!r}, expected {orphan.drill_id!r}",
                region=res.scope,
            )
        res.tags = tags
        deleted = self.delete(res)
        return DeletionOutcome(kind=res.kind, id=res.id, result="deleted" if deleted else "already_gone", region=res.scope)

    def close(self) -> None:
        """Release clients."""
