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
WAL feeding, the server's log and what replay found: walreplay.py.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import subprocess
import time
from abc import abstractmethod
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Optional

import psycopg
from psycopg.conninfo import make_conninfo

from drdrill.core.models import DrillContext, Finding, RecoveryPoint, RestoredResource
from drdrill.core.durations import format_duration
from drdrill.providers.postgres.schema import PostgresTarget
from drdrill.core.times import parse_time
from drdrill.providers.base import ProviderError, heartbeat
from drdrill.localpg.binaries import Binaries, for_major
import drdrill.localpg.safefs as safefs
from drdrill.localpg.cluster import ClusterError, LocalCluster, chown_to_server, hand_to_server_user
from drdrill.localpg.recovered import prepare_recovered_data_dir, recovery_overrides, start_recovery, stop_server
from drdrill.providers.postgres.sources import RecoverySource
from drdrill.providers.postgres.walreplay import (
    RESTORE_SCRIPT,
    RecoveryLog,
    SEGMENT_RE,
    ArchivedWal,
    WalFeeder,
    recovery_failure,
    replay_findings,
    wait_for_recovery,
)
from drdrill.providers.postgres.walcheck import WalChecks
from drdrill.providers.postgres.pagechecks import check_page_checksums
import drdrill.providers.postgres.staging as staging

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


# ------------------------------------------------------------------------------------ choosing


def plan_recovery(ctx: DrillContext, target: PostgresTarget, backups: list[Backup], wal: list[ArchivedWal]) -> RecoveryPoint:
    """The recovery point a target's rule asks for: a moment and the newest backup finished by then.

    latest: every archived WAL file is replayed (as of an earlier `as_of`: up to that moment);
    at: up to `at`; random: up to a moment drawn within the window (seeded by the drill and
    target, so a retried activity draws the same), between the oldest backup and the archive's end.

    The point's consistent time is the moment asked for (for `latest`, when the newest WAL was
    archived): no data after it can come back. Where recovery really stopped is measured after
    the restore (`recovered_to`), and the boundary check turns it into the RPO.
    """
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
    findings = stale_backup(target, backups[-1], now)
    moment = rule_moment(ctx, target, backups, now, archive_end)
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


def stale_backup(target: PostgresTarget, newest: Backup, now: datetime) -> list[Finding]:
    """BACKUP_STALE when the newest backup finished longer ago than the rule's `max_age`."""
    max_age = target.recovery_point.max_age
    if max_age is None or now - newest.stopped <= max_age:
        return []
    return [
        Finding(
            code="BACKUP_STALE",
            target=target.name,
            message=f"target {target.name}: the newest backup, {newest.label}, finished {format_duration(now - newest.stopped)} "
            f"before {now.isoformat()}, longer ago than max_age {format_duration(max_age)}: every recovery "
            "replays more WAL than intended (are backups still running?)",
        )
    ]


def rule_moment(
    ctx: DrillContext, target: PostgresTarget, backups: list[Backup], now: datetime, archive_end: Optional[datetime]
) -> Optional[datetime]:
    """The moment the target's rule asks to recover to; None for `latest` (every archived WAL file).

    `random` draws within the window covered by a backup and archived WAL, seeded by the drill and
    target (a retried activity draws the same)."""
    rule = target.recovery_point
    if rule.rule == "at":
        return rule.at
    if rule.rule == "random":
        assert rule.within is not None
        low = max(now - rule.within, backups[0].stopped)
        high = min(now, archive_end) if archive_end else backups[-1].stopped
        if low > high:
            raise ProviderError(
                "RECOVERY_POINT_NOT_FOUND",
                f"target {target.name}: no moment within the last {format_duration(rule.within)} is covered by a backup and archived WAL",
            )
        seed = rule.seed if rule.seed is not None else f"{ctx.drill_id}/{target.name}"
        return low + (high - low) * random.Random(str(seed)).random()
    return now if now < ctx.declared else None  # latest as of an earlier moment: up to that moment


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
        """Lay the backup down beside the drill's cluster, recover it on the private socket with drdrill
        feeding the WAL, ask the server where it stopped, and record it all (the repository untouched)."""
        # long: the recovery's steps in the order they happen, then the one record of them (details)
        # that a reader checks against those steps; each step is a function of its own.
        backup = Backup.from_metadata(point.metadata["backup"])
        recovery_target = parse_time(point.metadata.get("recovery_target"))
        binaries = physical_binaries(backup.major, target.name, backup.label)
        data, spool, scratch = (cluster.path / f"{target.name}-{part}" for part in ("data", "wal", "scratch"))
        log = cluster.path / f"{target.name}.log"
        port = recovery_port(target.name)
        started = time.monotonic()
        staged = staging.take(cluster.path, target.name, point.id)  # laid down beside the isolation (stage)
        if staged is None:
            staged = self._laid_down(target, point, cluster)
        before, wal_before, how = staged["before"], staged["wal"], staged["how"]
        laid_down = time.monotonic()
        config_to, fetched = cluster.path / f"{target.name}-backup-config", cluster.path / f"{target.name}-fetch"
        config = self._prepare(target, backup, data, cluster.path, config_to, recovery_target)
        hand_to_server_user(scratch)
        check_page_checksums(target, data, binaries)  # before it starts (pagechecks.py; read back after it serves)
        chown_to_server(spool)
        safefs.write_file(spool / "restore_command.sh", RESTORE_SCRIPT.format(spool=spool), mode=0o755)
        control = control_data(binaries, data)
        checks = WalChecks(wal_before, control.get("segment_size", 16 << 20), backup.major, control.get("sysid"))
        feeder = WalFeeder(lambda name, dest: self._fetch_checked(target, name, dest, data, checks), spool, checks.segment_size, fetched)
        settings = recovery_overrides(data, cluster.sock, port, backup.major, f"{spool / 'restore_command.sh'} %f %p")
        outcome = recover(target, data, log, binaries, settings, feeder)
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
        untouched = compare_inventories(before, self.inventory(target))
        findings = [
            *config_findings(target.name, config),
            *replay_findings(target.name, feeder, wal_before, outcome),
            *unasserted(target),
            *repository_changed(target.name, untouched),
        ]
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
                "seconds": _seconds(staged, laid_down - started, time.monotonic() - started),
            },
        )

    def stage(self, ctx: DrillContext, target: PostgresTarget, point: RecoveryPoint, cluster: LocalCluster) -> str:
        """Lay `point`'s backup down in the drill's cluster directory and start nothing (staging.py):
        run beside the isolation's creation and proof; `restore` continues from it."""
        staging.discard(cluster.path, target.name)
        laid = self._laid_down(target, point, cluster)
        staging.write(cluster.path, target.name, point.id, laid["before"], laid["wal"], laid["how"], laid["seconds"])
        return f"{laid['how']}, in {laid['seconds']:.1f} s; no server started"

    def _laid_down(self, target: PostgresTarget, point: RecoveryPoint, cluster: LocalCluster) -> dict[str, Any]:
        """The repository listed (files, archived WAL), a fresh restore area, the backup laid down in it."""
        backup = Backup.from_metadata(point.metadata["backup"])
        recovery_target = parse_time(point.metadata.get("recovery_target"))
        binaries = physical_binaries(backup.major, target.name, backup.label)
        data, spool, scratch, config_to, fetched = (
            cluster.path / f"{target.name}-{part}" for part in ("data", "wal", "scratch", "backup-config", "fetch")
        )
        started = time.monotonic()
        before = self.inventory(target)
        wal_before = self.archived_wal(target)
        stop_server(data, binaries)  # a retried attempt starts over
        fresh_area(cluster.path, (data, spool, scratch, config_to, fetched), cluster.path / f"{target.name}.log")
        heartbeat({"target": target.name, "step": f"{self.tool_name}: restoring backup {backup.label}"})
        how = self.lay_down(target, backup, data, recovery_target, scratch)
        return {"before": before, "wal": wal_before, "how": how, "seconds": round(time.monotonic() - started, 3), "staged": False}

    def _prepare(
        self, target: PostgresTarget, backup: Backup, data: Path, area: Path, config_to: Path, recovery_target: Optional[datetime]
    ) -> dict[str, Any]:
        """The laid-down backup made drdrill's: links refused, its configuration set aside, drdrill's
        recovery settings, owned by the server user (localpg.recovered.prepare_recovered_data_dir)."""
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


def _seconds(staged: dict[str, Any], to_laid_down: float, total: float) -> dict[str, Any]:
    """The restore's times: laid down within this activity, or earlier beside the isolation (staged)."""
    if "staged" in staged:
        return {"lay_down": round(to_laid_down, 3), "total": round(total, 3)}
    lay = staged["seconds"]
    return {"lay_down": lay, "total": round(lay + total, 3), "lay_down_beside_isolation": True, "after_lay_down": round(total, 3)}


def fresh_area(area: Path, dirs: tuple[Path, ...], log: Path) -> None:
    """Empty 0700 directories for a (retried) recovery in the drill's cluster directory, 0711 so a
    sandboxed tool enters its own directories in it and lists nothing; no log of an earlier try."""
    os.chmod(area, 0o711)
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(mode=0o700)
    safefs.remove_file(log)


def recover(target: PostgresTarget, data: Path, log: Path, binaries: Binaries, settings: dict[str, str], feeder: WalFeeder) -> RecoveryLog:
    """Start the laid-down server with `settings` and feed it WAL until recovery ends or it stops;
    the server is stopped again when anything goes wrong, the feeder in any case."""
    feeder.start()
    try:
        try:
            start_recovery(data, log, binaries, settings)
        except ClusterError as exc:
            raise ProviderError("RECOVERY_FAILED", f"target {target.name}: {exc}") from exc
        return wait_for_recovery(data, log, feeder, target, timeout=target.restore.timeout.total_seconds())
    except BaseException:
        stop_server(data, binaries)
        raise
    finally:
        feeder.stop()


def unasserted(target: PostgresTarget) -> list[Finding]:
    """PITR_UNASSERTED when no boundary check proves the moment recovery reached."""
    if target.source.boundary_checks:
        return []
    return [
        Finding(
            code="PITR_UNASSERTED",
            target=target.name,
            could_not_verify=True,
            message=f"target {target.name}: recovered to a point in time, but no boundary check proves the moment "
            "(add a validation of type boundary): a server that came up proves nothing about the moment it reached",
        )
    ]


def repository_changed(name: str, untouched: dict[str, Any]) -> list[Finding]:
    """REPOSITORY_CHANGED (a warning) when the repository's files changed during the drill."""
    if not untouched["changed"]:
        return []
    return [
        Finding(
            code="REPOSITORY_CHANGED",
            severity="warning",
            target=name,
            message=f"target {name}: files of the repository changed or vanished during the drill (not by drdrill, "
            f"which only reads it; by production's expire?): {', '.join(untouched['changed'][:5])}",
        )
    ]


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
