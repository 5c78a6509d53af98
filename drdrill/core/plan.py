"""Recovery plans: targets restored in ordered groups, endpoints handed forward, approval gates.

A real recovery is not a set of independent restores: the database comes back first, then the
application pointed at it, and a person may look before traffic would be switched. A drill's
`plan:` (drdrill/core/planspec.py: PlanGroup, ApprovalGate) says so. DrillWorkflow runs the groups in
the order listed, the targets of one group in parallel; a group's checks must pass before the next
group starts. This module holds what that means, without I/O and without a clock of its own, so
the workflow can call it and tests/test_plan.py can check it alone:

- `expand`: the plan after selections (drdrill/core/selection.py) replaced a selecting target by
  the targets it chose;
- `gate_before`, `check_names`, `not_run`: which gate holds a group back, which checks are its, and
  the checks of groups that never started (NOT_RUN, never a pass);
- `endpoints_for`, `resolve_environment`: the earlier targets' endpoints a target's
  `restore.environment` names, and the values, filled in by the activity that starts the service
  (secrets are `{env.NAME}` references, read there: never in the workflow history);
- `group_result`, `group_objectives`, `objectives`: each group's RTO (declared disaster -> the
  group recovered, i.e. its last required check first passed) against its own objective, and the
  whole plan's RTO and RPO when the plan stopped early.

A drill without a plan is one implicit group: everything restores at once, as it always has.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Mapping, Optional, Sequence

from drdrill.core import judging
from drdrill.core.models import (
    ApprovalRecord,
    Finding,
    GroupResult,
    ObjectiveResult,
    Outcome,
    RecoveryPoint,
    RestoredResource,
    ValidationResult,
)
from drdrill.core.selection import expand_checks
from drdrill.core.drill import DrillSpecBase
from drdrill.core.durations import format_duration
from drdrill.core.planspec import ApprovalGate, PlanGroup
from drdrill.core.schema import ENDPOINT_TEMPLATE_RE, environment_refs



class EnvironmentProblem(ValueError):
    """A restore.environment value that cannot be filled in: names the variable and the fix."""

    def __init__(self, variable: str, message: str):
        super().__init__(f"restore.environment.{variable}: {message}")
        self.variable = variable


# ------------------------------------------------------------------ the plan's shape


def expand(spec: DrillSpecBase, chosen: Mapping[str, Sequence[str]]) -> DrillSpecBase:
    """The plan once selections chose their resources: a selecting target named in a group becomes
    the targets it chose (`chosen`: selecting target -> chosen target names), and each of the
    group's checks of that target is repeated for each of them, as selection.expand does for the
    drill's own validations."""
    if spec.plan is None or not chosen:
        return spec
    groups = []
    for g in spec.plan:
        targets = [name for t in g.targets for name in chosen.get(t, [t])]
        checks = expand_checks(g.checks, chosen)
        # An action names one target, whose endpoint it gets: the first resource the selection chose.
        actions = {
            when: [a.model_copy(update={"target": chosen[a.target][0]}) if chosen.get(a.target) else a for a in getattr(g, when)]
            for when in ("pre", "post")
        }
        groups.append(g.model_copy(update={"targets": targets, "checks": checks, **actions}))
    return spec.model_copy(update={"plan": groups})


def gate_before(spec: DrillSpecBase, group: str) -> Optional[ApprovalGate]:
    """The approval gate that holds `group` back, if any."""
    return next((gate for gate in spec.approve if gate.before == group), None)


def check_names(group: PlanGroup) -> list[str]:
    return [group.check_name(i) for i in range(len(group.checks))]


def not_run(group: PlanGroup, reason: str) -> list[ValidationResult]:
    """The checks of a group that never started: NOT_RUN (judged as could not verify, never a pass)."""
    return [
        ValidationResult(
            name=group.check_name(i), type=v.type, target=getattr(v, "target", None), required=v.required, outcome="NOT_RUN", detail=reason
        )
        for i, v in enumerate(group.checks)
    ]


def later_groups(spec: DrillSpecBase, index: int) -> list[PlanGroup]:
    """The groups after the one at `index`: they never start when it stops the plan."""
    return list((spec.plan or [])[index + 1 :])


# ------------------------------------------------------------------ endpoints flow forward


def endpoints_for(target: Any, restored: Mapping[str, RestoredResource]) -> dict[str, dict[str, Any]]:
    """The endpoints of the earlier targets `target`'s restore.environment names (by target name):
    what the activity that starts it needs to fill in the values. Endpoints hold addresses, never
    secrets (a provider's DSN carries no password), so they may travel in the workflow history."""
    templates = getattr(target.restore, "environment", None) or {}
    names = {ref.name for value in templates.values() for ref in environment_refs(value) if ref.kind == "targets"}
    return {name: dict(restored[name].endpoint) for name in sorted(names) if name in restored}


def resolve_environment(templates: Mapping[str, str], endpoints: Mapping[str, Mapping[str, Any]], env: Mapping[str, str]) -> dict[str, str]:
    """Fill in restore.environment: `{targets.<target>.<field>}` from the earlier targets'
    `endpoints`, `{env.<VARIABLE>}` from `env` (the environment of the worker that starts the
    service: where the secret lives). Raises EnvironmentProblem naming the variable and the fix."""
    resolved = {}
    for key, template in templates.items():
        refs = {ref.text: ref for ref in environment_refs(template)}

        def value(match: Any, key: str = key, refs: dict = refs) -> str:
            ref = refs["{" + match.group(1) + "}"]
            if ref.kind == "env":
                found = env.get(ref.name)
                if not found:
                    raise EnvironmentProblem(key, f"{ref.text}: {ref.name} is not set on the worker that starts the service: set it there")
                return found
            endpoint = endpoints.get(ref.name)
            if endpoint is None:
                raise EnvironmentProblem(key, f"{ref.text}: target {ref.name} was not restored before this one")
            field = endpoint.get(ref.field)
            if field in (None, ""):
                known = ", ".join(k for k, v in endpoint.items() if v not in (None, "")) or "nothing"
                raise EnvironmentProblem(key, f"{ref.text}: target {ref.name} publishes no {ref.field!r} (its endpoint has: {known})")
            return str(field)

        resolved[key] = ENDPOINT_TEMPLATE_RE.sub(value, template)
    return resolved


def secret_references(templates: Mapping[str, str]) -> list[str]:
    """The variables `{env.NAME}` references read: secrets, whose values are redacted wherever they appear."""
    return sorted({ref.name for value in templates.values() for ref in environment_refs(value) if ref.kind == "env"})


# ------------------------------------------------------------------ judging a group, and the plan


def recovered_at(checks: Sequence[ValidationResult], ready: Optional[datetime]) -> Optional[datetime]:
    """When a group was back: its last required check first passed; without required checks, when
    its last target was ready. None when a required check did not pass."""
    required = [c for c in checks if c.required]
    if not required:
        return ready
    if all(c.outcome == "PASSED" and c.first_passed_at for c in required):
        return max(c.first_passed_at for c in required)  # type: ignore[type-var]
    return None


def group_result(
    group: PlanGroup,
    *,
    declared: datetime,
    outcome: Outcome,
    detail: str = "",
    started: Optional[datetime] = None,
    ended: Optional[datetime] = None,
    ready: Optional[datetime] = None,
    checks: Sequence[ValidationResult] = (),
    actions: Sequence[ValidationResult] = (),
    approval: Optional[ApprovalRecord] = None,
) -> GroupResult:
    """A group as it ran, with its RTO (declared -> recovered) judged against its own objective."""
    recovered = recovered_at(checks, ready) if outcome == "PASSED" else None
    objective = group.rto.total_seconds() if group.rto is not None else None
    achieved = (recovered - declared).total_seconds() if recovered is not None else None
    rto_outcome: Outcome
    if achieved is not None:
        rto_outcome = "PASSED" if objective is None or achieved <= objective else "FAILED"
        how = "its last required check first passed" if any(c.required for c in checks) else "its last target was ready (it has no required checks)"
        rto_detail = f"{how} {format_duration(achieved)} after the disaster was declared"
        if approval is not None:
            rto_detail += f", {format_duration(approval.waited_seconds)} of it waiting for approval"
    elif outcome == "NOT_RUN":
        rto_outcome, rto_detail = "NOT_RUN", detail or "the group never started"
    elif outcome == "FAILED":
        rto_outcome, rto_detail = "FAILED", "the group was not shown to be recovered"
    else:
        rto_outcome, rto_detail = "COULD_NOT_VERIFY", "no required check proved the group recovered"
    return GroupResult(
        group=group.group,
        targets=list(group.targets),
        outcome=outcome,
        detail=detail,
        started=started,
        ended=ended,
        ready=ready,
        recovered=recovered,
        checks=check_names(group),
        actions=list(actions),
        approval=approval,
        rto_seconds=achieved,
        objective_seconds=objective,
        rto_outcome=rto_outcome,
        rto_detail=rto_detail,
    )


def group_objectives(groups: Sequence[GroupResult]) -> list[ObjectiveResult]:
    """The groups' own RTO objectives, as the verdict judges them: one exceeded fails the drill, one
    not measured cannot pass it. Groups without an objective judge nothing here."""
    return [
        ObjectiveResult(
            name="RTO",
            objective_seconds=g.objective_seconds,
            achieved_seconds=g.rto_seconds,
            outcome=g.rto_outcome,
            detail=f"group {g.group}: {g.rto_detail}",
        )
        for g in groups
        if g.objective_seconds is not None
    ]


def objectives(
    spec: DrillSpecBase,
    declared: datetime,
    points: Mapping[str, RecoveryPoint],
    validations: Sequence[ValidationResult],
    stop: Optional[Finding],
    as_of: Optional[datetime] = None,
) -> list[ObjectiveResult]:
    """[RTO, RPO] of the whole plan. RTO: declared -> the last required check first passed, over
    every group's checks and the drill's own. A plan that stopped early (`stop`) has checks that never
    ran: its RTO failed when it stopped on a failure (a check, an action, a restore, a rejection, a
    gate nobody answered), and could not be verified when it stopped on a check that could not run."""
    failed = stop is not None and not stop.could_not_verify
    every_point = list(points.values()) if len(points) == len(spec.targets) else []
    return [
        judging.rto(spec.objectives.rto, declared, validations, restore_failed=failed),
        judging.rpo(spec.objectives.rpo, declared, every_point, validations, as_of=as_of),
    ]


def summary(group: GroupResult) -> str:
    """One line for the group's band on the timeline."""
    rto = format_duration(group.rto_seconds) if group.rto_seconds is not None else "not measured"
    objective = f" (objective {format_duration(group.objective_seconds)})" if group.objective_seconds is not None else ""
    parts = [f"group {group.group}: {', '.join(group.targets)}", f"RTO {rto}{objective}"]
    if group.detail:
        parts.append(group.detail)
    return "; ".join(parts)
