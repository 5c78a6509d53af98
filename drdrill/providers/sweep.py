"""The orphan sweep: find tagged resources whose drill ended or expired, and delete them.

Used by `drdrill sweep` when Temporal is out of reach (then expired resources only: it cannot tell
which drills are running); the OrphanSweepWorkflow runs the same provider calls as activities.
Providers only ever list resources carrying drdrill's tags, and re-check the tag before deleting.

A tag is not proof: anyone allowed to tag can put drdrill's on a production volume. So an orphan is
deleted only when the evidence store records that its drill created it (`created`, from
EvidenceStore.created: (kind, id) -> the drills that recorded creating it); any other is refused,
"not created by drdrill". Without that record (the store out of reach) nothing is deleted.
"""

from __future__ import annotations

from datetime import datetime
from typing import Iterable, Mapping, Optional

from drdrill.core.models import DeletionOutcome, DeletionResult, Orphan
from drdrill.core.times import parse_time
from drdrill.providers.base import Provider

Row = tuple[Orphan, DeletionOutcome]
Created = Mapping[tuple[str, str], list[str]]  # (kind, id) -> the drills that recorded creating it
NOT_CREATED = "not created by drdrill"


def refusal(orphan: Orphan, created: Optional[Created], why_unknown: str = "") -> Optional[str]:
    """Why the sweep must not delete `orphan`, or None when the store records its drill creating it."""
    if created is None:
        return f"nothing is deleted without drdrill's record of what it created, which could not be read: {why_unknown or 'no evidence store'}"
    drills = created.get((orphan.kind, orphan.id))
    if not drills:
        return f"{NOT_CREATED}: no drill recorded creating {orphan.kind} {orphan.id}, whatever its tags say"
    if orphan.drill_id not in drills:
        return f"{NOT_CREATED} for drill {orphan.drill_id!r}, its tag: drill {drills[0]} recorded creating it"
    return None


def sweep(
    providers: dict[str, Provider],
    now: datetime,
    active_drill_ids: Iterable[str] = (),
    dry_run: bool = False,
    expired_only: bool = False,
    created: Optional[Mapping[str, Created]] = None,
    why_unknown: str = "",
) -> list[Row]:
    """[(orphan, outcome)] for every orphan of every provider; deletes unless `dry_run`, and only
    what `created` (family -> its record, None: unknown, `why_unknown`) says a drill created.

    `expired_only` is for a sweep that cannot tell which drills are running (Temporal is out of
    reach): every drill then counts as running, so only a resource whose `drdrill:expires-at` has
    passed is an orphan, and one without an expiry is never taken.
    """
    active = set(active_drill_ids)
    out: list[Row] = []
    for family, provider in providers.items():
        record = None if created is None else created.get(family, {})
        for orphan in _orphans(provider, now, active, expired_only):
            refused = refusal(orphan, record, why_unknown)
            if refused:
                out.append((orphan, outcome_of(orphan, "refused", refused)))
            else:
                out.append((orphan, outcome_of(orphan, "would_delete") if dry_run else delete_one(provider, orphan)))
    return out


def delete_one(provider: Provider, orphan: Orphan) -> DeletionOutcome:
    """The provider's outcome; an exception is a `failed` outcome: one stuck orphan must not hide the others."""
    try:
        return DeletionOutcome.model_validate(provider.delete_orphan(orphan))
    except Exception as exc:  # noqa: BLE001 - reported, never swallowed: the sweep then fails
        return outcome_of(orphan, "failed", getattr(exc, "message", None) or str(exc) or type(exc).__name__)


def outcome_of(orphan: Orphan, result: DeletionResult, reason: str = "") -> DeletionOutcome:
    """The outcome for `orphan` when the provider did not give one (a dry run, a failure)."""
    return DeletionOutcome(kind=orphan.kind, id=orphan.id, result=result, reason=reason, region=orphan.region)


def _orphans(provider: Provider, now: datetime, active: set[str], expired_only: bool) -> list[Orphan]:
    if not expired_only:
        return provider.list_orphans(now, active)
    # With no drill counted as running a provider lists every resource it tagged (for whatever
    # reason); of those, keep the expired ones. Filtering here keeps that rule out of each provider.
    return [o for o in provider.list_orphans(now, set()) if _expired(o, now)]


def _expired(orphan: Orphan, now: datetime) -> bool:
    expires = parse_time(orphan.expires_at)  # tags are written in UTC
    return expires is not None and expires < now


def failed(rows: list[Row]) -> list[Row]:
    """The rows whose deletion failed or was refused (a sweep with any of these exits non-zero)."""
    return [(o, outcome) for o, outcome in rows if outcome.result in ("failed", "refused")]
