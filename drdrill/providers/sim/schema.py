"""The sim part of the drill format: SimTarget, a simulated resource with injected faults (for dry
runs, tests and benchmarks). The smallest family schema: read it first when adding a provider
(drdrill/providers/spec.py reads it to assemble DrillSpec; registry.py lists it in one line)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, ClassVar, Literal, Optional

from pydantic import Field, field_validator, model_validator

from drdrill.core.durations import Duration
from drdrill.core.schema import Strict, TargetBase

FAMILY = "sim"
PROVIDER = "drdrill.providers.sim.provider:SimProvider"

SIM_OPS = ("find_recovery_point", "create_isolation", "verify_isolation", "restore", "wait_ready", "teardown")
SimOp = Literal["find_recovery_point", "create_isolation", "verify_isolation", "restore", "wait_ready", "teardown"]


class SimLatency(Strict):
    """How long one simulated call takes: `2s` (fixed), {min: 1s, max: 3s} (uniform) or
    {mean: 2s, stddev: 0.5} (normal, never below 0). Scaled by DRDRILL_SIM_SPEED."""

    fixed: Optional[Duration] = None
    min: Optional[Duration] = None
    max: Optional[Duration] = None
    mean: Optional[Duration] = None
    stddev: Optional[Duration] = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, (str, int, float, timedelta)) and not isinstance(data, bool):
            return {"fixed": data}
        return data

    @model_validator(mode="after")
    def _one_shape(self) -> "SimLatency":
        uniform = self.min is not None or self.max is not None
        normal = self.mean is not None or self.stddev is not None
        if sum([self.fixed is not None, uniform, normal]) != 1:
            raise ValueError("a latency is a duration (2s), {min: 1s, max: 3s} or {mean: 2s, stddev: 1s}")
        if uniform and (self.min is None or self.max is None or self.min > self.max):
            raise ValueError("a uniform latency needs min <= max")
        if normal and self.mean is None:
            raise ValueError("a normal latency needs mean (and optionally stddev)")
        return self


class SimFaults(Strict):
    """Injected faults of a simulated target (see drdrill/providers/sim/provider.py). Counts are kept in
    the shared state file, so they hold across retries and worker processes."""

    throttle: int = Field(0, ge=0, le=1000, description="the first N calls of each operation raise a retryable THROTTLED")
    transient_5xx: int = Field(0, ge=0, le=1000, description="the next N calls raise a retryable SERVICE_UNAVAILABLE (503)")
    timeouts: int = Field(0, ge=0, le=1000, description="the next N calls raise a retryable REQUEST_TIMEOUT")
    ops: Optional[list[SimOp]] = Field(None, description="operations throttle/transient_5xx/timeouts apply to (default: all)")
    fail: list[SimOp] = Field(default_factory=list, description="operations that fail permanently (SIM_PERMANENT_FAILURE)")
    never_ready: bool = Field(False, description="the restored resource never becomes ready (wait_ready hits its deadline)")
    teardown_failures: int = Field(0, ge=0, le=1000, description="the first N teardown attempts fail (retryably)")
    leaky_isolation: bool = Field(False, description="the isolated network has a route to production")
    latency: dict[Literal["default", SimOp], SimLatency] = Field(default_factory=dict, description="per operation")

    @field_validator("fail", "ops", mode="before")
    @classmethod
    def _one_or_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


class SimSource(Strict):
    """A simulated resource; `sim` is for dry runs, tests and benchmarks."""

    resource: str = Field("db", max_length=200, description="name of the simulated source resource")
    points: int = Field(5, ge=0, le=10000, description="simulated recovery points, one per `point_interval`")
    point_interval: Duration = timedelta(hours=1)
    restore_time: Duration = timedelta(seconds=1)
    ready_after: Duration = timedelta(seconds=0)
    faults: SimFaults = Field(default_factory=SimFaults, description="injected faults, see drdrill/providers/sim/provider.py")

    @field_validator("point_interval")
    @classmethod
    def _positive(cls, v: timedelta) -> timedelta:
        if v <= timedelta(0):
            raise ValueError("point_interval must be longer than 0s")
        return v



class SimTarget(TargetBase):
    provider: Literal["sim"]
    source: SimSource = Field(default_factory=SimSource)

    ID_FIELDS: ClassVar[tuple[str, ...]] = ("resource",)
    ENDPOINT_FIELDS: ClassVar[tuple[str, ...]] = ("resource_id", "sim_state")
    PROTECTS: ClassVar[bool] = False  # a simulated resource protects nothing: coverage leaves it out
    SIMULATED: ClassVar[bool] = True


TARGETS = (SimTarget,)
PROBE = None
