"""The steps of a drill, in the order DrillWorkflow.run takes them: select, recovery points,
isolation and its proof, restore, the probes, the checks, the hold, and teardown.

Each step fills in the drill's state (workflows/state.py) and its timeline; the activities it needs
are in workflows/calls.py; what the results mean is judged by drdrill/core (pure). A recovery plan's
groups, gates and actions are in workflows/plan.py. Deterministic: time only from `workflow.now()`.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any, Optional

from temporalio import workflow
from temporalio.exceptions import ActivityError, CancelledError

with workflow.unsafe.imports_passed_through():
    from drdrill.core import judging, selection
    from drdrill.core import plan as recovery_plan
    from drdrill.providers.activity_io import WORKER_CHECKS, ProbeStatus
    from drdrill.core.models import Environment, Finding, IsolationProof, TargetState, ValidationResult
    from drdrill.core.durations import format_duration
    from drdrill.core.operations import permit_key
    from drdrill.providers.spec import Target

from workflows import calls
from workflows.state import DrillState, cancelled, describe

PROBE_START_TIMEOUT = timedelta(minutes=5)  # when the drill file names no start_timeout for a family's probe


async def select(s: DrillState) -> bool:
    """0. Targets that select their resources: discover the candidates, choose, and expand the
    drill into one target per chosen resource (drdrill/core/selection.py, pure)."""
    selecting = [t for t in s.spec.targets if t.select is not None]
    if not selecting:
        return True
    s.phase("select")
    started = workflow.now()
    found = await asyncio.gather(*(_discover(s, t) for t in selecting))
    if not all(found):
        s.event("select", started, workflow.now(), "FAILED", detail="the resources to select from could not be listed")
        return False
    plan = selection.expand(s.spec, {d.target: d for d in found}, default_seed=s.ctx.drill_id, now=s.ctx.as_of)
    s.selections = plan.records
    s.findings += [Finding(code=p.code, message=p.message, target=p.target, severity=p.severity) for p in plan.problems]
    if not plan.empty:
        s.spec = recovery_plan.expand(plan.spec, {r.target: r.chosen for r in plan.records})
        s.status.targets = [TargetState(target=t.name, provider=t.provider) for t in s.spec.targets]
    detail = "; ".join(r.summary for r in plan.records)
    s.event("select", started, workflow.now(), "FAILED" if plan.empty else "PASSED", detail=detail)
    return not plan.empty


async def _discover(s: DrillState, target: Target) -> Optional[selection.Discovery]:
    try:
        return await calls.discover(s, target)
    except ActivityError as exc:
        s.activity_finding(exc, target.name, "SELECTION_FAILED")
        return None


async def recovery_points(s: DrillState) -> bool:
    """1. Recovery points, all targets at once."""
    s.phase("recovery point")
    started = workflow.now()
    ok = all(await asyncio.gather(*(_find_point(s, t) for t in s.spec.targets), return_exceptions=False))
    detail = "; ".join(f"{p.target} {p.id} ({format_duration(s.ctx.as_of - p.consistent_time)} old)" for p in s.points.values())
    s.event("recovery point", started, workflow.now(), "PASSED" if ok else "FAILED", detail=detail)
    return ok


async def _find_point(s: DrillState, target: Target) -> bool:
    s.target(target.name, "recovery point")
    try:
        point = await calls.find_recovery_point(s, target)
    except ActivityError as exc:
        s.activity_finding(exc, target.name, "RECOVERY_POINT_NOT_FOUND")
        s.target(target.name, "recovery point", "FAILED", describe(exc))
        return False
    s.points[target.name] = point
    s.findings.extend(point.findings)
    s.target(target.name, "recovery point", "PASSED", f"{point.id} at {point.consistent_time.isoformat()}")
    return True


STAGE_PATCH = "stage-beside-isolation"  # issue 25: a physical backup laid down while the isolation is made and proven


async def isolation_and_stage(s: DrillState) -> bool:
    """2. The isolation and its proof (`isolation`) and, at the same time, the lay-down of every
    target that `stages` (a physical backup's files: no server is started until the isolation is
    proven, `restore` starts it). Each staging target holds its restore permit from here on; the
    hosts are claimed first, so the lay-down and the isolation are on the same disk."""
    staging = _staging(s)
    if not staging or not workflow.patched(STAGE_PATCH):
        return await isolation(s)
    for family in dict.fromkeys(t.family for t in staging):
        try:
            s.hosts[family] = await calls.claim_host(family)
        except ActivityError as exc:
            cancelled(exc)
            return await isolation(s)  # isolate claims it again, and records why it cannot
    proven, _ = await asyncio.gather(isolation(s), asyncio.gather(*(_stage(s, t) for t in staging)))
    return proven


def _staging(s: DrillState) -> list[Target]:
    """The targets laid down beside the isolation: those that `stages`, without a recovery plan
    (whose gates may come first), and one per restore permit key: the lay-down takes the target's
    restore permit, so a second target waiting there for a permit only its own restore would release
    (DRDRILL_RESTORE_LIMITS of 1) would wait for ever. The others lay down in their restore."""
    if s.spec.plan is not None:
        return []
    chosen: dict[str, Target] = {}
    for t in s.spec.targets:
        if t.stages(s.spec.isolation):
            chosen.setdefault(permit_key(t, s.spec.isolation), t)
    return list(chosen.values())


async def _stage(s: DrillState, target: Target) -> None:
    await s.permits.acquire_restore(target, s.spec, on_wait=lambda: s.target(target.name, "restore queued"))
    s.restore_permits.add(target.name)
    started = workflow.now()
    try:
        detail = await calls.stage(s, target, s.points[target.name])
    except ActivityError as exc:
        cancelled(exc)  # a cancelled drill's lay-down did not fail
        s.event("lay down", started, workflow.now(), "FAILED", target=target.name, detail=f"{describe(exc)}; the restore lays it down anew")
        return
    if detail:
        s.event("lay down", started, workflow.now(), "PASSED", target=target.name, detail=f"{detail}, while the isolation was made and proven")


async def isolation(s: DrillState) -> bool:
    """2. Isolation per provider family, then proof that there is no way out."""
    s.phase("isolate")
    families = list(dict.fromkeys(t.family for t in s.spec.targets))
    started = workflow.now()
    envs = await asyncio.gather(*(_isolate(s, f) for f in families))
    if not all(envs):
        s.event("isolate", started, workflow.now(), "FAILED", detail="could not create the isolated environment")
        return False
    s.event("isolate", started, workflow.now(), "PASSED", detail="; ".join(e.description or e.id for e in s.envs.values()))

    s.phase("verify isolation")
    started = workflow.now()
    proofs = await asyncio.gather(*(_verify(s, e) for e in s.envs.values()))
    s.proofs = [p for p in proofs if p is not None]
    outcome = judging.worst([p.outcome for p in s.proofs] + (["COULD_NOT_VERIFY"] if None in proofs else []))
    checks = [c for p in s.proofs for c in p.checks]
    s.event("verify isolation", started, workflow.now(), outcome, detail=judging.summary([c.outcome for c in checks], [c.name for c in checks]))
    if outcome != "PASSED":
        s.finding(
            "ISOLATION_NOT_PROVEN" if outcome == "COULD_NOT_VERIFY" else "ISOLATION_BROKEN",
            "the isolated environment could not be proven to have no route to production; nothing was restored into it"
            + (" (no restored server was started; a backup laid down meanwhile is deleted with it)" if s.restore_permits else ""),
            could_not_verify=outcome == "COULD_NOT_VERIFY",
        )
        return False
    return True


async def _isolate(s: DrillState, family: str) -> Optional[Environment]:
    try:
        # Resources that live on a worker's own disk (postgres clusters) pin the family to
        # that worker's host: every later activity for it goes to the host's queue.
        if family not in s.hosts:  # claimed already when a target's backup is laid down beside (isolation_and_stage)
            s.hosts[family] = await calls.claim_host(family)
    except ActivityError as exc:
        s.activity_finding(exc, None, "ISOLATION_FAILED")
        return None
    # Until we hear back, the environment may be half-created: teardown finds it by tag.
    s.envs.setdefault(family, s.new_environment(family))
    try:
        env = await calls.create_isolation(s, family, [t for t in s.spec.targets if t.family == family])
    except ActivityError as exc:
        s.activity_finding(exc, None, "ISOLATION_FAILED")
        return None
    s.envs[family] = env
    return env


async def _verify(s: DrillState, env: Environment) -> Optional[IsolationProof]:
    try:
        return await calls.verify_isolation(s, env)
    except ActivityError as exc:
        s.activity_finding(exc, None, "ISOLATION_NOT_PROVEN", could_not_verify=True)
        return None


async def restore_all(s: DrillState) -> None:
    """3. Restore every target in parallel; each then waits until it serves."""
    s.phase("restore")
    started = workflow.now()
    ready = await asyncio.gather(*(restore_limited(s, t) for t in s.spec.targets))
    detail = "; ".join(f"{r.target}: {r.description or r.id}" for r in s.restored.values())
    s.event("restore", started, workflow.now(), "PASSED" if all(ready) else "FAILED", detail=detail)


async def restore_limited(s: DrillState, target: Target) -> bool:
    """_restore within the restore limit of the target's account/region (DRDRILL_RESTORE_LIMITS)."""
    if target.name not in s.restore_permits:  # held since its lay-down otherwise (_stage)
        await s.permits.acquire_restore(target, s.spec, on_wait=lambda: s.target(target.name, "restore queued"))
    try:
        return await _restore(s, target)
    finally:
        s.restore_permits.discard(target.name)
        await s.permits.release_restore(target, s.spec)


async def _restore(s: DrillState, target: Target) -> bool:
    s.target(target.name, "restore")
    restore_started = workflow.now()
    try:
        resource = await calls.restore(s, target, s.points[target.name], s.envs[target.family])
        s.restored[target.name] = resource
        s.findings.extend(resource.findings)
        s.target(target.name, "wait ready")
        resource = await calls.wait_ready(s, target, resource, restore_started)
    except ActivityError as exc:
        s.activity_finding(exc, target.name, "RESTORE_FAILED")
        s.target(target.name, "restore", "FAILED", describe(exc))
        return False
    if resource.findings:
        known = {(f.code, f.message) for f in s.findings}
        s.findings.extend(f for f in resource.findings if (f.code, f.message) not in known)
    s.restored[target.name] = resource
    # The target's own restore span (restore started → ready noticed): the next drill of this
    # target expects its readiness around the same time (drdrill.evidence.history).
    s.event("restore", restore_started, workflow.now(), "PASSED", target=target.name, detail=resource.description or resource.id)
    s.target(target.name, "ready", "PASSED", resource.description or resource.id)
    return True


async def run_validations(s: DrillState) -> tuple[list[ValidationResult], datetime]:
    """The drill's validations, in parallel, each where it has to run (once its probes poll); and when they started."""
    await wait_for_probes(s)
    s.phase("validate")
    started = workflow.now()
    return list(await asyncio.gather(*(check(s, v, s.spec.validation_name(i)) for i, v in enumerate(s.spec.validations)))), started


async def validate_all(s: DrillState) -> None:
    """4. Validations, in parallel; a check whose target did not come back is NOT_RUN."""
    results, started = await run_validations(s)
    s.validations = results
    no_validations(s)
    outcome = judging.worst(v.outcome for v in results if v.required) if results else "COULD_NOT_VERIFY"
    s.event("validate", started, workflow.now(), outcome, detail=judging.summary([v.outcome for v in results], [v.name for v in results]))


def no_validations(s: DrillState) -> None:
    if not s.validations:
        s.finding("NO_VALIDATIONS", "the drill has no validations: a restore nobody checked proves nothing", could_not_verify=True)


async def check(s: DrillState, v: Any, name: str) -> ValidationResult:
    """One check, where it has to run: on the worker, in its family's probe, or nowhere (could not verify)."""
    tname = getattr(v, "target", None)
    resource = s.restored.get(tname) if tname else None
    if tname and (resource is None or not resource.ready):
        return ValidationResult(name=name, type=v.type, target=tname, required=v.required, outcome="NOT_RUN", detail=f"target {tname} was not restored")
    family = s.spec.target(tname).family if tname else None
    # A check that needs the network runs where the network is: in the family's probe.
    where = calls.placement(s, family, v.timeout, network=v.type not in WORKER_CHECKS)
    if where.refused == "not polled":
        return s.not_checked(v, name, tname, f"the {family} probe never polled its task queue {where.probe_queue} (PROBE_NOT_STARTED)")
    if where.refused == "unreachable":
        return s.not_checked(
            v, name, tname,
            f"target {tname} is in an isolated network the worker cannot reach ({where.network}), and "
            f"this drill runs no probe there: set isolation.probe.{family} to run {v.type} checks inside it",
        )
    return await run_check(s, v, name, where, f" in the {family} probe (task queue {where.probe_queue})" if where.probe_queue else "")


async def run_check(s: DrillState, v: Any, name: str, where: calls.Placement, said: str) -> ValidationResult:
    """Run a check (or an action) through the validation activity; could not verify when it could not run."""
    try:
        return await calls.validate(s, v, name, where)
    except ActivityError as exc:
        cancelled(exc)
        return ValidationResult(
            name=name, type=v.type, target=getattr(v, "target", None), required=v.required, outcome="COULD_NOT_VERIFY",
            detail=f"the check could not run{said}: {describe(exc)}",
        )


async def wait_for_probes(s: DrillState, families: Optional[set[str]] = None) -> None:
    """Before the checks, wait (bounded) until each probe a restored family has (or each of
    `families`) polls its queue; once per family: a plan's later groups know the answer already."""
    ready = families if families is not None else {s.spec.target(name).family for name, r in s.restored.items() if r.ready}
    envs = [e for e in s.envs.values() if e.details.get("probe_queue") and e.family in ready and e.family not in s.probes]
    if not envs:
        return
    s.phase("probe")
    started = workflow.now()
    statuses = await asyncio.gather(*(_wait_for_probe(s, e) for e in envs))
    detail = "; ".join(
        f"{e.family}: task queue {st.queue} "
        + (f"polled after {format_duration(st.waited_seconds)}" if st.polling else f"not polled within {format_duration(st.waited_seconds)}")
        for e, st in zip(envs, statuses)
    )
    s.event("probe", started, workflow.now(), "PASSED" if all(st.polling for st in statuses) else "COULD_NOT_VERIFY", detail=detail)


async def _wait_for_probe(s: DrillState, env: Environment) -> ProbeStatus:
    queue = env.details["probe_queue"]
    probe = s.spec.isolation.probe.for_family(env.family)
    bound = probe.start_timeout if probe is not None else PROBE_START_TIMEOUT
    try:
        status = await calls.wait_for_probe(s, queue, bound)
    except ActivityError as exc:
        cancelled(exc)
        status = ProbeStatus(queue=queue, polling=False)
        s.finding("PROBE_NOT_STARTED", f"could not ask Temporal whether the {env.family} probe polls {queue}: {describe(exc)}", could_not_verify=True)
    else:
        if not status.polling:
            s.finding(
                "PROBE_NOT_STARTED",
                f"the {env.family} probe never polled its task queue {queue} within {format_duration(bound)}: "
                "the checks that need the isolated network could not run (see the probe's log)",
                could_not_verify=True,
            )
    s.probes[env.family] = status.polling
    return status


async def hold(s: DrillState) -> None:
    """Keep the environment for inspection (teardown.hold), until released or the hold ends."""
    if s.spec.teardown.hold <= timedelta(0):
        return
    s.phase("hold")
    started = workflow.now()
    s.hold_until = started + s.spec.teardown.hold
    s.max_hold_until = started + s.spec.teardown.max_hold
    s.status.hold_until = s.hold_until
    while not s.released:
        remaining = (s.hold_until - workflow.now()).total_seconds()
        if remaining <= 0:
            break
        try:
            await workflow.wait_condition(lambda: s.released, timeout=remaining)
        except asyncio.TimeoutError:
            continue  # an extension may have moved hold_until: re-check
    how = "released" if s.released else "hold expired"
    s.event("hold", started, workflow.now(), "PASSED", detail=f"environment held for inspection; {how}")


async def teardown(s: DrillState) -> None:
    """Tear down every environment, retrying until it succeeds; never skipped, never hidden."""
    s.phase("teardown")
    started = workflow.now()
    envs = list(s.envs.values())
    if not envs:
        # Creation may have been interrupted before we heard back: tear down by tag anyway.
        families = list(dict.fromkeys(t.family for t in s.spec.targets)) if s.points else []
        envs = [s.new_environment(f) for f in families]
    reports = await to_the_end(s, asyncio.gather(*(calls.teardown(s, e) for e in envs)))
    s.teardowns = list(reports)
    for r in reports:
        if r.attempt > 1:
            s.findings.append(Finding(code="TEARDOWN_RETRIED", severity="warning", message=f"teardown of {r.environment_id} succeeded on attempt {r.attempt}"))
    refused = [o for r in reports for o in r.outcomes if o.result == "refused"]
    if refused:
        left = "; ".join(f"{o.label} ({o.reason or 'no reason given'})" for o in refused)
        s.findings.append(Finding(code="TEARDOWN_REFUSED_UNTAGGED", severity="warning", message="left alone, not provably this drill's: " + left))
    detail = "; ".join(
        f"{r.environment_id}: deleted {len(r.deleted)}, already gone {len(r.already_gone)}" + (f", attempt {r.attempt}" if r.attempt > 1 else "")
        for r in reports
    )
    s.event("teardown", started, workflow.now(), "PASSED", detail=detail or "nothing was created")


async def to_the_end(s: DrillState, awaitable: Any) -> Any:
    """Await `awaitable` to its end even when the workflow is cancelled meanwhile (teardown,
    evidence): the cancellation is remembered in `late_cancel` and honoured afterwards. Without
    this a cancel during teardown ended the workflow at once, abandoning the teardown activity
    (leaking what it had not deleted yet) and recording no evidence."""
    fut = asyncio.ensure_future(awaitable)
    while True:
        try:
            return await asyncio.shield(fut)
        except (asyncio.CancelledError, CancelledError):
            if fut.cancelled():
                raise
            s.late_cancel = True
