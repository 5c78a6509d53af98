"""What drdrill created: every resource a drill's activities made, recorded in the evidence store
(`created_resources`) as it is made. The orphan sweep deletes only what is recorded here
(drdrill/providers/sweep.py: `refusal`), never a resource merely because it carries drdrill's tag."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Optional

from drdrill.evidence.store import open_store
from drdrill.providers.base import Resource


def record_created(
    state_dir: Path, drill_id: str, provider: str, resources: Iterable[Resource], dsn: Optional[str] = None, opener: Callable = open_store
) -> int:
    """Record `resources` as created by `drill_id` (idempotent). Raises when the store is out of reach.
    `opener`: how to open the store (a worker's StorePool.open keeps connections between activities)."""
    rows = [(r.kind, r.id, r.scope or "") for r in resources]
    if not rows:
        return 0
    with opener(dsn, state_dir=state_dir) as store:
        return store.record_created(drill_id, provider, rows)


def created_resources(state_dir: Path, provider: str, dsn: Optional[str] = None) -> dict[tuple[str, str], list[str]]:
    """(kind, id) -> the drills that recorded creating it, for `provider`. Raises when the store is out of reach."""
    with open_store(dsn, state_dir=state_dir) as store:
        return store.created(provider)
