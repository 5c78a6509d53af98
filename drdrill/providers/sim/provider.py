"""SimProvider: the sim family's drill steps (the package's docstring, drdrill/providers/sim/__init__.py, describes them)."""

from __future__ import annotations

import fcntl
import json
import os
import random
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from drdrill.core.durations import parse_duration
from drdrill.core.models import (
    TAG_DRILL_ID,
    DrillContext,
    Environment,
    IsolationCheck,
    IsolationProof,
    RecoveryPoint,
    RestoredResource,
)
from drdrill.core.paths import default_state_dir
from drdrill.core.progress import heartbeat_interval
from drdrill.providers.base import (
    NotReadyYet,
    Provider,
    ProviderError,
    Resource,
    heartbeat,
    poll_until,
    require_drill_tag,
    select_for_target,
)

# How often a simulated wait heartbeats (and so notices a cancellation): every SLEEP_STEP, or a sixth
# of the activity's heartbeat timeout when that is shorter (tests use 2 s). Temporal hears a heartbeat
# at most every 5 s anyway (worker.py's throttle), and each call costs the worker's event loop a task:
# at 0.2 s it was 6% of a worker's Python CPU in a burst of sim drills (bench/RESULTS.md §18).
SLEEP_STEP = 1.0

OPS = ("find_recovery_point", "create_isolation", "verify_isolation", "restore", "wait_ready", "teardown")


def default_state_path(env: Mapping[str, str] = os.environ) -> str:
    """DRDRILL_SIM_STATE, else sim-state.json in the state directory (drdrill.core.paths)."""
    return env.get("DRDRILL_SIM_STATE") or os.path.join(default_state_dir(env), "sim-state.json")


def _empty() -> dict:
    return {"version": 1, "resources": {}, "counters": {}, "running": {}, "events": []}


class SimState:
    """The shared JSON state file. `edit()` holds an exclusive flock for a read-modify-write."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    @contextmanager
    def _locked(self, exclusive: bool) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a+") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _load(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return _empty()
        except (ValueError, OSError) as exc:
            raise ProviderError("SIM_STATE_UNREADABLE", f"the sim state file {self.path} cannot be read: {exc}", retryable=True) from None
        base = _empty()
        base.update(data if isinstance(data, dict) else {})
        return base

    def read(self) -> dict:
        with self._locked(exclusive=False):
            return self._load()

    @contextmanager
    def edit(self) -> Iterator[dict]:
        with self._locked(exclusive=True):
            data = self._load()
            yield data
            if len(data["events"]) > 5000:
                del data["events"][:-5000]
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=str))
            os.replace(tmp, self.path)

    # ---- conveniences for tests, benchmarks and `drdrill` users

    def resources(self) -> dict[str, dict]:
        return self.read()["resources"]

    def tagged(self, drill_id: Optional[str] = None) -> list[dict]:
        """Resources carrying drdrill's drill-id tag (for `drill_id`, when given)."""
        return [r for r in self.resources().values() if require_drill_tag(r.get("tags"), drill_id)]

    def plant(self, resource_id: str, kind: str = "database", tags: Optional[dict] = None, **extra: Any) -> None:
        """Put a resource into the simulated cloud (tests: an untagged production database)."""
        with self.edit() as s:
            s["resources"][resource_id] = {"id": resource_id, "kind": kind, "tags": dict(tags or {}), **extra}

    def running(self, op: Optional[str] = None) -> list[dict]:
        return [r for r in self.read()["running"].values() if op is None or r.get("op") == op]

    def events(self, kind: Optional[str] = None) -> list[dict]:
        return [e for e in self.read()["events"] if kind is None or e.get("kind") == kind]


def _merge_faults(faults: list[dict]) -> dict:
    """The faults of an environment shared by several targets: the worst of each."""
    out: dict[str, Any] = {"throttle": 0, "transient_5xx": 0, "timeouts": 0, "ops": None, "fail": [], "teardown_failures": 0, "leaky_isolation": False, "latency": {}}
    for f in faults:
        for k in ("throttle", "transient_5xx", "timeouts", "teardown_failures"):
            out[k] = max(out[k], int(f.get(k) or 0))
        out["leaky_isolation"] = out["leaky_isolation"] or bool(f.get("leaky_isolation"))
        if f.get("ops") is not None:
            out["ops"] = sorted(set(out["ops"] or []) | set(f["ops"]))
        out["fail"] = sorted(set(out["fail"]) | set(f.get("fail") or []))
        for op, lat in (f.get("latency") or {}).items():
            out["latency"].setdefault(op, lat)
    return out


def _seconds(value: Any) -> float:
    if value is None:
        return 0.0
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, (int, float)):
        return float(value)
    # ISO 8601 ("PT2S") after a round trip through JSON
    return parse_duration(value).total_seconds()


def sample_latency(latency: Optional[dict], rng: random.Random = random._inst) -> float:  # type: ignore[attr-defined]
    """Seconds for one call, from a SimLatency (as a dict): fixed, uniform or normal."""
    if not latency:
        return 0.0
    if latency.get("fixed") is not None:
        return _seconds(latency["fixed"])
    if latency.get("min") is not None:
        return rng.uniform(_seconds(latency["min"]), _seconds(latency["max"]))
    return max(0.0, rng.gauss(_seconds(latency.get("mean")), _seconds(latency.get("stddev"))))


def _faults_of(target: Any) -> dict:
    source = getattr(target, "source", None)
    faults = getattr(source, "faults", None)
    if faults is None:
        return {}
    return faults.model_dump(mode="json") if hasattr(faults, "model_dump") else dict(faults)


def _liveness(details: Any) -> None:
    """Heartbeat without acting on a cancellation (a blocking call in progress)."""
    heartbeat(details, stop_if_cancelled=False)


class SimProvider(Provider):
    family = "sim"
    DELETE_ORDER = ("database", "snapshot", "disk", "network")
    CONTAINERS = frozenset({"network"})

    def __init__(self, state_path: Optional[str | Path] = None, speed: float = 1.0, clock=time.time, sleep=time.sleep):
        self.state = SimState(state_path or default_state_path())
        self.speed = float(speed)
        self.clock = clock
        self._sleep = sleep

    @classmethod
    def from_environment(cls, env: Mapping[str, str], settings: dict) -> "SimProvider":
        try:
            speed = float(settings.get("speed") or env.get("DRDRILL_SIM_SPEED") or 1.0)
        except ValueError:
            raise ProviderError("BAD_SETTINGS", f"DRDRILL_SIM_SPEED must be a number, not {env.get('DRDRILL_SIM_SPEED')!r}") from None
        if speed < 0:
            raise ProviderError("BAD_SETTINGS", "DRDRILL_SIM_SPEED must not be negative")
        return cls(settings.get("state") or default_state_path(env), speed=speed)

    # ------------------------------------------------------------ fault machinery

    def sleep(self, seconds: float, what: str, cancellable: bool = True) -> None:
        """Sleep (already scaled), heartbeating so a dead worker is noticed. A cancellable sleep
        (a poll) ends at a cancellation; an API call's latency does not: like a blocking SDK call,
        it completes, and what it created exists."""
        end = time.monotonic() + max(0.0, seconds)
        while True:
            if cancellable:
                heartbeat({"sim": what})
            else:
                _liveness({"sim": what})
            left = end - time.monotonic()
            if left <= 0:
                return
            self._sleep(min(SLEEP_STEP, heartbeat_interval(3 * SLEEP_STEP) / 2, left))

    def _latency(self, faults: dict, op: str) -> None:
        lat = (faults.get("latency") or {})
        seconds = sample_latency(lat.get(op) or lat.get("default")) * self.speed
        if seconds > 0:
            self.sleep(seconds, op, cancellable=False)

    @contextmanager
    def _operation(self, ctx_drill: str, scope: str, op: str, faults: dict) -> Iterator[int]:
        """Count the call, mark this process as running it, inject faults, apply latency."""
        key = f"{ctx_drill}/{scope}/{op}"
        with self.state.edit() as s:
            n = int(s["counters"].get(key, 0)) + 1
            s["counters"][key] = n
            s["running"][key] = {"op": op, "drill_id": ctx_drill, "scope": scope, "pid": os.getpid(), "call": n, "since": self.clock()}
            s["events"].append({"kind": op, "drill_id": ctx_drill, "scope": scope, "call": n, "pid": os.getpid(), "at": self.clock()})
        try:
            if op in (faults.get("fail") or []):
                raise ProviderError("SIM_PERMANENT_FAILURE", f"simulated permanent failure of {op} for {scope}", retryable=False)
            ops = faults.get("ops")
            if ops is None or op in ops:
                throttle = int(faults.get("throttle") or 0)
                t5xx = int(faults.get("transient_5xx") or 0)
                touts = int(faults.get("timeouts") or 0)
                if n <= throttle:
                    raise ProviderError("THROTTLED", f"simulated throttling of {op} for {scope} (call {n})", retryable=True)
                if n <= throttle + t5xx:
                    raise ProviderError("SERVICE_UNAVAILABLE", f"simulated 503 from {op} for {scope} (call {n})", retryable=True)
                if n <= throttle + t5xx + touts:
                    self._latency(faults, op)
                    raise ProviderError("REQUEST_TIMEOUT", f"simulated timeout of {op} for {scope} (call {n})", retryable=True)
            self._latency(faults, op)
            yield n
        finally:
            with self.state.edit() as s:
                if s["running"].get(key, {}).get("pid") == os.getpid():
                    s["running"].pop(key, None)

    # ------------------------------------------------------------ the drill's steps

    def find_recovery_point(self, ctx: DrillContext, target: Any) -> RecoveryPoint:
        faults = _faults_of(target)
        with self._operation(ctx.drill_id, target.name, "find_recovery_point", faults):
            src = target.source
            interval = src.point_interval
            # Points every `interval`, aligned to it (like scheduled snapshots), the newest at or before
            # the drill's "now" (`as_of`, the declared time unless the drill runs as of another date).
            epoch = datetime(2000, 1, 1, tzinfo=timezone.utc)
            now = ctx.as_of or ctx.declared
            newest = epoch + ((now - epoch) // interval) * interval
            points = [
                RecoveryPoint(
                    target=target.name,
                    provider="sim",
                    id=f"sim-{src.resource}-{(newest - i * interval):%Y%m%dT%H%M%SZ}",
                    consistent_time=newest - i * interval,
                    size_bytes=1 << 30,
                    metadata={"resource": src.resource, "simulated": True},
                )
                for i in range(src.points)
            ]
            return select_for_target(points, ctx, target)

    def create_isolation(self, ctx: DrillContext, isolation: Any, targets: list[Any]) -> Environment:
        faults = _merge_faults([_faults_of(t) for t in targets])
        env_id = ctx.resource_name()  # the id the workflow assumes when it never heard back
        with self._operation(ctx.drill_id, env_id, "create_isolation", faults):
            with self.state.edit() as s:
                if env_id not in s["resources"]:
                    s["resources"][env_id] = {
                        "id": env_id,
                        "kind": "network",
                        "tags": ctx.tags(),
                        "created": self.clock(),
                        "cidr": getattr(isolation, "network_cidr", "10.213.0.0/16"),
                        "routes": ["0.0.0.0/0 via production-gateway"] if faults["leaky_isolation"] else [],
                        "faults": faults,
                    }
            return Environment(
                family="sim",
                drill_id=ctx.drill_id,
                id=env_id,
                description=f"simulated network {env_id}",
                details={"state": str(self.state.path), "faults": faults},
            )

    def _env_faults(self, env: Environment) -> dict:
        rec = self.state.resources().get(env.id) or {}
        return rec.get("faults") or env.details.get("faults") or {}

    def verify_isolation(self, ctx: DrillContext, env: Environment) -> IsolationProof:
        faults = self._env_faults(env)
        with self._operation(ctx.drill_id, env.id, "verify_isolation", faults):
            rec = self.state.resources().get(env.id)
            proof = IsolationProof(family="sim", environment_id=env.id)
            if rec is None:
                proof.checks.append(IsolationCheck(name="network exists", outcome="FAILED", detail=f"{env.id} is gone"))
                return proof
            tagged = require_drill_tag(rec.get("tags"), ctx.drill_id)
            proof.checks.append(IsolationCheck(name="network tagged", outcome="PASSED" if tagged else "FAILED", detail=env.id))
            routes = rec.get("routes") or []
            proof.checks.append(
                IsolationCheck(
                    name="no route out",
                    outcome="FAILED" if routes else "PASSED",
                    detail=("routes: " + ", ".join(routes)) if routes else "the route table is empty",
                )
            )
            return proof

    def restore(self, ctx: DrillContext, target: Any, point: RecoveryPoint, env: Environment) -> RestoredResource:
        faults = _faults_of(target)
        rid = ctx.resource_name(target.name)
        with self._operation(ctx.drill_id, target.name, "restore", faults):
            now = self.clock()
            with self.state.edit() as s:
                if env.id not in s["resources"]:
                    raise ProviderError("ENVIRONMENT_GONE", f"the isolated network {env.id} does not exist", retryable=False)
                rec = s["resources"].get(rid)
                if rec is None:  # idempotent: a retried restore continues the first one
                    done_at = now + target.source.restore_time.total_seconds() * self.speed
                    rec = s["resources"][rid] = {
                        "id": rid,
                        "kind": "database",
                        "tags": ctx.tags(target.name),
                        "env": env.id,
                        "target": target.name,
                        "point": point.id,
                        "created": now,
                        "restored_at": done_at,
                        "ready_at": done_at + target.source.ready_after.total_seconds() * self.speed,
                        "never_ready": bool(faults.get("never_ready")),
                        "created_by_pid": os.getpid(),
                    }
                done_at = float(rec["restored_at"])
            self.sleep(done_at - self.clock(), f"restoring {rid}")
            if rid not in self.state.resources():
                raise ProviderError("RESOURCE_GONE", f"{rid} was deleted while it was being restored", retryable=False)
            return RestoredResource(
                target=target.name,
                provider="sim",
                id=rid,
                description=f"simulated {target.source.resource} restored from {point.id}",
                endpoint={"resource_id": rid, "sim_state": str(self.state.path)},
                details={"point": point.id, "env": env.id},
            )

    def wait_ready(self, ctx: DrillContext, target: Any, resource: RestoredResource, timeout: float) -> RestoredResource:
        faults = _faults_of(target)
        with self._operation(ctx.drill_id, target.name, "wait_ready", faults):

            def probe() -> RestoredResource:
                rec = self.state.resources().get(resource.id)
                if rec is None:
                    raise ProviderError("RESOURCE_GONE", f"{resource.id} no longer exists", retryable=False)
                if rec.get("never_ready") or self.clock() < float(rec.get("ready_at") or 0):
                    raise NotReadyYet(f"{resource.id} is still starting")
                return resource.model_copy(update={"ready": True})

            return poll_until(probe, timeout=timeout, what=f"simulated {resource.id}", initial=0.1, maximum=1.0)

    # ------------------------------------------------------------ primitives of cleaning up
    # The simulated cloud is one scope: a resource is a record in the state file, of one of the
    # DELETE_ORDER kinds; a database records the network it lives in ("env").

    def inventory(self, drill_id: Optional[str] = None, env: Optional[Environment] = None) -> list[Resource]:
        if env is None:
            return self._tagged(drill_id)
        # A teardown begins with this call, so it is the simulated "teardown" operation: its
        # faults (throttling, teardown_failures, latency) strike here, once per attempt.
        faults = self._env_faults(env)
        with self._operation(drill_id or env.drill_id, env.id, "teardown", faults) as call:
            failures = int(faults.get("teardown_failures") or 0)
            if call <= failures:
                raise ProviderError(
                    "TEARDOWN_FAILED", f"simulated: the cloud refused to delete {env.id} (attempt {call} of {failures} that fail)", retryable=True
                )
            return self._tagged(drill_id)

    def _tagged(self, drill_id: Optional[str]) -> list[Resource]:
        return [
            Resource(rec["kind"], rid, tags=dict(rec["tags"]))
            for rid, rec in sorted(self.state.resources().items())
            if rec.get("kind") in self.DELETE_ORDER and require_drill_tag(rec.get("tags"), drill_id)
        ]

    def named_resources(self, env: Environment) -> list[Resource]:
        """The network itself and everything recorded as living in it, whoever tagged it."""
        state = self.state.resources()
        named = [Resource(str((state.get(env.id) or {}).get("kind") or "network"), env.id)]
        named += [Resource(str(rec.get("kind")), rid) for rid, rec in sorted(state.items()) if rec.get("env") == env.id and rid != env.id]
        return named

    def current_tags(self, resource: Resource) -> Optional[dict[str, str]]:
        rec = self.state.resources().get(resource.id)
        if rec is None:
            return None
        tags = rec.get("tags")
        return dict(tags) if isinstance(tags, dict) else {}

    def delete(self, resource: Resource) -> bool:
        self._latency(self._faults_near(resource.id), "teardown")  # deleting takes time, per resource
        with self.state.edit() as s:
            if s["resources"].pop(resource.id, None) is None:
                return False
            s["events"].append({"kind": "deleted", "drill_id": resource.tags.get(TAG_DRILL_ID), "scope": resource.id, "pid": os.getpid(), "at": self.clock()})
        return True

    def _faults_near(self, resource_id: str) -> dict:
        """The faults of the network a resource lives in (or is)."""
        state = self.state.resources()
        rec = state.get(resource_id) or {}
        network = state.get(rec.get("env")) if rec.get("env") else rec
        return (network or {}).get("faults") or {}


__all__ = ["SimProvider", "SimState", "default_state_path", "sample_latency", "OPS"]
