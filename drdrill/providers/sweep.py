"""The orphan sweep: find tagged resources whose drill ended or expired, and delete them.

Used by `drdrill sweep` when Temporal is out of reach (then expired resources only: it cannot tell
which drills are running); the OrphanSweepWorkflow runs the same provider calls as activities.
Providers only ever list resources carrying drdrill's tags, and re-check the tag before deleting.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Iterable

from drdrill.core.models import Orphan
from drdrill.providers.base import Provider


def sweep(
    providers: dict[str, Provider],
    now: datetime,
    active_drill_ids: Iterable[str] = (),
    dry_run: bool = False,
    expired_only: bool = False,
) -> list[tuple[Orphan, str]]:
    """[(orphan, action)] for every orphan of every provider; deletes unless `dry_run`.

    `expired_only` is for a sweep that cannot tell which drills are running (Temporal is out of
    reach): every drill then counts as running, so only a resource whose `drdrill:expires-at` has
    passed is an orphan, and one without an expiry is never taken.
    """
    active = set(active_drill_ids)
    out: list[tuple[Orphan, str]] = []
    for family, provider in providers.items():
        for orphan in _orphans(provider, now, active, expired_only):
            if dry_run:
                out.append((orphan, "would delete"))
                continue
            try:
                out.append((orphan, provider.delete_orphan(orphan)))
            except Exception as exc:  # noqa: BLE001 - one stuck orphan must not hide the others
                out.append((orphan, f"failed: {exc}"))
    return out


def _orphans(provider: Provider, now: datetime, active: set[str], expired_only: bool) -> list[Orphan]:
    if not expired_only:
        return provider.list_orphans(now, active)
    # With no drill counted as running a provider lists every resource it tagged (for whatever
    # reason); of those, keep the expired ones. Filtering here keeps that rule out of each provider.
    return [o for o in provider.list_orphans(now, set()) if _expired(o, now)]


def _expired(orphan: Orphan, now: datetime) -> bool:
    expires = orphan.expires_at
    if expires is None:
        return False
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=timezone.utc)  # tags are written in UTC
    return expires < now


def failed(rows: list[tuple[Orphan, str]]) -> list[tuple[Orphan, str]]:
    """The rows whose deletion failed or was refused (a sweep with any of these exits non-zero)."""
    return [(o, a) for o, a in rows if a.startswith("failed") or a.startswith("refused")]
