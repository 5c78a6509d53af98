"""The activity of the scheduled coverage check (workflows/coverage.py): read the coverage of the
current period (drdrill/evidence/coverage.py) and say whether, and about what, to alert.

The drill files and the policy travel in the schedule's input (as a drill's spec does in its
schedule), so the worker needs no copy of the drills directory; the providers come from the
worker's environment, as for drills.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from datetime import datetime
from typing import Optional

from pydantic import BaseModel, Field
from temporalio import activity

from drdrill.providers.spec import CoverageSpec, DrillSpec
from drdrill.evidence.coverage import CoverageRow, current_period, gather, regions_to_read
from drdrill.providers import load_provider

log = logging.getLogger("drdrill.coverage")


class CoverageCheckInput(BaseModel):
    """What the coverage check's schedule starts the workflow with (`drdrill coverage schedule`)."""

    policy: CoverageSpec
    specs: list[DrillSpec] = Field(default_factory=list)
    source: str = ""  # the drills directory the schedule was built from, for the alert


class CoverageCheckRequest(BaseModel):
    check: CoverageCheckInput
    now: datetime  # the workflow's time: whether the period is about to end is decided as of it


class CoverageGap(BaseModel):
    """A protected resource not yet restored in the period, and what would cover it."""

    resource: str
    kind: str
    flags: list[str] = Field(default_factory=list)
    drills: list[str] = Field(default_factory=list)  # drill (target) that names or selects it

    @property
    def line(self) -> str:
        cover = f"would be covered by {', '.join(self.drills)}" if self.drills else "no drill covers it: name or select it in a drill"
        return f"{self.resource} ({self.kind}): {cover}"


class CoverageCheckResult(BaseModel):
    period: str
    end: datetime
    protected: int = 0
    covered: int = 0
    gaps: list[CoverageGap] = Field(default_factory=list)
    unreadable: list[str] = Field(default_factory=list)  # providers whose inventory could not be read
    control: str = ""  # met | not met | could not verify
    alert: bool = False  # the period ends within policy.alert_before and something is not covered
    notified: list[str] = Field(default_factory=list)  # webhooks told (set by the workflow)
    errors: list[str] = Field(default_factory=list)

    @property
    def summary(self) -> str:
        return f"{self.covered}/{self.protected} protected resources restored in {self.period} (ends {self.end:%Y-%m-%d}); {len(self.gaps)} not yet"


def _gap(row: CoverageRow) -> CoverageGap:
    return CoverageGap(
        resource=row.name if row.name and row.name != row.id else row.id,
        kind=row.kind,
        flags=row.flags,
        drills=[f"drill {d.drill} (target {d.target})" for d in row.drills],
    )


class CoverageActivities:
    def __init__(self, providers: Optional[dict] = None):
        self._given = dict(providers or {})
        self._loaded: dict = {}
        self._lock = threading.Lock()

    def _provider(self, family: str, settings: Optional[dict] = None):
        """The family's provider, loaded once per settings (the AWS regions the drills name)."""
        key = (family, json.dumps(settings or {}, sort_keys=True))
        with self._lock:
            if family in self._given:
                return self._given[family]
            if key not in self._loaded:
                self._loaded[key] = load_provider(family, settings)
            return self._loaded[key]

    def close(self) -> None:
        """Close the providers this object loaded (those it was given belong to their owner)."""
        for p in self._loaded.values():
            try:
                p.close()
            except Exception:  # pragma: no cover - best effort at shutdown
                log.exception("closing provider %s", p.family)

    @activity.defn(name="check_coverage")
    def check_coverage(self, req: CoverageCheckRequest) -> CoverageCheckResult:
        policy = req.check.policy
        period, start, end = current_period(policy.every, req.now)
        aws = {"regions": regions_to_read(req.check.specs, policy, os.environ)}
        report = gather(req.check.specs, policy, period=period, start=start, end=end, now=req.now,
                        provider_for=lambda family: self._provider(family, aws if family == "aws" else None))
        gaps = [_gap(r) for r in report.not_covered()]
        result = CoverageCheckResult(
            period=period,
            end=end,
            protected=report.summary["protected"],
            covered=report.summary["covered"],
            gaps=gaps,
            unreadable=[p.detail for p in report.providers if not p.read],
            control=report.control["status"],
            alert=bool(gaps or report.control["status"] != "met") and req.now >= end - policy.alert_before,
        )
        log.info("coverage %s: %s (alert: %s)", period, result.summary, result.alert)
        return result
