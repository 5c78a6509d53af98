"""WAL replay of a point-in-time recovery: drdrill feeds the archived WAL to the recovering server
and reads from its log how recovery ended.

- `WalFeeder` fetches each file the server asks for through its spool directory (the server runs
  no backup tool, holds no credential and cannot reach the repository), checking each (walcheck);
- `RecoveryLog` reads recovery's end, the last transaction and the segments restored from the log;
- `wait_for_recovery` waits for the end, `recovery_failure` says why a server stopped instead
  (WAL_GAP naming the segment, WAL_DAMAGED, WAL_UNREADABLE, REPLAY_ENDED_EARLY,
  PITR_TARGET_UNREACHED, PITR_TARGET_BEFORE_BACKUP), `replay_findings` what a finished replay shows.

recovery.py runs the whole recovery; every physical source lists its archive as `ArchivedWal`s.
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Optional

from drdrill.core.models import Finding
from drdrill.core.durations import format_duration
from drdrill.providers.postgres.schema import PostgresTarget
from drdrill.core.times import parse_time
from drdrill.providers.base import ProviderError, heartbeat
from drdrill.localpg.recovered import server_pid
import drdrill.localpg.safefs as safefs
from drdrill.providers.postgres.walcheck import WalDamaged

SEGMENT_RE = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$")
WAL_NAME_RE = re.compile(r"^(?:[0-9A-F]{24}|[0-9A-F]{8}\.history)$")


class WalUnreadable(Exception):
    """The archive has the WAL file, but the tool could not read it (its own error text)."""


@dataclass
class ArchivedWal:
    """One WAL file in the archive (a segment or a timeline history file) and when it was archived."""

    name: str
    archived: Optional[datetime] = None
    checksum: Optional[str] = None  # the SHA1 the repository names it with (pgBackRest)


# ------------------------------------------------------------------------------------ WAL feeding

RESTORE_SCRIPT = """#!/bin/sh
# drdrill: the recovered server's restore_command. WAL comes only from this spool, which drdrill
# fills from the backup repository: the server never reaches the repository itself.
spool='{spool}'
printf '%s\\n' "$1" > "$spool/.wanted.$$" && mv -f "$spool/.wanted.$$" "$spool/wanted"
while :; do
  if [ -f "$spool/$1" ]; then exec cp "$spool/$1" "$2"; fi
  if [ -f "$spool/$1.missing" ]; then exit 1; fi
  sleep 0.02
done
"""


def next_segment(name: str, step: int, segments_per_id: int) -> str:
    m = SEGMENT_RE.match(name)
    assert m
    tli, log, seg = (int(g, 16) for g in m.groups())
    n = log * segments_per_id + seg + step
    return f"{tli:08X}{n // segments_per_id:08X}{n % segments_per_id:08X}"


class WalFeeder(threading.Thread):
    """Fills the spool with the WAL files the recovering server asks for, reading a few segments
    ahead, and drops the ones it has replayed. `missing` lists the segments the archive lacked,
    `errors` those the tool could not read (with its text), `damaged` those that failed the checks
    (walcheck: handed to the server as missing, so replay never reads them), `requested` the
    segments the server asked for and got.

    Files are fetched into `fetched` (a root-owned directory the server user cannot enter) and
    renamed into the spool only when complete and checked. The server's wish (`wanted`, written by
    the restore_command as the server user) is read without following a link and must be a WAL
    file name: it is never a path."""

    READ_AHEAD = 4
    KEEP_BEHIND = 4

    def __init__(self, fetch: Callable[[str, Path], bool], spool: Path, segment_size: int, fetched: Optional[Path] = None):
        super().__init__(daemon=True, name=f"wal-feeder-{spool.name}")
        self.fetch = fetch
        self.spool = spool
        self.fetch_dir = fetched or spool
        self.damaged: dict[str, str] = {}
        self.requested: set[str] = set()
        self.per_id = 0x100000000 // segment_size
        self.known: dict[str, bool] = {}
        self.missing: list[str] = []
        self.errors: dict[str, str] = {}
        self.wanted: Optional[str] = None
        self.fetched = 0
        self.failure: Optional[BaseException] = None
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=30)

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                self._read_wanted()
                todo = self._next()
                if todo is None:
                    self._halt.wait(0.01)
                    continue
                self._get(todo)
        except BaseException as exc:  # noqa: BLE001 - reported to the restore, which stops the server
            self.failure = exc

    def _read_wanted(self) -> None:
        try:
            wanted = (safefs.read_file(self.spool / "wanted", limit=64) or b"").decode(errors="replace").strip()
        except OSError:
            return
        if not WAL_NAME_RE.match(wanted):
            return  # not a WAL file name (a path, a link's target …): never fetched
        if self.known.get(wanted):
            self.requested.add(wanted)
        if wanted and wanted != self.wanted:
            self.wanted = wanted
            self._prune()

    def _next(self) -> Optional[str]:
        wanted = self.wanted
        if wanted is None:
            return None
        if wanted not in self.known:
            return wanted
        if not SEGMENT_RE.match(wanted) or not self.known[wanted]:
            return None
        for step in range(1, self.READ_AHEAD + 1):
            ahead = next_segment(wanted, step, self.per_id)
            if ahead not in self.known:
                return ahead
            if not self.known[ahead]:
                return None  # the archive ends (or has a gap) there: nothing beyond to read ahead
        return None

    def _get(self, name: str) -> None:
        tmp = self.fetch_dir / f".tmp-{name}"
        safefs.remove_file(tmp)
        try:
            found = self.fetch(name, tmp)
        except WalUnreadable as exc:
            self.errors[name] = str(exc)
            found = False
        except WalDamaged as exc:
            self.damaged[name] = str(exc)
            found = False
        if found:
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.spool / name)
            self.fetched += 1
            if name == self.wanted:
                self.requested.add(name)
        else:
            safefs.remove_file(tmp)
            safefs.write_file(self.spool / f"{name}.missing", "", mode=0o644)
            if SEGMENT_RE.match(name):
                self.missing.append(name)
        self.known[name] = found

    def replayed_to(self) -> Optional[str]:
        """The newest segment the server asked for and got: where replay ended."""
        got = [n for n in self.requested if SEGMENT_RE.match(n)]
        return max(got) if got else None

    def _prune(self) -> None:
        """Drop segments well behind the one replayed now (fetched again should they be asked for)."""
        if self.wanted is None or not SEGMENT_RE.match(self.wanted):
            return
        oldest_kept = next_segment(self.wanted, -self.KEEP_BEHIND, self.per_id) if int(self.wanted[8:], 16) > self.KEEP_BEHIND else None
        if oldest_kept is None:
            return
        for name in [n for n, ok in self.known.items() if ok and SEGMENT_RE.match(n) and n[:8] == self.wanted[:8] and n < oldest_kept]:
            (self.spool / name).unlink(missing_ok=True)
            del self.known[name]


# ------------------------------------------------------------------------------------ the server's log

_STOPPING = re.compile(r"LOG:\s+(recovery stopping (?:before|after) .*)$")
_LAST_TX = re.compile(r"LOG:\s+last completed transaction was at log time (.+)$")
_REDO_DONE = re.compile(r"LOG:\s+redo done at (\S+)")
_READY = "database system is ready to accept connections"
_FATAL = re.compile(r"(?:FATAL|PANIC):\s+(.*)$")
_RESTORED = re.compile(r"LOG:\s+restored log file \"([0-9A-F]{24})\" from archive")


@dataclass
class RecoveryLog:
    """What the recovered server's log says about its recovery."""

    ready: bool = False
    fatal: Optional[str] = None
    stopping: Optional[str] = None
    last_transaction: Optional[datetime] = None
    redo_done_at: Optional[str] = None
    segments: int = 0
    last_segment: Optional[str] = None

    @classmethod
    def read(cls, text: str) -> "RecoveryLog":
        out = cls()
        for line in text.splitlines():
            if _READY in line:
                out.ready = True
            elif m := _FATAL.search(line):
                out.fatal = out.fatal or m.group(1).strip()
            elif m := _STOPPING.search(line):
                out.stopping = m.group(1).strip()
            elif m := _LAST_TX.search(line):
                try:
                    out.last_transaction = parse_time(m.group(1).strip())
                except ValueError:
                    pass
            elif m := _REDO_DONE.search(line):
                out.redo_done_at = m.group(1)
            elif m := _RESTORED.search(line):
                out.segments += 1
                out.last_segment = max(out.last_segment or "", m.group(1))
        return out


def wait_for_recovery(data: Path, log: Path, feeder: WalFeeder, target: PostgresTarget, timeout: float) -> RecoveryLog:
    """Wait until the server has ended recovery (ready for connections) or stopped; heartbeat meanwhile.

    Polls the log and the postmaster a few times a second (both cheap), so the end of recovery is
    noticed within a fraction of a second."""
    started = time.monotonic()
    seen_running = False
    while True:
        outcome = RecoveryLog.read(log.read_text(errors="replace") if log.exists() else "")
        if outcome.ready:
            return outcome
        running = server_pid(data) is not None
        seen_running = seen_running or running
        if not running and (outcome.fatal or seen_running or time.monotonic() - started > 10):
            return outcome
        if feeder.failure is not None:
            raise ProviderError("RECOVERY_FAILED", f"target {target.name}: drdrill could not feed WAL to the server: {feeder.failure}")
        if time.monotonic() - started > timeout:
            raise ProviderError(
                "RECOVERY_TIMEOUT",
                f"target {target.name}: recovery had not ended after {format_duration(timeout)} "
                f"(replaying {feeder.wanted or 'nothing yet'}; raise restore.timeout)",
            )
        heartbeat({"target": target.name, "step": "replaying WAL", "segment": feeder.wanted, "fetched": feeder.fetched})
        time.sleep(0.1)


def recovery_failure(
    target: PostgresTarget, outcome: RecoveryLog, feeder: WalFeeder, wal: list[ArchivedWal], recovery_target: Optional[datetime], log: Path
) -> ProviderError:
    """Why the server stopped instead of ending recovery, as one finding with PostgreSQL's words."""
    name = target.name
    said = outcome.fatal or "the server stopped without a message"
    gap = wal_gap(feeder, wal, outcome)
    unreadable = next(iter(feeder.errors.items()), None)
    damaged = wal_damaged(feeder, wal)
    early = replay_ended_early(feeder, wal)
    if damaged:
        return ProviderError("WAL_DAMAGED", f"target {name}: {damaged}; the recovery target was not reached; PostgreSQL: {said}")
    if unreadable:
        return ProviderError("WAL_UNREADABLE", f"target {name}: archived WAL {unreadable[0]} could not be read: {unreadable[1]}")
    if gap:
        return ProviderError("WAL_GAP", f"target {name}: {gap}; PostgreSQL: {said}")
    if early and "before configured recovery target was reached" in said:
        return ProviderError(
            "REPLAY_ENDED_EARLY", f"target {name}: {early}; the archive is damaged, it does not end there; PostgreSQL: {said}"
        )
    if "before configured recovery target was reached" in said:
        return ProviderError(
            "PITR_TARGET_UNREACHED",
            f"target {name}: the archive ends before the recovery target {recovery_target.isoformat() if recovery_target else ''}: "
            f"WAL was replayed to {outcome.last_transaction.isoformat() if outcome.last_transaction else 'the backup'}"
            f"{' (' + feeder.missing[-1] + ' is not archived)' if feeder.missing else ''}; PostgreSQL: {said}",
        )
    if "before consistent recovery point" in said:
        return ProviderError(
            "PITR_TARGET_BEFORE_BACKUP",
            f"target {name}: the recovery target {recovery_target.isoformat() if recovery_target else ''} is before the backup "
            f"was consistent; PostgreSQL: {said}",
        )
    tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:]) if log.exists() else ""
    return ProviderError("RECOVERY_FAILED", f"target {name}: the recovered server stopped: {said} ({tail})")


def wal_gap(feeder: WalFeeder, wal: list[ArchivedWal], outcome: RecoveryLog) -> Optional[str]:
    """A segment recovery asked for and the archive lacks, while it holds later ones: a hole that
    silently ends recovery early. None when replay simply reached the archive's end."""
    if not feeder.missing:
        return None
    archived = {w.name for w in wal if SEGMENT_RE.match(w.name)}
    for missing in feeder.missing:
        if missing in archived:
            continue
        later = sorted(n for n in archived if n[:8] == missing[:8] and n > missing)
        if later:
            return (
                f"WAL segment {missing} is missing from the archive, which holds later segments ({later[0]} … {later[-1]}): "
                "recovery stops at the hole and everything after it is lost"
            )
    return None


def wal_damaged(feeder: WalFeeder, wal: list[ArchivedWal]) -> Optional[str]:
    """The first fetched segment that failed its checks, with the archive's later segments."""
    if not feeder.damaged:
        return None
    name, why = sorted(feeder.damaged.items())[0]
    later = sorted(w.name for w in wal if SEGMENT_RE.match(w.name) and w.name[:8] == name[:8] and w.name > name)
    after = f"; the archive holds {len(later)} later segments ({later[0]} … {later[-1]}) that were not replayed" if later else ""
    return f"archived WAL segment {name} is damaged: {why}{after}"


def replay_ended_early(feeder: WalFeeder, wal: list[ArchivedWal]) -> Optional[str]:
    """Replay that ended before the newest segment archived on its timeline (REPLAY_ENDED_EARLY):
    the server took a damaged record for the end of the WAL. None when it reached the newest."""
    end = feeder.replayed_to()
    if end is None:
        return None
    newest = max((w.name for w in wal if SEGMENT_RE.match(w.name) and w.name[:8] == end[:8]), default=None)
    if newest is None or newest <= end:
        return None
    return (
        f"replay ended in WAL segment {end}, but the archive holds segments up to {newest} on the same timeline: "
        "what they hold was not recovered (a damaged record ends replay as if the WAL ended there)"
    )


def replay_findings(name: str, feeder: WalFeeder, wal: list[ArchivedWal], outcome: RecoveryLog) -> list[Finding]:
    """What a recovery that ended and promoted still got wrong: a damaged segment (WAL_DAMAGED), a
    hole (WAL_GAP), or replay that ended before the archive's newest segment (REPLAY_ENDED_EARLY).
    One finding, the most specific; none when replay stopped at the target it was asked for."""
    damaged = wal_damaged(feeder, wal)
    if damaged:
        return [Finding(code="WAL_DAMAGED", target=name, message=f"target {name}: {damaged}")]
    gap = wal_gap(feeder, wal, outcome)
    if gap:
        return [Finding(code="WAL_GAP", target=name, message=f"target {name}: {gap}")]
    early = None if outcome.stopping else replay_ended_early(feeder, wal)
    if early:
        return [Finding(code="REPLAY_ENDED_EARLY", target=name, message=f"target {name}: {early}")]
    return []
