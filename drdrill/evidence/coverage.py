"""Coverage: was every protected resource restored, when, by which drill, with what verdict?

A resource is *protected* when a drill names it or selects it, or when its provider's inventory
says so (it carries the policy's protected tag, or it has recovery points:
`Provider.protected_inventory`). It is *covered* in a period when a run in the period restored it
and passed. Restores are read from the evidence store: each run records the resource every target
restored (`DrillResult.resources`, keyed as drdrill/core/selection.py keys them).

A provider whose inventory cannot be read (no credentials, no network) is never left out: its
resources are listed from the drill files and the evidence, as COULD_NOT_VERIFY.

Used by `drdrill coverage` (`coverage_for`; rendered by coverage_report.py) and the period report
(period.py), the discover activity (`last_restored`: when each candidate was last restored) and the
scheduled coverage check (activities/coverage.py, `gather`).
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Mapping, Optional

from pydantic import BaseModel, Field

from drdrill.core.models import DrillContext
from drdrill.core.redact import redact
from drdrill.core.selection import LastRestore, ProtectedResource, resource_key, resource_keys, resource_ref
from drdrill.core.coverage_policy import COVERAGE_FILE
from drdrill.core.durations import format_duration
from drdrill.core.schema import SpecError
from drdrill.providers.spec import COVERED, CoverageSpec, DrillSpec, load_coverage_policy, load_spec, parse_spec
from drdrill.core.times import parse_time
from drdrill.evidence.render import is_simulation
from drdrill.evidence.store import SCHEMA, open_store
from drdrill.providers import load_provider
from drdrill.providers.base import Provider

FLAGS = ("NEVER_DRILLED", "LAST_DRILL_FAILED", "NO_RECENT_RECOVERY_POINT", "NOT_DRILLED_IN_PERIOD", "COULD_NOT_VERIFY")
CONTROL = "every protected resource restored at least once in the period"
Status = Literal["covered", "not covered", "unprotected", "could not verify"]


# ------------------------------------------------------------------ restores, from the evidence


class Restore(BaseModel):
    """One run that had a resource as a target."""

    at: datetime  # the run's declared time
    drill: str
    drill_id: str
    verdict: str
    target: str
    restored: bool  # the restore completed (the target became ready)


def restores_of(record: dict) -> list[tuple[str, Restore]]:
    """(resource key, restore) for every target of one run's evidence record. Runs recorded
    before `resources` existed name theirs in the drill file they ran (spec_text). A simulation
    restored nothing: it has none."""
    if is_simulation(record):
        return []
    keys = record.get("resources")
    if not isinstance(keys, dict):
        keys = _keys_from_spec(record.get("spec_text"))
    ready = {r.get("target") for r in record.get("restored") or [] if isinstance(r, dict) and r.get("ready")}
    at = parse_time(record.get("declared"))
    if at is None:
        return []
    return [
        (key, Restore(at=at, drill=record.get("name", ""), drill_id=record.get("drill_id", ""), verdict=record.get("verdict", ""), target=name, restored=name in ready))
        for name, key in keys.items()
    ]


def _keys_from_spec(text: Any) -> dict[str, str]:
    if not isinstance(text, str) or not text:
        return {}
    try:
        return resource_keys(parse_spec(text).targets)
    except (SpecError, ValueError):
        return {}


def restores_by_resource(store: Any, until: Optional[datetime] = None) -> dict[str, list[Restore]]:
    """{resource key: its runs, oldest first}, from every run declared before `until`."""
    rows = store.conn.execute(
        f"SELECT record FROM {SCHEMA}.runs WHERE declared < coalesce(%s, 'infinity'::timestamptz) ORDER BY declared, drill_id",
        (until,),
    ).fetchall()
    out: dict[str, list[Restore]] = {}
    for (text,) in rows:
        try:
            record = json.loads(text)
        except ValueError:
            continue  # `drdrill evidence verify` reports it
        for key, restore in restores_of(record):
            out.setdefault(key, []).append(restore)
    return out


def last_restored(keys: list[str], dsn: Optional[str] = None) -> dict[str, LastRestore]:
    """When each resource was last restored (a completed restore, whatever the verdict), for the
    discover activity: a selection prefers those restored least recently."""
    wanted = set(keys)
    with open_store(dsn) as store:
        history = restores_by_resource(store)
    out = {}
    for key in wanted:
        done = [r for r in history.get(key, []) if r.restored]
        if done:
            r = done[-1]
            out[key] = LastRestore(at=r.at, drill=r.drill, drill_id=r.drill_id, verdict=r.verdict)
    return out


# ------------------------------------------------------------------ periods


def current_period(every: str, now: datetime) -> tuple[str, datetime, datetime]:
    """The period of `every` (quarter, month, year) that holds `now`: (label, start, end)."""
    now = now.astimezone(timezone.utc)
    if every == "year":
        return f"{now.year}", datetime(now.year, 1, 1, tzinfo=timezone.utc), datetime(now.year + 1, 1, 1, tzinfo=timezone.utc)
    if every == "month":
        start = datetime(now.year, now.month, 1, tzinfo=timezone.utc)
        end = datetime(now.year + (now.month == 12), now.month % 12 + 1, 1, tzinfo=timezone.utc)
        return f"{now.year}-{now.month:02d}", start, end
    q = (now.month - 1) // 3 + 1
    start = datetime(now.year, 3 * q - 2, 1, tzinfo=timezone.utc)
    end = datetime(now.year + 1, 1, 1, tzinfo=timezone.utc) if q == 4 else datetime(now.year, 3 * q + 1, 1, tzinfo=timezone.utc)
    return f"{now.year}Q{q}", start, end


# ------------------------------------------------------------------ the drills directory


def load_drills(drills_dir: str | Path) -> tuple[list[DrillSpec], CoverageSpec, list[str]]:
    """The drill files of a directory, its coverage policy (coverage.yaml; defaults without one),
    and the problems found (a drill file that does not load is named, never skipped silently).

    Raises SpecError for a coverage.yaml that does not load: a policy is never guessed."""
    d = Path(drills_dir)
    problems: list[str] = []
    if not d.is_dir():
        return [], CoverageSpec(), [f"no drills directory {d}: the drills' resources are not counted (use --drills DIR)"]
    policy = load_coverage_policy(d) or CoverageSpec()
    specs = []
    for path in sorted(list(d.glob("*.yaml")) + list(d.glob("*.yml"))):
        if path.name == COVERAGE_FILE:
            continue
        try:
            specs.append(load_spec(path))
        except SpecError as exc:
            problems.append(str(exc))
    return specs, policy, problems



# ------------------------------------------------------------------ the report


class DrillRef(BaseModel):
    drill: str
    target: str
    how: Literal["names", "selects"]


class CoverageRow(BaseModel):
    key: str
    kind: str
    family: str
    id: str
    name: str = ""
    scope: Optional[str] = None
    protected: bool = False
    protected_by: list[str] = Field(default_factory=list)
    drills: list[DrillRef] = Field(default_factory=list)  # the drills that name or select it: what covers it
    last_drill: Optional[Restore] = None  # the latest run that had it as a target
    last_restored: Optional[Restore] = None  # the latest run that restored it
    restored_in_period: Optional[Restore] = None  # the latest PASSED run in the period that restored it
    newest_point: Optional[datetime] = None
    point_age_seconds: Optional[float] = None
    points: int = 0
    flags: list[str] = Field(default_factory=list)
    status: Status = "not covered"


class ProviderState(BaseModel):
    family: str
    read: bool = False
    resources: int = 0
    detail: str = ""
    regions: list[str] = Field(default_factory=list)  # the regions whose inventory was read (aws)


class CoverageReport(BaseModel):
    period: str
    start: datetime
    end: datetime
    generated_at: datetime
    policy: dict[str, Any] = Field(default_factory=dict)
    providers: list[ProviderState] = Field(default_factory=list)
    rows: list[CoverageRow] = Field(default_factory=list)
    problems: list[str] = Field(default_factory=list)
    summary: dict[str, Any] = Field(default_factory=dict)
    control: dict[str, Any] = Field(default_factory=dict)

    def protected(self) -> list[CoverageRow]:
        return [r for r in self.rows if r.protected]

    def not_covered(self) -> list[CoverageRow]:
        return [r for r in self.rows if r.protected and r.status != "covered"]


ProviderFor = Callable[[str], Provider]


def coverage_report(
    specs: list[DrillSpec],
    policy: CoverageSpec,
    *,
    period: str,
    start: datetime,
    end: datetime,
    now: datetime,
    history: dict[str, list[Restore]],
    provider_for: ProviderFor,
    problems: Optional[list[str]] = None,
) -> CoverageReport:
    """Every protected resource and how it was drilled (see the module docstring)."""
    rows: dict[str, CoverageRow] = {}
    states: list[ProviderState] = []
    notes: list[str] = list(problems or [])
    for family in _families(specs, policy):
        state = ProviderState(family=family)
        try:
            provider = provider_for(family)
            state.regions = list(getattr(provider, "regions", None) or [])
            _read_provider(provider, family, specs, policy, rows, now, notes)
            state.read = True
        except Exception as exc:  # noqa: BLE001 - an unreadable provider is reported, never omitted
            state.detail = f"the {family} inventory could not be read: {redact(str(getattr(exc, 'message', exc)) or type(exc).__name__)}"
        states.append(state)
    unreadable = {s.family for s in states if not s.read}
    _add_named(specs, rows)
    for key, runs in history.items():  # resources of an unreadable provider that drills restored before
        kind = key.split(":", 1)[0]
        if key not in rows and kind.split(".", 1)[0] in unreadable:
            rows[key] = CoverageRow(key=key, kind=kind, family=kind.split(".", 1)[0], id=key.split(":", 1)[1], protected_by=[f"restored by drill {runs[-1].drill}"])
    for row in rows.values():
        _judge(row, history.get(row.key, []), policy, start, end, now, readable=row.family not in unreadable)
    for s in states:
        s.resources = sum(1 for r in rows.values() if r.family == s.family)
    ordered = sorted(rows.values(), key=lambda r: (not r.protected, r.status == "covered", r.family, r.kind, r.name or r.id))
    report = CoverageReport(
        period=period, start=start, end=end, generated_at=now, policy=policy.model_dump(mode="json"),
        providers=states, rows=ordered, problems=notes,
    )
    report.summary = _summary(report)
    report.control = _control(report, policy)
    return report


def _families(specs: list[DrillSpec], policy: CoverageSpec) -> list[str]:
    found = {t.family for s in specs for t in s.targets} | set(policy.providers)
    return sorted(found & set(COVERED))  # simulated resources protect nothing


def regions_named(specs: list[DrillSpec], policy: CoverageSpec) -> list[str]:
    """The AWS regions the drill files (their sources and selections) and coverage.yaml name."""
    found: dict[str, None] = {}
    for spec in specs:
        for t in spec.targets:
            if t.family != "aws":
                continue
            region = getattr(t.source, "region", None) if t.source is not None else None
            found.update((r, None) for r in ([region] if region else []) + list(getattr(t.select, "regions", None) or []))
    found.update((r, None) for r in policy.regions)
    return list(found)


def regions_to_read(specs: list[DrillSpec], policy: CoverageSpec, env: Mapping[str, str]) -> list[str]:
    """Every AWS region coverage reads: those the drill files and coverage.yaml name, and
    DRDRILL_AWS_REGIONS (the provider adds its default region)."""
    listed = [r.strip() for r in env.get("DRDRILL_AWS_REGIONS", "").split(",") if r.strip()]
    return list(dict.fromkeys(regions_named(specs, policy) + listed))


def _read_provider(
    provider: Provider, family: str, specs: list[DrillSpec], policy: CoverageSpec, rows: dict[str, CoverageRow], now: datetime, notes: list[str]
) -> None:
    for r in provider.protected_inventory(policy.protected_tag):
        if policy.protected_by == "tag":  # only the tag makes a resource protected, not its recovery points
            tag = policy.protected_tag or ""
            r.protected_by = [f"tag {tag}={r.tags[tag]}"] if tag in r.tags else []
        _add(rows, r)
    for spec in specs:
        for t in spec.targets:
            if t.family != family:
                continue
            if t.select is not None:
                for r in provider.discover(t.provider, t.select):
                    _add(rows, r, DrillRef(drill=spec.name, target=t.name, how="selects"))
            elif t.inventory_selection() is not None:  # a named source found as discovery finds it (postgres: a repository)
                for r in provider.discover(t.provider, t.inventory_selection()):
                    _add(rows, r)
            elif t.INVENTORY_BY_POINT:  # a named source no inventory lists (postgres: dump files, a stanza, …)
                _add(rows, named_source_item(provider, spec, t, now, notes))


def named_source_item(provider: Provider, spec: DrillSpec, target: Any, now: datetime, notes: list[str]) -> ProtectedResource:
    """A named source no inventory lists (a postgres source of any kind) as an inventory item: its key is the one the drill's runs
    record (selection.resource_key), its name says where the backups are, and its newest recovery
    point is the one a drill declared now would restore (none found: NO_RECENT_RECOVERY_POINT)."""
    kind, ident = resource_ref(target)  # type: ignore[misc]
    item = ProtectedResource(kind=kind, id=ident, name=target.source_label(), source=target.source.model_dump(mode="json", exclude_none=True))
    ctx = DrillContext(drill_id=f"coverage-{spec.name}", drill_name=spec.name, declared=now, expires_at=now + timedelta(hours=1))
    try:
        point = provider.find_recovery_point(ctx, target)
    except Exception as exc:  # noqa: BLE001 - no recovery point found: the row says NO_RECENT_RECOVERY_POINT, and why
        notes.append(f"drill {spec.name}, target {target.name} ({item.name}): no recovery point read: "
                     f"{redact(str(getattr(exc, 'message', exc)) or type(exc).__name__)}")
        return item
    item.newest_point, item.points = point.consistent_time, max(point.candidates, 1)
    return item
def _add(rows: dict[str, CoverageRow], r: ProtectedResource, ref: Optional[DrillRef] = None) -> None:
    row = rows.get(r.key)
    if row is None:
        row = rows[r.key] = CoverageRow(
            key=r.key, kind=r.kind, family=r.family, id=r.id, name=r.name, scope=r.scope,
            protected_by=list(r.protected_by), newest_point=r.newest_point, points=r.points,
        )
    if ref is not None and ref not in row.drills:
        row.drills.append(ref)
        row.protected_by.append(f"selected by drill {ref.drill}")


def _add_named(specs: list[DrillSpec], rows: dict[str, CoverageRow]) -> None:
    for spec in specs:
        for t in spec.targets:
            ref = resource_ref(t)
            if not t.PROTECTS or ref is None:
                continue
            key = resource_key(*ref)
            row = rows.get(key)
            if row is None:
                row = rows[key] = CoverageRow(key=key, kind=ref[0], family=t.family, id=ref[1], name=ref[1].rsplit("/", 1)[-1])
            row.drills.append(DrillRef(drill=spec.name, target=t.name, how="names"))
            row.protected_by.append(f"named by drill {spec.name}")


def _judge(row: CoverageRow, runs: list[Restore], policy: CoverageSpec, start: datetime, end: datetime, now: datetime, readable: bool) -> None:
    row.protected = bool(row.protected_by)
    runs = [r for r in runs if r.at < end]
    row.last_drill = runs[-1] if runs else None
    restored = [r for r in runs if r.restored]
    row.last_restored = restored[-1] if restored else None
    passed = [r for r in restored if r.verdict == "PASSED" and start <= r.at < end]
    row.restored_in_period = passed[-1] if passed else None
    if row.newest_point is not None:
        row.point_age_seconds = (now - row.newest_point).total_seconds()
    if not row.protected:
        row.status = "unprotected"
        return
    flags = []
    if not runs:
        flags.append("NEVER_DRILLED")
    elif row.last_drill and (row.last_drill.verdict != "PASSED" or not row.last_drill.restored):
        flags.append("LAST_DRILL_FAILED")
    if readable and (row.newest_point is None or now - row.newest_point > policy.recovery_point_max_age):
        flags.append("NO_RECENT_RECOVERY_POINT")
    if runs and not passed:
        flags.append("NOT_DRILLED_IN_PERIOD")
    if not readable and not passed:  # restored in the period is proven by the evidence, whatever the inventory says
        flags.append("COULD_NOT_VERIFY")
    row.flags = flags
    row.status = "covered" if passed else ("could not verify" if not readable else "not covered")


def _summary(report: CoverageReport) -> dict[str, Any]:
    protected = report.protected()
    covered = [r for r in protected if r.status == "covered"]
    by_provider: dict[str, dict[str, int]] = {}
    for r in protected:
        p = by_provider.setdefault(r.family, {"protected": 0, "covered": 0, "could_not_verify": 0})
        p["protected"] += 1
        p["covered"] += r.status == "covered"
        p["could_not_verify"] += r.status == "could not verify"
    flags = {f: sum(1 for r in protected if f in r.flags) for f in FLAGS}
    return {
        "protected": len(protected),
        "covered": len(covered),
        "fraction": len(covered) / len(protected) if protected else None,
        "unprotected": sum(1 for r in report.rows if not r.protected),
        "could_not_verify": sum(1 for r in protected if r.status == "could not verify"),
        "by_provider": dict(sorted(by_provider.items())),
        "flags": flags,
    }


def _control(report: CoverageReport, policy: CoverageSpec) -> dict[str, Any]:
    s = report.summary
    unreadable = [p for p in report.providers if not p.read]
    want = f"at least {policy.min_fraction:.0%} of protected resources" if policy.min_fraction < 1 else "every protected resource"
    gaps = [p.detail for p in unreadable]
    gaps += [f"{r.name or r.id} ({r.kind}) not restored in the period" + (f": {', '.join(r.flags)}" if r.flags else "") for r in report.not_covered()]
    if not s["protected"]:
        status, detail = "could not verify", "no protected resource is known: no drill names or selects one, and no provider inventory lists one"
    elif unreadable:
        status, detail = "could not verify", f"{len(unreadable)} provider inventor{'y' if len(unreadable) == 1 else 'ies'} could not be read"
    elif s["fraction"] >= policy.min_fraction:
        status, detail = "met", f"{s['covered']}/{s['protected']} protected resources restored in {report.period}"
    else:
        status, detail = "not met", f"{s['covered']}/{s['protected']} protected resources restored in {report.period}; {want} must be"
    return {"text": CONTROL, "status": status, "detail": detail, "gaps": gaps, "evidenced_by": sorted({r.restored_in_period.drill_id for r in report.rows if r.restored_in_period})}


def describe_age(seconds: Optional[float]) -> str:
    return format_duration(timedelta(seconds=seconds)) if seconds is not None else "-"


# ------------------------------------------------------------------ from a drills directory


def gather(
    specs: list[DrillSpec],
    policy: CoverageSpec,
    *,
    period: str,
    start: datetime,
    end: datetime,
    now: datetime,
    provider_for: ProviderFor,
    dsn: Optional[str] = None,
    problems: Optional[list[str]] = None,
) -> CoverageReport:
    """coverage_report with the restore history read from the evidence store."""
    with open_store(dsn) as store:
        history = restores_by_resource(store, until=end)
    return coverage_report(
        specs, policy, period=period, start=start, end=end, now=now, history=history, provider_for=provider_for, problems=problems
    )


@contextmanager
def providers_from_environment(given: Optional[dict[str, Provider]] = None, settings: Optional[dict[str, dict]] = None) -> Iterator:
    """`provider_for(family)`: each provider built once from the environment and `settings[family]`
    (closed at the end)."""
    loaded: dict[str, Provider] = {}

    def provider_for(family: str) -> Provider:
        if given and family in given:
            return given[family]
        if family not in loaded:
            loaded[family] = load_provider(family, (settings or {}).get(family))
        return loaded[family]

    try:
        yield provider_for
    finally:
        for p in loaded.values():
            p.close()


def coverage_for(
    store: Any,
    drills_dir: Path,
    period: str,
    start: datetime,
    end: datetime,
    *,
    now: Optional[datetime] = None,
    providers: Optional[dict[str, Provider]] = None,
) -> CoverageReport:
    """The coverage report of `period` ([start, end): drdrill.core.calendar.parse_period) for the
    drill files (and coverage.yaml) in `drills_dir`, with the restores recorded in `store`."""
    specs, policy, problems = load_drills(drills_dir)
    history = restores_by_resource(store, until=end)
    with providers_from_environment(providers, {"aws": {"regions": regions_to_read(specs, policy, os.environ)}}) as provider_for:
        return coverage_report(
            specs, policy, period=period.upper(), start=start, end=end, now=now or datetime.now(timezone.utc),
            history=history, provider_for=provider_for, problems=problems,
        )
