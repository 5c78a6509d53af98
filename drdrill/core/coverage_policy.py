"""The coverage policy (`coverage.yaml` beside the drill files): how often every protected resource
must be restored. drdrill/providers/spec.py adds the provider families it may name (CoverageSpec)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import Field, ValidationError, create_model, model_validator

from drdrill.core.durations import Duration
from drdrill.core.loader import friendly, load_yaml, loc_str
from drdrill.core.schema import SpecError, Strict

COVERAGE_FILE = "coverage.yaml"  # in the drill directory, beside the drill files


class CoverageNotify(Strict):
    webhooks_env: list[str] = Field(default_factory=list, description="environment variables holding webhook URLs")


class CoverageSpecBase(Strict):
    """How often every protected resource must be restored: `drdrill coverage`, the period
    report's coverage control and the scheduled coverage check read it."""

    every: Literal["quarter", "month", "year"] = Field("quarter", description="each protected resource is restored once per this period")
    min_fraction: float = Field(1.0, ge=0.0, le=1.0, description="the share of protected resources restored in the period for the control to be met")
    protected_tag: Optional[str] = Field(
        None, min_length=1, description="resources carrying this tag (any value) are protected, as are those with recovery points"
    )
    protected_by: Literal["tag_or_points", "tag"] = Field(
        "tag_or_points", description="tag: only resources carrying protected_tag are protected (not every one with recovery points)"
    )
    regions: list[str] = Field(default_factory=list, description="cloud regions to read besides those the drill files name and DRDRILL_AWS_REGIONS")
    recovery_point_max_age: Duration = Field(timedelta(days=7), description="an older newest recovery point is NO_RECENT_RECOVERY_POINT")
    alert_before: Duration = Field(timedelta(days=14), description="the scheduled check alerts when the period ends within this")
    providers: list[str] = Field(
        default_factory=list, description="provider inventories to read besides those of the drill files' targets"
    )
    notify: CoverageNotify = Field(default_factory=CoverageNotify)


    @model_validator(mode="after")
    def _tag_needs_a_tag(self) -> "CoverageSpecBase":
        if self.protected_by == "tag" and not self.protected_tag:
            raise ValueError("protected_by: tag needs protected_tag: name the tag that marks a protected resource (e.g. protected_tag: backup-plan)")
        return self



def parse_policy(spec_model: type[CoverageSpecBase], text: str, path: str = COVERAGE_FILE) -> CoverageSpecBase:
    """Parse a coverage policy file, as strictly as a drill file: SpecError names the field and the fix."""
    policy_model = create_model("CoveragePolicy", __base__=Strict, coverage=(spec_model, ...))
    try:
        data, duplicates = load_yaml(text)
    except (yaml.YAMLError, ValueError, TypeError, RecursionError) as exc:
        raise SpecError(path, [("", f"not valid YAML: {str(exc).splitlines()[0]}")]) from None
    if duplicates:
        raise SpecError(path, [(f"line {line}", message) for line, message in duplicates])
    try:
        return policy_model.model_validate(data if data is not None else {}).coverage  # type: ignore[attr-defined]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err.get("loc", ()))
            if err.get("type") == "extra_forbidden":
                owner = policy_model if len(loc) == 1 else CoverageNotify if loc[:2] == ("coverage", "notify") else spec_model
                problems.append((loc_str(loc), f"unknown key '{loc[-1]}'; allowed here: {', '.join(owner.model_fields)}"))
            elif err.get("type") == "model_type" and not loc:
                problems.append(("", "a coverage policy is a mapping: coverage: {every: quarter, min_fraction: 1.0, protected_tag: backup-plan}"))
            else:
                problems.append(friendly(err, {}))
        raise SpecError(path, problems) from None


def load_policy(spec_model: type[CoverageSpecBase], drills_dir: str | Path) -> Optional[CoverageSpecBase]:
    """The policy in `<drills_dir>/coverage.yaml`; None when there is none."""
    path = Path(drills_dir) / COVERAGE_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (UnicodeDecodeError, IsADirectoryError, PermissionError) as exc:
        raise SpecError(str(path), [("", f"cannot be read: {exc}")]) from None
    return parse_policy(spec_model, text, str(path))
