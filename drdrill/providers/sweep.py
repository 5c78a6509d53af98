"""The orphan sweep: find tagged resources whose drill ended or expired, and delete them.

Used by `drdrill sweep` and by the scheduled OrphanSweepWorkflow. Providers only ever list
resources carrying drdrill's tags, and re-check the tag before deleting.
"""

from __future__ import annotations

from datetime import datetime
from typing import Iterable

from drdrill.core.models import Orphan
from drdrill.providers.base import Provider


def sweep(
    providers: dict[str, Provider], now: datetime, active_drill_ids: Iterable[str] = (), dry_run: bool = False
) -> list[tuple[Orphan, str]]:
    """[(orphan, action)] for every orphan of every provider; deletes unless `dry_run`."""
    active = set(active_drill_ids)
    out: list[tuple[Orphan, str]] = []
    for family, provider in providers.items():
        for orphan in provider.list_orphans(now, active):
            if dry_run:
                out.append((orphan, "would delete"))
                continue
            try:
                out.append((orphan, provider.delete_orphan(orphan)))
            except Exception as exc:  # noqa: BLE001 - one stuck orphan must not hide the others
                out.append((orphan, f"failed: {exc}"))
    return out


def failed(rows: list[tuple[Orphan, str]]) -> list[tuple[Orphan, str]]:
    """The rows whose deletion failed or was refused (a sweep with any of these exits non-zero)."""
    return [(o, a) for o, a in rows if a.startswith("failed") or a.startswith("refused")]
