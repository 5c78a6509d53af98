"""Selections: targets that choose their resources at drill time (`select:` in the drill format).

A selecting target names no resource. At drill time the `discover` activity asks its provider which
resources match (`Provider.discover`: the resources of the target's kind whose tags match, each with
the times of its recovery points) and the evidence store when each was last restored. This module
then decides, without I/O and without a clock of its own, so the workflow can call it:

- `choose`: which candidates have a recovery point in the rule's window, and which `sample` of them
  to drill: those restored least recently first, ties broken by a seeded hash of the resource (the
  same seed and the same history pick the same resources, whatever order the provider listed them
  in). One drill restores each provider family into one scope (an AWS region, an Azure location, a
  GCP region), so candidates elsewhere wait for a later run;
- `expand`: the drill with each selecting target replaced by one target per chosen resource, named
  `<target>-<resource>`, and each validation of the selecting target repeated for each of them;
- `resource_ref` / `resource_keys`: which protected resource a (named) target restores, the key
  coverage (drdrill/evidence/coverage.py) counts restores by.

Every choice is recorded, with its reason, in a `SelectionRecord` that the evidence keeps.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timezone
from typing import Any, Mapping, Optional, Sequence

from pydantic import BaseModel, Field, ValidationError

from drdrill.core.drill import DrillSpecBase
from drdrill.core.durations import format_duration
from drdrill.core.schema import NAME_RE, Selection

NEVER = datetime.min.replace(tzinfo=timezone.utc)
_NAME_MAX = 40
_VALIDATION_NAME_MAX = 80

# ------------------------------------------------------------------ models


class ProtectedResource(BaseModel):
    """A resource a provider backs up, as `Provider.discover` and `Provider.protected_inventory`
    find it: its id, where it lives, the `source:` that restores it, its recovery points' times,
    and why it counts as protected (`protected_by`; empty: it does not)."""

    kind: str  # the target kind that restores it: aws.ebs, azure.vm, gcp.disk, postgres, …
    id: str  # the provider's id: vol-…, an ARM id, <project>/<zone>/<name>, a repository path
    name: str = ""  # what people call it (its Name tag, its disk name, the repository's directory)
    scope: Optional[str] = None  # where one drill restores it: an AWS region, an Azure location, a GCP region
    source: dict[str, Any] = Field(default_factory=dict)
    tags: dict[str, str] = Field(default_factory=dict)
    newest_point: Optional[datetime] = None
    oldest_point: Optional[datetime] = None
    points: int = 0
    protected_by: list[str] = Field(default_factory=list)

    @property
    def key(self) -> str:
        return resource_key(self.kind, self.id)

    @property
    def family(self) -> str:
        return self.kind.split(".", 1)[0]

    @property
    def label(self) -> str:
        return f"{self.name} ({self.id})" if self.name and self.name != self.id else self.id

    def note_protection(
        self, protected_tag: Optional[str], *, tag_word: str = "tag", points_word: str = "recovery point(s)"
    ) -> "ProtectedResource":
        """Record why it counts as protected (a provider's protected inventory): the protection tag it
        carries, in the cloud's word for one, and its recovery points, in the cloud's word for them."""
        if protected_tag and protected_tag in self.tags:
            self.protected_by.append(f"{tag_word} {protected_tag}={self.tags[protected_tag]}")
        if self.points:
            self.protected_by.append(f"{self.points} {points_word}")
        return self


class LastRestore(BaseModel):
    """The latest run that restored a resource (from the evidence store)."""

    at: datetime
    drill: str
    drill_id: str
    verdict: str


class Discovery(BaseModel):
    """What the discover activity found for one selecting target."""

    target: str
    resources: list[ProtectedResource] = Field(default_factory=list)
    last_restored: dict[str, LastRestore] = Field(default_factory=dict)  # by resource key
    history_note: str = ""  # why the restore history is missing, when it is


class Candidate(BaseModel):
    """One matching resource, and why it was or was not chosen."""

    key: str
    id: str
    name: str = ""
    scope: Optional[str] = None
    newest_point: Optional[datetime] = None
    last_restored: Optional[datetime] = None
    last_drill_id: Optional[str] = None
    in_window: bool = False  # it has a recovery point in the rule's window
    chosen: bool = False
    target: Optional[str] = None  # the target it became
    reason: str = ""


class SelectionRecord(BaseModel):
    """A selection as the evidence keeps it: what matched, what was chosen, and why."""

    target: str
    provider: str
    criteria: dict[str, Any] = Field(default_factory=dict)
    seed: str
    sample: Optional[int] = None
    scope: Optional[str] = None
    matched: int = 0
    eligible: int = 0
    chosen: list[str] = Field(default_factory=list)  # the targets it expanded into
    candidates: list[Candidate] = Field(default_factory=list)
    note: str = ""

    @property
    def summary(self) -> str:
        where = f" in {self.scope}" if self.scope else ""
        return f"{self.target}: {len(self.chosen)} of {self.matched} matching{where} ({self.eligible} with a recovery point in the window): {', '.join(self.chosen) or 'none'}"


class Problem(BaseModel):
    """A finding the expansion raises (the workflow turns it into a Finding)."""

    code: str
    message: str
    target: Optional[str] = None
    severity: str = "error"


class Expansion(BaseModel):
    spec: DrillSpecBase
    records: list[SelectionRecord] = Field(default_factory=list)
    problems: list[Problem] = Field(default_factory=list)

    @property
    def empty(self) -> bool:
        return any(p.code == "SELECTION_EMPTY" for p in self.problems)


# ------------------------------------------------------------------ which resource a target restores


def resource_key(kind: str, ident: str) -> str:
    """The key a resource is counted by across drills and coverage: `<kind>:<id>` (ARM ids are case-insensitive)."""
    return f"{kind}:{ident.lower() if kind.startswith('azure.') else ident}"


def resource_ref(target: Any) -> Optional[tuple[str, str]]:
    """(kind, id) of the resource a named target restores; None for a selecting target."""
    source = getattr(target, "source", None)
    if source is None:
        return None
    fields = getattr(target, "ID_FIELDS", ())  # how the kind's `source` names its resource (its schema)
    values = [getattr(source, f, None) for f in fields] if fields else []
    if not values or not all(isinstance(v, str) and v for v in values):
        # a kind of source this module does not know: its whole description names it
        values = [",".join(f"{k}={v}" for k, v in sorted(source.model_dump(mode="json", exclude_defaults=True).items()))]
    return target.provider, "/".join(values)


def resource_keys(targets: list[Any]) -> dict[str, str]:
    """{target name: resource key} for every named target."""
    out = {}
    for t in targets:
        ref = resource_ref(t)
        if ref is not None:
            out[t.name] = resource_key(*ref)
    return out


# ------------------------------------------------------------------ matching and the window


def tags_match(tags: dict[str, str], selection: Selection) -> bool:
    """Every `tags` entry matches and no `exclude_tags` entry does ('*' matches any value)."""

    def has(k: str, v: str) -> bool:
        return k in tags and (v == "*" or tags[k] == v)

    return all(has(k, v) for k, v in selection.tags.items()) and not any(has(k, v) for k, v in selection.exclude_tags.items())


def outside_window(resource: ProtectedResource, rule: Any, now: datetime) -> Optional[str]:
    """Why the resource has no recovery point in the rule's window (None: it has one).

    latest: any point no older than max_age (when set); random: a point within `within`; at: a
    point at or before `at`. No point after `now` counts (a drill as of an earlier moment)."""
    if resource.newest_point is None:
        return "no recovery point"
    oldest = resource.oldest_point or resource.newest_point
    if oldest > now:
        return f"no recovery point as of {now.isoformat()}"
    newest = min(resource.newest_point, now)
    if rule.rule == "latest" and rule.max_age is not None and now - newest > rule.max_age:
        return f"newest recovery point is {format_duration(now - newest)} old, older than max_age {format_duration(rule.max_age)}"
    if rule.rule == "random" and now - newest > rule.within:
        return f"no recovery point within the last {format_duration(rule.within)}"
    if rule.rule == "at" and oldest > rule.at:
        return f"no recovery point at or before {rule.at.isoformat()}"
    return None


# ------------------------------------------------------------------ choosing


def _draw(seed: str, key: str) -> str:
    """The seeded tie-break: the same seed orders the same resources the same way, whatever order
    they were listed in."""
    return hashlib.sha256(f"{seed}/{key}".encode()).hexdigest()


def _when(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%MZ")


def choose(
    target: Any,
    discovery: Discovery,
    *,
    seed: str,
    now: datetime,
    scope: Optional[tuple[str, str]] = None,
) -> tuple[SelectionRecord, list[ProtectedResource]]:
    """Which resources a selecting target drills this time, and the record of why.

    `scope` is (where, why) when the drill already restores the family somewhere (the isolation
    settings, or an earlier target); otherwise the scope of the first candidate in the order is it."""
    sel: Selection = target.select
    last = discovery.last_restored
    candidates, eligible = _candidates(target, discovery, now)
    eligible.sort(key=lambda rc: (last[rc[0].key].at if rc[0].key in last else NEVER, _draw(seed, rc[0].key)))
    if scope is None and eligible and eligible[0][0].scope is not None:
        scope = (eligible[0][0].scope, "where the least recently restored candidate is")  # type: ignore[assignment]
    wanted = sel.sample or len(eligible)
    never = sum(1 for r, _ in eligible if r.key not in last)
    chosen: list[ProtectedResource] = []
    for r, c in eligible:
        lr = last.get(r.key)
        if scope is not None and r.scope != scope[0]:
            c.reason = f"in {r.scope}: this drill restores {target.family} resources in {scope[0]} ({scope[1]})"
        elif len(chosen) >= wanted:
            c.reason = f"not drawn: sample of {wanted} reached" if lr is None else f"restored more recently ({_when(lr.at)})"
        else:
            c.chosen = True
            c.reason = (
                f"never restored (seeded draw among {never})"
                if lr is None
                else f"least recently restored: {_when(lr.at)} by {lr.drill_id} ({lr.verdict})"
            )
            chosen.append(r)
    record = SelectionRecord(
        target=target.name,
        provider=target.provider,
        criteria=sel.criteria(),
        seed=seed,
        sample=sel.sample,
        scope=scope[0] if scope else None,
        matched=len(candidates),
        eligible=len(eligible),
        candidates=candidates,
        note=discovery.history_note,
    )
    return record, chosen


def _candidates(target: Any, discovery: Discovery, now: datetime) -> tuple[list[Candidate], list[tuple[ProtectedResource, Candidate]]]:
    """Every resource discovery found, as a candidate (in key order), and those whose recovery
    points fall within the target's rule (the others carry why not)."""
    last = discovery.last_restored
    candidates: list[Candidate] = []
    eligible: list[tuple[ProtectedResource, Candidate]] = []
    for r in sorted(discovery.resources, key=lambda r: r.key):
        lr = last.get(r.key)
        c = Candidate(
            key=r.key, id=r.id, name=r.name, scope=r.scope, newest_point=r.newest_point,
            last_restored=lr.at if lr else None, last_drill_id=lr.drill_id if lr else None,
        )
        candidates.append(c)
        why_not = outside_window(r, target.recovery_point, now)
        if why_not:
            c.reason = why_not
        else:
            c.in_window = True
            eligible.append((r, c))
    return candidates, eligible


# ------------------------------------------------------------------ expanding the drill


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "r"


def target_name(base: str, resource: ProtectedResource, taken: set[str]) -> str:
    """`<base>-<resource>`, a valid target name (at most 40 characters) not in `taken`; when the
    resource's name does not fit, or is taken, a short hash of its key keeps the name unique and stable."""
    slug = _slug(resource.name or resource.id)
    name = f"{base}-{slug}"
    if len(name) <= _NAME_MAX and name not in taken and re.match(NAME_RE, name):
        return name
    digest = hashlib.sha256(resource.key.encode()).hexdigest()[:6]
    room = _NAME_MAX - len(base) - len(digest) - 2
    name = f"{base}-{slug[:room].strip('-')}-{digest}" if room > 0 else f"{base[: _NAME_MAX - 7]}-{digest}"
    return name.replace("--", "-")


def concrete_target(target: Any, resource: ProtectedResource, name: str) -> Any:
    """The named target that restores `resource`: the selecting target's rule and restore options,
    the resource's `source`."""
    data = target.model_dump(mode="json", exclude={"select", "source"})
    data.update(name=name, source=resource.source)
    return type(target).model_validate(data)


def drill_scopes(spec: DrillSpecBase) -> dict[str, tuple[str, str]]:
    """Where the drill restores each family, when its file says so: the isolation settings, else a
    named target's own region (each family's target model says which: isolation_scope, own_scope)."""
    scopes: dict[str, tuple[str, str]] = {}
    for t in spec.targets:
        scope = type(t).isolation_scope(spec.isolation)
        if scope and t.family not in scopes:
            scopes[t.family] = scope
    for t in spec.targets:
        scope = t.own_scope()
        if scope and t.family not in scopes:
            scopes[t.family] = scope
    return scopes


def expand(spec: DrillSpecBase, discoveries: dict[str, Discovery], *, default_seed: str, now: datetime) -> Expansion:
    """The drill with every selecting target replaced by the targets it chose (and their
    validations repeated), the selection records, and the problems found. When a selection chose
    nothing, the spec is returned unchanged and the problems say why (SELECTION_EMPTY)."""
    scopes = drill_scopes(spec)
    taken = {t.name for t in spec.targets if t.select is None}
    targets: list[Any] = []
    renamed: dict[str, list[str]] = {}
    records: list[SelectionRecord] = []
    problems: list[Problem] = []
    for t in spec.targets:
        if t.select is None:
            targets.append(t)
            continue
        seed = str(t.select.seed) if t.select.seed is not None else default_seed
        record, chosen = choose(t, discoveries[t.name], seed=seed, now=now, scope=scopes.get(t.family))
        records.append(record)
        if record.scope and t.family not in scopes:
            scopes[t.family] = (record.scope, f"where target {t.name}'s selection restores")
        names = []
        for r in chosen:
            candidate = next(c for c in record.candidates if c.key == r.key)
            name = target_name(t.name, r, taken)
            try:
                targets.append(concrete_target(t, r, name))
            except ValidationError as exc:  # a provider's source this kind of target refuses: never a broken workflow
                candidate.chosen = False
                candidate.reason = f"cannot be restored as a {t.provider} target: {exc.errors()[0].get('msg', exc)}"
                continue
            taken.add(name)
            names.append(name)
            candidate.target = name
        record.chosen = names
        problems += _problems(t, record)
        renamed[t.name] = names
    if any(p.code == "SELECTION_EMPTY" for p in problems):
        return Expansion(spec=spec, records=records, problems=problems)
    validations = expand_checks(spec.validations, renamed)
    return Expansion(spec=spec.model_copy(update={"targets": targets, "validations": validations}), records=records, problems=problems)


def expand_checks(checks: Sequence[Any], renamed: Mapping[str, list[str]]) -> list[Any]:
    """Each check of a selecting target, once per resource it chose (named `<check>:<resource>`);
    the other checks as they are. `renamed`: selecting target -> its expanded targets' names."""
    out = []
    for v in checks:
        tname = getattr(v, "target", None)
        if tname not in renamed:
            out.append(v)
            continue
        for name in renamed[tname]:
            label = f"{v.name}:{name[len(tname) + 1:]}"[:_VALIDATION_NAME_MAX] if v.name else None
            out.append(v.model_copy(update={"target": name, "name": label}))
    return out


def _problems(target: Any, record: SelectionRecord) -> list[Problem]:
    out = []
    kind = target.provider
    if not any(c.chosen for c in record.candidates):
        if not record.matched:
            why = f"no {kind} resource matches {record.criteria}"
        else:
            reasons = sorted({c.reason for c in record.candidates})
            why = f"{record.matched} {kind} resource(s) match, none can be drilled now: {'; '.join(reasons)}"
        out.append(Problem(code="SELECTION_EMPTY", message=f"target {target.name}: the selection chose nothing: {why}", target=target.name))
    stale = [c for c in record.candidates if not c.in_window]
    if stale:
        out.append(
            Problem(
                code="SELECTION_WITHOUT_RECOVERY_POINT",
                severity="warning",
                target=target.name,
                message=f"target {target.name}: {len(stale)} matching resource(s) have no recovery point in the window and cannot be drilled: "
                + ", ".join(f"{c.name or c.id} ({c.reason})" for c in stale[:20])
                + (" …" if len(stale) > 20 else ""),
            )
        )
    if record.note:
        out.append(Problem(code="RESTORE_HISTORY_UNAVAILABLE", severity="warning", target=target.name, message=f"target {target.name}: {record.note}"))
    return out


__all__ = [
    "Candidate",
    "Discovery",
    "Expansion",
    "LastRestore",
    "ProtectedResource",
    "SelectionRecord",
    "choose",
    "concrete_target",
    "expand",
    "outside_window",
    "resource_key",
    "resource_keys",
    "resource_ref",
    "tags_match",
    "target_name",
]
