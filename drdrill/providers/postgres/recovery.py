"""Point-in-time recovery, shared by every source of physical backups plus WAL (pgBackRest, Barman,
a base backup with a WAL archive directory; WAL-G would be one more `PhysicalSource`).

A source says which backups and which archived WAL its repository holds, lays a backup down into a
data directory, and fetches one WAL file. This module does the rest, the same way for all:

- find: the recovery rule becomes a moment and the newest backup that finished before it
  (`plan_recovery`): `at` its time, `latest` all archived WAL, `random` a moment in the window;
- restore: the backup is laid down beside the drill's cluster, started on the drill's private
  socket with archiving and replication forced off on the command line, and fed WAL by drdrill
  through a spool directory (`WalFeeder`): the recovered server runs no backup tool, holds no
  credential and cannot reach the repository. Recovery's end is read from the server's log; the
  server is asked where it stopped (`pg_last_xact_replay_timestamp()`) and whether archiving is off;
- the repository is listed before and after: the evidence shows drdrill changed nothing in it.

Findings: PITR_TARGET_BEFORE_BACKUP, PITR_TARGET_UNREACHED, WAL_GAP (naming the segment),
BACKUP_STALE, ARCHIVING_ENABLED, VERSION_MISMATCH, PITR_UNASSERTED (no boundary check).
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import subprocess
import threading
import time
from abc import abstractmethod
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Optional

import psycopg
from psycopg.conninfo import make_conninfo

from drdrill.core.models import DrillContext, Finding, RecoveryPoint, RestoredResource
from drdrill.core.spec import PostgresTarget, format_duration
from drdrill.core.times import parse_time
from drdrill.providers.base import ProviderError, heartbeat
from drdrill.localpg.binaries import Binaries, for_major
import drdrill.localpg.safefs as safefs
from drdrill.localpg.cluster import ClusterError, LocalCluster, chown_to_server, hand_to_server_user
from drdrill.localpg.recovered import prepare_recovered_data_dir, recovery_overrides, server_pid, start_recovery, stop_server
from drdrill.providers.postgres.sources import RecoverySource
from drdrill.providers.postgres.walcheck import WalChecks, WalDamaged
from drdrill.providers.postgres.pagechecks import check_page_checksums

SEGMENT_RE = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$")
WAL_NAME_RE = re.compile(r"^(?:[0-9A-F]{24}|[0-9A-F]{8}\.history)$")


class WalUnreadable(Exception):
    """The archive has the WAL file, but the tool could not read it (its own error text)."""


@dataclass
class Backup:
    """One base backup in a repository. `stopped`: when it finished, i.e. the moment from which on it
    can be recovered (a target before it is PITR_TARGET_BEFORE_BACKUP)."""

    label: str
    started: datetime
    stopped: datetime
    major: int
    size: Optional[int] = None
    details: dict[str, Any] = field(default_factory=dict)

    def as_metadata(self) -> dict[str, Any]:
        out = asdict(self)
        out["started"], out["stopped"] = self.started.isoformat(), self.stopped.isoformat()
        return out

    @classmethod
    def from_metadata(cls, data: dict[str, Any]) -> "Backup":
        return cls(**{**data, "started": parse_time(data["started"]), "stopped": parse_time(data["stopped"])})


@dataclass
class ArchivedWal:
    """One WAL file in the archive (a segment or a timeline history file) and when it was archived."""

    name: str
    archived: Optional[datetime] = None
    checksum: Optional[str] = None  # the SHA1 the repository names it with (pgBackRest)


# ------------------------------------------------------------------------------------ choosing


def plan_recovery(ctx: DrillContext, target: PostgresTarget, backups: list[Backup], wal: list[ArchivedWal]) -> RecoveryPoint:
    """The recovery point a target's rule asks for: a moment and the newest backup finished by then.

    latest: every archived WAL file is replayed (as of an earlier `as_of`: up to that moment);
    at: up to `at`; random: up to a moment drawn within the window (seeded by the drill and
    target, so a retried activity draws the same), between the oldest backup and the archive's end.

    The point's consistent time is the moment asked for (for `latest`, when the newest WAL was
    archived): no data after it can come back. Where recovery really stopped is measured after
    the restore (`recovered_to`), and the boundary check turns it into the RPO.

    Over 80 lines: each rule's case, with the finding its failure gives, reads best side by side.
    """
    rule = target.recovery_point
    now = ctx.as_of or ctx.declared
    name = target.name
    backups = sorted((b for b in backups if b.stopped <= now), key=lambda b: b.stopped)
    if not backups:
        raise ProviderError("RECOVERY_POINT_NOT_FOUND", f"target {name}: the repository holds no finished backup (as of {now.isoformat()})")
    segments = [w for w in wal if SEGMENT_RE.match(w.name) and w.archived is not None]
    newest_wal = max(segments, key=lambda w: w.name) if segments else None
    # Repositories list times in whole seconds (pgBackRest, S3): the newest WAL was archived before
    # the end of that second, and nothing after the moment of the disaster can be in it.
    archive_end = min(max(w.archived for w in segments) + timedelta(seconds=1), now) if segments else None  # type: ignore[type-var,operator]
    findings: list[Finding] = []
    if rule.max_age is not None and now - backups[-1].stopped > rule.max_age:
        findings.append(
            Finding(
                code="BACKUP_STALE",
                target=name,
                message=f"target {name}: the newest backup, {backups[-1].label}, finished {format_duration(now - backups[-1].stopped)} "
                f"before {now.isoformat()}, longer ago than max_age {format_duration(rule.max_age)}: every recovery "
                "replays more WAL than intended (are backups still running?)",
            )
        )

    moment: Optional[datetime]
    if rule.rule == "at":
        moment = rule.at
    elif rule.rule == "random":
        assert rule.within is not None
        low = max(now - rule.within, backups[0].stopped)
        high = min(now, archive_end) if archive_end else backups[-1].stopped
        if low > high:
            raise ProviderError(
                "RECOVERY_POINT_NOT_FOUND",
                f"target {name}: no moment within the last {format_duration(rule.within)} is covered by a backup and archived WAL",
            )
        seed = rule.seed if rule.seed is not None else f"{ctx.drill_id}/{name}"
        moment = low + (high - low) * random.Random(str(seed)).random()
    else:
        moment = now if now < ctx.declared else None  # latest as of an earlier moment: up to that moment

    if moment is None:
        chosen = backups[-1]
        consistent = max(archive_end, chosen.stopped) if archive_end else chosen.stopped
        asked = "every archived WAL file"
    else:
        eligible = [b for b in backups if b.stopped <= moment]
        if not eligible:
            raise ProviderError("PITR_TARGET_BEFORE_BACKUP", before_backups(name, moment, backups))
        chosen = eligible[-1]
        if archive_end is not None and moment > archive_end:
            raise ProviderError(
                "PITR_TARGET_UNREACHED",
                f"target {name}: the archive ends before the recovery target {moment.isoformat()}: its newest WAL, "
                f"{newest_wal.name if newest_wal else '?'}, was archived at {archive_end.isoformat()} "
                "(is archiving stalled, or is the target later than the disaster?)",
            )
        consistent = moment
        asked = moment.isoformat()
    return RecoveryPoint(
        target=name,
        provider="postgres",
        id=chosen.label,
        consistent_time=consistent,
        size_bytes=chosen.size,
        candidates=len(backups),
        findings=findings,
        metadata={
            "kind": target.source.kind,
            "backup": chosen.as_metadata(),
            "recovery_target": moment.isoformat() if moment else None,
            "asked_for": asked,
            "archive_end": archive_end.isoformat() if archive_end else None,
            "archive_newest_wal": newest_wal.name if newest_wal else None,
        },
    )


def before_backups(name: str, moment: datetime, backups: list[Backup]) -> str:
    """Why no backup serves a target before the oldest one finished, naming the real cause: a moment
    inside a backup's own run (recoverable only from its end), or before every backup held (the
    repository has none older: retention pruned it, or none was ever taken)."""
    oldest = backups[0]
    if moment >= oldest.started:
        return (
            f"target {name}: the recovery target {moment.isoformat()} falls inside backup {oldest.label}'s own run "
            f"({oldest.started.isoformat()} to {oldest.stopped.isoformat()}): a backup is consistent only from the moment it "
            "finished, and the repository holds no older one"
        )
    return (
        f"target {name}: the recovery target {moment.isoformat()} is before every backup the repository holds "
        f"(the oldest, {oldest.label}, started {oldest.started.isoformat()}): it holds none from before then "
        "(none was taken, or retention removed it)"
    )


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


# ------------------------------------------------------------------------------------ the template


class PhysicalSource(RecoverySource):
    """A repository of physical backups plus archived WAL, recovered to a point in time."""

    tool_name = "?"  # how the evidence names the tool: "pgBackRest", "Barman", "a WAL archive"

    # -------------------------------------------------------------- what a source supplies

    @abstractmethod
    def backups(self, target: PostgresTarget) -> list[Backup]:
        """Every backup the repository holds (ProviderError with the tool's text when it cannot be read)."""

    @abstractmethod
    def archived_wal(self, target: PostgresTarget) -> list[ArchivedWal]:
        """The WAL files in the archive, with when each was archived where the repository says."""

    @abstractmethod
    def inventory(self, target: PostgresTarget) -> dict[str, str]:
        """Every file of the repository (this stanza / server) -> a fingerprint (size, time or etag)."""

    @abstractmethod
    def lay_down(self, target: PostgresTarget, backup: Backup, data: Path, recovery_target: Optional[datetime], scratch: Path) -> str:
        """Restore `backup`'s files into the empty directory `data`; return how (for the evidence).
        Tablespaces go under `scratch`, never to the paths production uses."""

    @abstractmethod
    def fetch_wal(self, target: PostgresTarget, name: str, dest: Path, data: Path) -> bool:
        """Copy the archived WAL file `name` to `dest`: True, or False when the archive lacks it.
        Raises WalUnreadable (the tool's text) when it has it but cannot read it."""

    # -------------------------------------------------------------- find

    def find(self, ctx: DrillContext, target: PostgresTarget) -> RecoveryPoint:
        backups = self.backups(target)
        if not backups:
            raise ProviderError("RECOVERY_POINT_NOT_FOUND", f"target {target.name}: {self.tool_name} holds no backup of it yet")
        return plan_recovery(ctx, target, backups, self.archived_wal(target))

    # -------------------------------------------------------------- restore

    def restore(self, ctx: DrillContext, target: PostgresTarget, point: RecoveryPoint, cluster: LocalCluster) -> RestoredResource:
        # Over 80 lines on purpose: lay down, recover, prove isolation, record, in the order they happen.
        backup = Backup.from_metadata(point.metadata["backup"])
        recovery_target = parse_time(point.metadata.get("recovery_target"))
        binaries = physical_binaries(backup.major, target.name, backup.label)
        data, spool, scratch = (cluster.path / f"{target.name}-{part}" for part in ("data", "wal", "scratch"))
        log = cluster.path / f"{target.name}.log"
        port = recovery_port(target.name)
        started = time.monotonic()

        before = self.inventory(target)
        wal_before = self.archived_wal(target)
        config_to, fetched = cluster.path / f"{target.name}-backup-config", cluster.path / f"{target.name}-fetch"
        stop_server(data, binaries)  # a retried attempt starts over
        os.chmod(cluster.path, 0o711)  # a sandboxed tool enters its own directories in it, lists nothing
        for d in (data, spool, scratch, config_to, fetched):
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(mode=0o700)
        safefs.remove_file(log)
        heartbeat({"target": target.name, "step": f"{self.tool_name}: restoring backup {backup.label}"})
        how = self.lay_down(target, backup, data, recovery_target, scratch)
        laid_down = time.monotonic()
        config = self._prepare(target, backup, data, cluster.path, config_to, recovery_target)
        hand_to_server_user(scratch)
        check_page_checksums(target, data, binaries)  # before it starts (pagechecks.py; read back after it serves)
        chown_to_server(spool)
        safefs.write_file(spool / "restore_command.sh", RESTORE_SCRIPT.format(spool=spool), mode=0o755)
        control = control_data(binaries, data)
        checks = WalChecks(wal_before, control.get("segment_size", 16 << 20), backup.major, control.get("sysid"))
        feeder = WalFeeder(lambda name, dest: self._fetch_checked(target, name, dest, data, checks), spool, checks.segment_size, fetched)
        feeder.start()
        try:
            settings = recovery_overrides(data, cluster.sock, port, backup.major, f"{spool / 'restore_command.sh'} %f %p")
            try:
                start_recovery(data, log, binaries, settings)
            except ClusterError as exc:
                raise ProviderError("RECOVERY_FAILED", f"target {target.name}: {exc}") from exc
            outcome = wait_for_recovery(data, log, feeder, target, timeout=target.restore.timeout.total_seconds())
        except BaseException:
            stop_server(data, binaries)
            raise
        finally:
            feeder.stop()
        if not outcome.ready:
            stop_server(data, binaries)
            raise recovery_failure(target, outcome, feeder, wal_before, recovery_target, log)

        dbname = target.source.database or "postgres"
        dsn = make_conninfo(host=str(cluster.sock), port=port, user=self.settings(target).user, dbname=dbname)
        try:
            reached, isolation = ask_recovered_server(dsn, target.name)
        except ProviderError:
            stop_server(data, binaries)
            raise
        reached = reached or outcome.last_transaction
        findings: list[Finding] = []
        findings += config_findings(target.name, config)
        findings += replay_findings(target.name, feeder, wal_before, outcome)
        if not target.source.boundary_checks:
            findings.append(
                Finding(
                    code="PITR_UNASSERTED",
                    target=target.name,
                    could_not_verify=True,
                    message=f"target {target.name}: recovered to a point in time, but no boundary check proves the moment "
                    "(add a validation of type boundary): a server that came up proves nothing about the moment it reached",
                )
            )
        untouched = compare_inventories(before, self.inventory(target))
        if untouched["changed"]:
            findings.append(
                Finding(
                    code="REPOSITORY_CHANGED",
                    severity="warning",
                    target=target.name,
                    message=f"target {target.name}: files of the repository changed or vanished during the drill (not by drdrill, "
                    f"which only reads it; by production's expire?): {', '.join(untouched['changed'][:5])}",
                )
            )
        recovered_to = reached or backup.stopped
        wanted = recovery_target.isoformat() if recovery_target else "the end of the archive"
        return RestoredResource(
            target=target.name,
            provider="postgres",
            id=str(data),
            description=(
                f"{self.tool_name} backup {backup.label} recovered to {recovered_to.isoformat()} (asked for {wanted}); "
                f"{outcome.segments} WAL segments replayed; on the private socket (port {port})"
            ),
            endpoint={"dsn": dsn, "database": dbname, "socket_dir": str(cluster.sock)},
            findings=findings,
            details={
                "point": point.id,
                "kind": target.source.kind,
                "restored_with": how,
                "recovery_target": recovery_target.isoformat() if recovery_target else None,
                "recovered_to": recovered_to.isoformat(),
                "recovered_to_source": "pg_last_xact_replay_timestamp()" if reached else "the backup's end (no transaction replayed)",
                "recovery_stopped": outcome.stopping or f"end of the archived WAL (redo done at {outcome.redo_done_at})",
                "last_completed_transaction_logged": outcome.last_transaction.isoformat() if outcome.last_transaction else None,
                "wal_segments_replayed": outcome.segments,
                "isolation": isolation,
                "backup_configuration": config,
                "wal_checked": checks.summary(feeder),
                "repository": untouched["summary"],
                "server": {"major": binaries.major, "bindir": binaries.bindir, "port": port, "data": str(data), "log": str(log)},
                "seconds": {"lay_down": round(laid_down - started, 3), "total": round(time.monotonic() - started, 3)},
            },
        )

    def _prepare(
        self, target: PostgresTarget, backup: Backup, data: Path, area: Path, config_to: Path, recovery_target: Optional[datetime]
    ) -> dict[str, Any]:
        """The laid-down backup made drdrill's: links refused, its configuration set aside, drdrill's
        recovery settings, owned by the server user (cluster.prepare_recovered_data_dir)."""
        try:
            return prepare_recovered_data_dir(data, area, config_to, recovery_settings(recovery_target))
        except safefs.LinkRefused as exc:
            raise ProviderError(
                "BACKUP_SYMLINK_REFUSED",
                f"target {target.name}: backup {backup.label} holds links drdrill will not follow: {', '.join(exc.entries[:5])}. "
                "A recovered data directory may keep only pg_wal and pg_tblspc/<oid> links, pointing inside the drill's own "
                "restore area; anything else in a backup is refused, before anything is written through it",
            ) from exc
        except OSError as exc:  # ELOOP: a link where drdrill writes, swapped in after the check
            raise ProviderError("BACKUP_SYMLINK_REFUSED", f"target {target.name}: backup {backup.label}: {exc}") from exc

    def _fetch_checked(self, target: PostgresTarget, name: str, dest: Path, data: Path, checks: WalChecks) -> bool:
        """fetch_wal, then the checks of the fetched file (WalDamaged when it is not what the archive says)."""
        found = self.fetch_wal(target, name, dest, data)
        if found:
            checks.check(name, dest)
        return found

    def settings(self, target: PostgresTarget) -> Any:
        return getattr(target.source, target.source.kind)


def physical_binaries(major: int, target: str, label: str) -> Binaries:
    """The install of exactly the backup's major: a physical copy replays only there."""
    if major < 12:
        raise ProviderError(
            "VERSION_MISMATCH", f"target {target}: backup {label} is PostgreSQL {major}; point-in-time drills need PostgreSQL 12 or newer"
        )
    chosen, notes = for_major(major, target)
    if notes:  # only a newer major is installed: fine for pg_restore, never for WAL replay
        raise ProviderError(
            "VERSION_MISMATCH",
            f"target {target}: backup {label} is PostgreSQL {major} and a physical copy replays only with the same major; "
            f"this worker has {chosen} but no PostgreSQL {major}: install it (or list it in DRDRILL_PG_BINDIRS)",
        )
    return chosen


def recovery_port(target: str) -> int:
    """The port number of a target's recovered server (its socket file's name; nothing listens on TCP)."""
    return 5433 + int(hashlib.sha256(target.encode()).hexdigest(), 16) % 1000


def control_data(binaries: Binaries, data: Path) -> dict[str, int]:
    """The WAL segment size and system identifier of a laid-down backup (pg_controldata); what it
    cannot read is left out (a segment size of 16 MiB is then assumed)."""
    try:
        out = subprocess.run([binaries.tool("pg_controldata"), str(data)], capture_output=True, text=True, timeout=30).stdout
    except (ProviderError, OSError, subprocess.SubprocessError):
        return {}
    found = {}
    for key, pattern in (("segment_size", r"Bytes per WAL segment:\s+(\d+)"), ("sysid", r"Database system identifier:\s+(\d+)")):
        m = re.search(pattern, out)
        if m:
            found[key] = int(m.group(1))
    return found


def segment_size(binaries: Binaries, data: Path) -> int:
    """The WAL segment size of a laid-down backup (pg_controldata), 16 MiB when it cannot be read."""
    return control_data(binaries, data).get("segment_size", 16 << 20)


def recovery_settings(recovery_target: Optional[datetime]) -> str:
    """drdrill's postgresql.auto.conf of a recovered backup: promote at the end, and the target."""
    lines = ["# drdrill: point-in-time recovery", "recovery_target_action = 'promote'"]
    if recovery_target is not None:
        lines.append(f"recovery_target_time = '{recovery_target.astimezone(timezone.utc).isoformat()}'")
    return "\n".join(lines) + "\n"


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


def config_findings(name: str, config: dict[str, Any]) -> list[Finding]:
    """BACKUP_CONFIG_SET_ASIDE (a warning) when the backup's configuration held commands, libraries
    or includes: they did not run; the evidence names them and the set-aside files' sha256."""
    dangerous = config.get("dangerous") or {}
    if not dangerous:
        return []
    files = ", ".join(f"{n} (sha256 {f['sha256'][:16]}…)" for n, f in config.get("files", {}).items())
    shown = ", ".join(f"{k} = {v!r}" for k, v in list(dangerous.items())[:6])
    return [
        Finding(
            code="BACKUP_CONFIG_SET_ASIDE",
            severity="warning",
            target=name,
            message=f"target {name}: the backup's configuration ({files}) set {shown}; drdrill set it aside and started the "
            "recovered server with its own settings, so none of it ran",
        )
    ]


def ask_recovered_server(dsn: str, target: str) -> tuple[Optional[datetime], list[dict[str, str]]]:
    """Where recovery stopped, and the isolation proof of the recovered server: archiving and
    replication off, no replication slot, no TCP. Archiving on is ARCHIVING_ENABLED: the copy could
    push WAL into production's archive, so the drill stops before anything else runs."""
    try:
        with psycopg.connect(dsn, connect_timeout=10, autocommit=True) as conn:
            reached = conn.execute("SELECT pg_last_xact_replay_timestamp()").fetchone()[0]
            in_recovery = conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
            settings = dict(
                conn.execute(
                    "SELECT name, setting FROM pg_settings WHERE name IN "
                    "('archive_mode','archive_command','max_wal_senders','primary_conninfo','listen_addresses','restore_command')"
                ).fetchall()
            )
            slots = conn.execute("SELECT count(*) FROM pg_replication_slots").fetchone()[0]
    except psycopg.Error as exc:
        said = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        if "role" in said and "does not exist" in said:
            raise ProviderError(
                "SOURCE_USER_MISSING",
                f"target {target}: the recovered cluster has no such role ({said}): set the source's user to a superuser of the backed-up cluster",
            ) from exc
        raise ProviderError("RECOVERY_FAILED", f"target {target}: the recovered server does not answer: {said}") from exc
    if settings.get("archive_mode") != "off":
        raise ProviderError(
            "ARCHIVING_ENABLED",
            f"target {target}: the recovered server has archive_mode = {settings.get('archive_mode')!r} "
            f"(archive_command {settings.get('archive_command')!r}): it could write into production's WAL archive; "
            "the drill stopped it before anything else ran",
        )
    checks = [
        ("archiving off", settings.get("archive_mode") == "off", f"archive_mode = {settings.get('archive_mode')}"),
        (
            "no replication",
            settings.get("max_wal_senders") == "0" and not settings.get("primary_conninfo"),
            f"max_wal_senders = {settings.get('max_wal_senders')}, primary_conninfo empty",
        ),
        ("no replication slot", slots == 0, f"{slots} replication slots"),
        ("no TCP listener", settings.get("listen_addresses") == "", f"listen_addresses = '{settings.get('listen_addresses')}'"),
        ("recovery ended, promoted", not in_recovery, f"pg_is_in_recovery() = {in_recovery}"),
    ]
    failed = [name for name, ok, _ in checks if not ok]
    if failed:
        raise ProviderError("ISOLATION_BROKEN", f"target {target}: the recovered server failed: {', '.join(failed)}")
    return reached, [{"name": n, "outcome": "PASSED", "detail": d} for n, _, d in checks]


def compare_inventories(before: dict[str, str], after: dict[str, str]) -> dict[str, Any]:
    """Every file the repository held before the drill is there after it, unchanged. Files added
    meanwhile are production archiving on; they are counted, not blamed."""
    changed = sorted(n for n, fp in before.items() if after.get(n) != fp)
    digest = hashlib.sha256("\n".join(f"{n}\t{before[n]}" for n in sorted(before)).encode()).hexdigest()
    return {
        "changed": changed,
        "summary": {
            "files": len(before),
            "listing_sha256": digest,
            "unchanged": not changed,
            "added_meanwhile": len(set(after) - set(before)),
        },
    }


# ------------------------------------------------------------------------------------ running tools


def run_tool(
    argv: list[str], env: dict[str, str], target: str, step: str, timeout: Optional[float] = None, spawn: Optional[Callable[..., Any]] = None
) -> subprocess.CompletedProcess:
    """Run a backup tool to its end, heartbeating meanwhile; a cancelled drill stops it. `spawn`
    (a sandbox's popen, which sets the environment itself) starts it instead of subprocess.Popen."""
    if spawn is not None:
        proc = spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    else:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    out: dict[str, str] = {}
    readers = [
        threading.Thread(target=lambda: out.__setitem__("stdout", proc.stdout.read()), daemon=True),  # type: ignore[union-attr]
        threading.Thread(target=lambda: out.__setitem__("stderr", proc.stderr.read()), daemon=True),  # type: ignore[union-attr]
    ]
    for r in readers:
        r.start()
    started = time.monotonic()
    try:
        while proc.poll() is None:
            heartbeat({"target": target, "step": step, "seconds": round(time.monotonic() - started, 1)})
            if timeout is not None and time.monotonic() - started > timeout:
                raise ProviderError("TOOL_TIMEOUT", f"target {target}: {step} did not finish within {format_duration(timeout)}")
            try:
                proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for r in readers:
        r.join()
    return subprocess.CompletedProcess(argv, proc.returncode, out.get("stdout", ""), out.get("stderr", ""))


def named_env(names: list[str], target: str, prefixes: tuple[str, ...]) -> dict[str, str]:
    """The worker's environment for a backup tool: variables with `prefixes` only as the drill names
    them (by name; a named one that is unset is bad input), everything else as it is."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    unset = [n for n in names if not os.environ.get(n)]
    if unset:
        raise ProviderError(
            "SOURCE_ENV_MISSING",
            f"target {target}: the drill names {', '.join(unset)}, which this worker does not have set: set "
            f"{'it' if len(unset) == 1 else 'them'} in the worker's environment",
        )
    env.update({n: os.environ[n] for n in names})
    return env


def last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, timezone.utc)


