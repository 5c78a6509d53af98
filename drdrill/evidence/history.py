"""How long a target's restore took in earlier drills: the prior for its readiness wait; and when a
selecting target's candidates were last restored (`with_restore_times`).

`poll_until` polls sparsely early and densely around the expected finish when it knows how long
the restore should take (drdrill/providers/readiness.py). That expectation comes from the
evidence of earlier runs of the same drill: `<state_dir>/runs/<drill id>/evidence.json`
(drdrill/evidence/chain.py), whose `timeline` holds, per target, a "ready" event with the target's
name, and the run's "restore" stage event, which starts when the restores start.

One earlier run gives one duration, restore start → ready:
- the start is the target's own "restore" event when the timeline has one, else the start of the
  run's "restore" stage (today a target's restore start is only recorded when it fails, so this is
  the usual case; it includes any wait for a restore permit);
- the end is the time the provider reported (`details["ready_at"]` of the run's restored
  resource) when it is plausible, else when the drill noticed (the "ready" event), which is late
  by that run's detection delay.

Only runs where the target became ready count, whatever their verdict (a failed check does not
change how long the restore took); files that cannot be read are skipped, because a prior is
advice and must never stop a drill.
"""

from __future__ import annotations

import json
import logging
import statistics
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Optional

from drdrill.core.redact import redact
from drdrill.core.selection import Discovery
from drdrill.evidence.coverage import last_restored
from drdrill.providers.readiness import expecting_ready_in, parse_ready_at, ready_time

log = logging.getLogger("drdrill.evidence")

RECENT_RUNS = 10  # restores drift (data grows): only the latest runs speak for the next one
MIN_SPREAD = 0.1  # of the typical duration: no two restores take exactly as long
FEW_RUNS_SPREAD = 0.2  # with fewer than 3 runs, the spread says little: at least 20%


@dataclass(frozen=True)
class RestoreHistory:
    """Restore → ready durations of a target in earlier runs, in seconds (oldest first)."""

    typical: float  # the median
    # how far off the median may be: typical × the largest |typical − d| / d over the runs d,
    # at least MIN_SPREAD (FEW_RUNS_SPREAD with fewer than 3 runs) of typical
    spread: float
    durations: tuple[float, ...]

    @property
    def runs(self) -> int:
        return len(self.durations)


def restore_history(
    state_dir: str | Path, drill_name: str, target: str, *, provider: Optional[str] = None, recent: int = RECENT_RUNS
) -> Optional[RestoreHistory]:
    """The typical (median) restore → ready time of `target` in earlier runs of `drill_name`, and
    its spread; None when no earlier run restored it.

    `provider` (e.g. "aws"), when given, keeps only runs whose restored resource came from that
    provider, so a `--simulate` dry run of the same drill does not count. Only the `recent` latest
    runs count.
    """
    found: list[tuple[datetime, float]] = []
    for path in sorted(Path(state_dir).glob("runs/*/evidence.json")):
        doc = _evidence(path)
        if doc is None or doc.get("name") != drill_name:
            continue
        run = restore_duration(doc, target, provider=provider)
        if run is not None:
            found.append(run)
    if not found:
        return None
    found.sort(key=lambda run: run[0])
    durations = tuple(seconds for _, seconds in found[-recent:])
    typical = statistics.median(durations)
    # how far off the median would have been as the prior of each earlier run, as a share of that
    # run: the window poll_until builds from it (expected_window) then contains every one of them
    off = max((abs(typical - d) / d for d in durations if d > 0), default=0.0)
    share = max(off, MIN_SPREAD if len(durations) >= 3 else FEW_RUNS_SPREAD)
    return RestoreHistory(typical=typical, spread=share * typical, durations=durations)


# Every wait_ready reads the evidence of every earlier run in the state directory: with a burst of
# 1,000 drills that was a quadratic pile of JSON parsing. An evidence file is written once (atomically,
# under its drill id), so what a file holds is kept here, for as long as its size, mtime and inode stay.
_SEEN: dict[str, tuple[tuple[int, int, int], Optional[dict]]] = {}
_SEEN_MAX = 20000


def _evidence(path: Path) -> Optional[dict]:
    """The parts of an evidence file restore_duration reads (name, timeline, restored), or None
    when it cannot be read or is not a document."""
    try:
        st = path.stat()
    except OSError:
        return None
    key, seen = (st.st_mtime_ns, st.st_size, st.st_ino), _SEEN.get(str(path))
    if seen is not None and seen[0] == key:
        return seen[1]
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # not remembered: a file being replaced is read again next time
    lite = {k: doc.get(k) for k in ("name", "timeline", "restored")} if isinstance(doc, dict) else None
    if len(_SEEN) >= _SEEN_MAX:
        _SEEN.clear()
    _SEEN[str(path)] = (key, lite)
    return lite


def restore_duration(doc: dict, target: str, *, provider: Optional[str] = None) -> Optional[tuple[datetime, float]]:
    """(when the restore started, seconds until ready) for `target` in one evidence document."""
    timeline = [e for e in doc.get("timeline") or [] if isinstance(e, dict)]
    resource = next((r for r in doc.get("restored") or [] if isinstance(r, dict) and r.get("target") == target), None)
    if provider is not None and (resource is None or resource.get("provider") != provider):
        return None
    ready = next((e for e in timeline if e.get("phase") == "ready" and e.get("target") == target and e.get("outcome") == "PASSED"), None)
    noticed = _time(ready, "ended") or _time(ready, "started")
    own = next((e for e in timeline if e.get("phase") == "restore" and e.get("target") == target), None)
    stage = next((e for e in timeline if e.get("phase") == "restore" and not e.get("target")), None)
    started = _time(own, "started") or _time(stage, "started")
    if noticed is None or started is None:
        return None
    details = resource.get("details") if resource else None
    reported = parse_ready_at(details.get("ready_at")) if isinstance(details, dict) else None
    seconds = (ready_time(reported, noticed=noticed, not_before=started) - started).total_seconds()
    return (started, seconds) if seconds >= 0 else None


def _time(event: Optional[dict], key: str) -> Optional[datetime]:
    return parse_ready_at(event.get(key)) if event else None


@contextmanager
def readiness_prior(
    state_dir: str | Path, drill_name: str, target: str, provider: str, restore_started: Optional[datetime]
) -> Iterator[Optional[dict]]:
    """Within the block, readiness polling expects `target` ready when its earlier restores were
    (drdrill/providers/readiness.py: dense polling around that moment). Yields what it expected,
    for the evidence (`details["readiness_prior"]`), or None: the target's first drill here, or
    no restore start to count from."""
    history = restore_history(state_dir, drill_name, target, provider=provider) if restore_started is not None else None
    if history is None:
        yield None
        return
    elapsed = (datetime.now(timezone.utc) - restore_started).total_seconds()
    with expecting_ready_in(max(0.0, history.typical - elapsed), history.spread):
        yield {"expected_seconds": round(history.typical, 3), "spread_seconds": round(history.spread, 3), "earlier_runs": history.runs}


def with_restore_times(target: str, resources: list, drill_id: str) -> Discovery:
    """The resources a selecting target matches, with when each was last restored (the evidence
    store): what drdrill/core/selection.py chooses from. A restore history that cannot be read is
    no reason to stop the drill: every candidate then counts as never restored, and the selection's
    record says so."""
    last, note = {}, ""
    try:
        last = last_restored([r.key for r in resources])
    except Exception as exc:  # noqa: BLE001 - the evidence store is out of reach: choose without it
        note = f"the restore history could not be read, so every candidate counted as never restored: {redact(str(exc))}"
        log.warning("drill %s: %s", drill_id, note)
    return Discovery(target=target, resources=resources, last_restored=last, history_note=note)
