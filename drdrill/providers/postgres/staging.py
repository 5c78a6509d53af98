"""A physical restore's backup laid down while the drill's isolation is still being made and proven.

The lay-down (`pgbackrest restore`, barman-cloud-restore, a base backup copied) writes the backup's
files and starts nothing: the backup tool runs in its own sandbox (the repository's owner, `lo` only),
and no restored server exists until `restore` starts one, which the workflow does only once the
isolation is proven. So DrillWorkflow runs the lay-down (the `stage` activity) beside `isolate` and
`verify isolation` (issue 25: it was the longest wait before the restore), and `restore` continues
from it. What the lay-down saw and did is kept here, in the drill's cluster directory (root's, no
other uid writes it), for `restore` to take:

- the point it laid down (a record of another point, or none, and `restore` lays down anew);
- the repository's listing and its archived WAL from before the lay-down (the repository must be
  unchanged by the whole restore: compared after recovery as before);
- how it was laid down, and how long it took (the evidence's `seconds.lay_down`).

The record is taken (removed) when `restore` uses it: a retried restore lays down anew.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import drdrill.localpg.safefs as safefs
from drdrill.providers.postgres.walreplay import ArchivedWal

LIMIT = 256 << 20  # a listing of a large repository (many WAL files): bounded anyway


def record_path(area: Path, target: str) -> Path:
    return area / f"{target}-staged.json"


def discard(area: Path, target: str) -> None:
    safefs.remove_file(record_path(area, target))


def write(area: Path, target: str, point: str, before: dict[str, str], wal: list[ArchivedWal], how: str, seconds: float) -> None:
    """Record a finished lay-down of `point` (written last: no record, no lay-down to continue from)."""
    wal_rows = [[w.name, w.archived.isoformat() if w.archived else None, w.checksum] for w in wal]
    text = json.dumps({"point": point, "before": before, "wal": wal_rows, "how": how, "seconds": seconds})
    safefs.write_file(record_path(area, target), text, mode=0o600)


def take(area: Path, target: str, point: str) -> Optional[dict[str, Any]]:
    """The lay-down of `point` recorded in `area` (removed as it is read), else None."""
    path = record_path(area, target)
    try:
        raw = safefs.read_file(path, limit=LIMIT)
    except OSError:
        raw = None
    discard(area, target)
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        if data.get("point") != point:
            return None
        wal = [ArchivedWal(n, datetime.fromisoformat(at) if at else None, c) for n, at, c in data["wal"]]
        return {"before": dict(data["before"]), "wal": wal, "how": str(data["how"]), "seconds": float(data["seconds"])}
    except (ValueError, KeyError, TypeError):
        return None
