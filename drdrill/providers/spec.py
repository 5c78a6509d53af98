"""The drill format, assembled: every family's targets and probe (registry.py lists their schema
modules) joined into Target, ProbeSpec, IsolationSpec, DrillSpec and CoverageSpec; parse_spec and
load_spec read a drill file into them, DrillInput carries one to the workflow. Built once, when this
module is imported, from the registry alone: no other module sets anything here."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Annotated, Literal, Optional, Union

from pydantic import AwareDatetime, BaseModel, Field, create_model

from drdrill.core.coverage_policy import CoverageSpecBase, load_policy, parse_policy
from drdrill.core.coverage_policy import COVERAGE_FILE
from drdrill.core.drill import DrillSpecBase
from drdrill.core.loader import parse_drill
from drdrill.core.schema import IsolationBase, ProbeSpecBase, SpecError, discriminators
from drdrill.providers.registry import FAMILIES

SCHEMAS: dict[str, ModuleType] = {family: importlib.import_module(module) for family, module in FAMILIES.items()}

Target = Annotated[
    Union[tuple(model for schema in SCHEMAS.values() for model in schema.TARGETS)],  # type: ignore[valid-type]
    Field(discriminator="provider"),
]
# Every target kind (`provider:`), in the registry's order.
PROVIDERS: list[str] = discriminators(Target, "provider")
# Families whose resources live on the worker's own machine: every activity of one drill for them
# must run on the same host (DrillActivities.claim_host).
HOST_BOUND: frozenset[str] = frozenset(f for f, schema in SCHEMAS.items() if getattr(schema, "HOST_BOUND", False))
# Families whose resources coverage counts (a simulated resource protects nothing).
COVERED: tuple[str, ...] = tuple(f for f, schema in SCHEMAS.items() if all(t.PROTECTS for t in schema.TARGETS))

ProbeSpec = create_model(  # type: ignore[call-overload]
    "ProbeSpec",
    __base__=ProbeSpecBase,
    __doc__="Probes per provider family, each a ProbeBase, booted inside the drill's network.",
    **{family: (Optional[schema.PROBE], None) for family, schema in SCHEMAS.items() if schema.PROBE is not None},
)


class IsolationSpec(IsolationBase):
    """The isolated environment the targets are restored into (no route to production)."""

    probe: ProbeSpec = Field(default_factory=ProbeSpec, description="run checks inside the isolated network, per provider family")  # type: ignore[valid-type]


class DrillSpec(DrillSpecBase):
    """A drill file, its targets any family's."""

    targets: list[Target] = Field(min_length=1, max_length=500)
    isolation: IsolationSpec = Field(default_factory=IsolationSpec)


class CoverageSpec(CoverageSpecBase):
    """How often every protected resource must be restored: `drdrill coverage`, the period
    report's coverage control and the scheduled coverage check read it."""

    providers: list[Literal[COVERED]] = Field(  # type: ignore[valid-type]
        default_factory=list, description="provider inventories to read besides those of the drill files' targets"
    )


class DrillInput(BaseModel):
    """What starts a DrillWorkflow."""

    spec: DrillSpec
    drill_id: str
    started_by: str = "cli"
    # Heartbeat timeout of the long activities (default 30 s; isolation and teardown 2 min). Tests and
    # simulations set a few seconds so a killed worker's activity moves to another worker quickly.
    heartbeat_seconds: Optional[float] = None
    # Choose recovery points as if the disaster were declared at this moment (timezone required).
    # RTO is still measured from the real declared time; RPO from this one. A moment later than the
    # real declared time is refused unless every target is simulated: a real cloud has no future snapshots.
    as_of: Optional[AwareDatetime] = None


def parse_spec(text: str, path: str = "<drill>", base_dir: Optional[Path] = None) -> DrillSpec:
    """Parse drill YAML text; raise SpecError naming the file, the field path and the fix."""
    return parse_drill(DrillSpec, text, path, base_dir)


def load_spec(path: str | Path) -> DrillSpec:
    """Read a drill file; relative paths in it are relative to its directory."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(str(path), [("", "no such file")]) from None
    except (UnicodeDecodeError, IsADirectoryError, PermissionError) as exc:
        raise SpecError(str(path), [("", f"cannot be read: {exc}")]) from None
    return parse_spec(text, str(path), base_dir=p.resolve().parent)


def parse_coverage_policy(text: str, path: str = COVERAGE_FILE) -> CoverageSpec:
    """Parse a coverage policy file, as strictly as a drill file: SpecError names the field and the fix."""
    return parse_policy(CoverageSpec, text, path)  # type: ignore[return-value]


def load_coverage_policy(drills_dir: str | Path) -> Optional[CoverageSpec]:
    """The policy in `<drills_dir>/coverage.yaml`; None when there is none."""
    return load_policy(CoverageSpec, drills_dir)  # type: ignore[return-value]
