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
from typing import Optional

from temporalio import activity

from drdrill.providers.activity_io import CoverageCheckRequest, CoverageCheckResult, CoverageGap
from drdrill.evidence.coverage import CoverageRow, current_period, gather, regions_to_read
from drdrill.providers import load_provider

log = logging.getLogger("drdrill.coverage")


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
