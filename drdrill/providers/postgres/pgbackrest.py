"""`source: {pgbackrest: {stanza: …}}`: a pgBackRest stanza, recovered to a point in time with
pgBackRest itself (Debian's `pgbackrest` package on the worker).

drdrill only runs pgBackRest's reading commands: `info` (the backups), `repo-ls` (the archived WAL
and the repository's files, listed before and after the drill), `restore` (into the drill's data
directory, with `--type=time|default --target --set`) and `archive-get` (WAL for the recovered
server, through drdrill's spool). The repository is configured the way pgBackRest always is: its
config file and the PGBACKREST_* variables the drill names, passed by name; drdrill adds only
`log-level-file=off`, so it leaves no log files behind.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from drdrill.core.spec import PostgresTarget
from drdrill.providers.base import ProviderError
from drdrill.providers.postgres.recovery import ArchivedWal, Backup, PhysicalSource, WalUnreadable, last_line, named_env, run_tool, utc

# pgBackRest's stanza status codes (`pgbackrest info --output=json`).
_MISSING_STANZA = {1: "missing stanza path", 3: "missing stanza data"}
_NO_BACKUPS = 2


def pgbackrest() -> str:
    found = shutil.which("pgbackrest")
    if not found:
        raise ProviderError(
            "TOOL_MISSING", "pgbackrest is not installed on this worker: install Debian's (or your distribution's) pgbackrest package"
        )
    return found


def pg_time(moment: datetime) -> str:
    """2026-11-29 19:46:13.941518+00: the form pgBackRest reads (it refuses ISO 8601's 'T' when it
    chooses the backup set itself) and PostgreSQL's recovery_target_time reads too."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f+00")


def errors_of(text: str) -> str:
    """pgBackRest's own error lines ("ERROR: [045]: …"), else its last line."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip().startswith(("ERROR", "P00  ERROR"))]
    return " ".join(lines) if lines else last_line(text)


class PgBackRest(PhysicalSource):
    tool_name = "pgBackRest"

    def __init__(self) -> None:
        self._info: Optional[dict[str, Any]] = None

    # -------------------------------------------------------------- running pgBackRest

    def _argv(self, target: PostgresTarget, command: str, options: list[str], params: list[str]) -> list[str]:
        s = target.source.pgbackrest
        argv = [pgbackrest(), f"--stanza={s.stanza}"]
        if s.config:
            argv.append(f"--config={s.config}")
        if s.repo:
            argv.append(f"--repo={s.repo}")
        return argv + options + [command] + params

    def _run(self, target: PostgresTarget, command: str, *options: str, params: tuple[str, ...] = (), step: str = "") -> Any:
        """pgbackrest [options] command [params], with the PGBACKREST_* variables the drill names."""
        env = named_env(target.source.pgbackrest.env, target.name, ("PGBACKREST_",))
        env["PGBACKREST_LOG_LEVEL_FILE"] = "off"
        return run_tool(self._argv(target, command, list(options), list(params)), env, target.name, step or f"pgbackrest {command}")

    def info(self, target: PostgresTarget) -> dict[str, Any]:
        """The stanza as `pgbackrest info` sees it; a stanza that is not there or a repository that
        cannot be read is one clear finding with pgBackRest's words."""
        if self._info is not None:
            return self._info
        stanza = target.source.pgbackrest.stanza
        proc = self._run(target, "info", "--output=json")
        if proc.returncode != 0:
            raise ProviderError(
                "REPOSITORY_UNREADABLE", f"target {target.name}: pgbackrest info for stanza {stanza} failed: {errors_of(proc.stderr + proc.stdout)}"
            )
        try:
            info = next(s for s in json.loads(proc.stdout) if s.get("name") == stanza)
        except (ValueError, StopIteration) as exc:
            raise ProviderError("REPOSITORY_UNREADABLE", f"target {target.name}: pgbackrest info said nothing about stanza {stanza}") from exc
        status = info.get("status", {})
        code = status.get("code")
        if code in _MISSING_STANZA:
            raise ProviderError(
                "STANZA_NOT_FOUND",
                f"target {target.name}: the repository has no stanza {stanza!r} (pgBackRest: {status.get('message')}); "
                "check the stanza name and the repository the configuration points to",
            )
        if code not in (0, _NO_BACKUPS):
            raise ProviderError(
                "REPOSITORY_UNREADABLE", f"target {target.name}: pgBackRest cannot read stanza {stanza}: {status.get('message')}"
            )
        self._info = info
        return info

    # -------------------------------------------------------------- the repository

    def backups(self, target: PostgresTarget) -> list[Backup]:
        info = self.info(target)
        versions = {db["id"]: db.get("version", "0") for db in info.get("db", [])}
        found = []
        for b in info.get("backup", []):
            major = int(str(versions.get(b.get("database", {}).get("id"), "0")).split(".")[0] or 0)
            found.append(
                Backup(
                    label=b["label"],
                    started=utc(b["timestamp"]["start"]),
                    stopped=utc(b["timestamp"]["stop"]),
                    major=major,
                    size=(b.get("info") or {}).get("size"),
                    details={"type": b.get("type"), "wal": b.get("archive"), "lsn": b.get("lsn"), "error": b.get("error", False)},
                )
            )
        return found

    def _archive_ids(self, target: PostgresTarget) -> list[str]:
        info = self.info(target)
        current = max((db["id"] for db in info.get("db", [])), default=None)
        return [a["id"] for a in info.get("archive", []) if a.get("database", {}).get("id") == current]

    def _listing(self, target: PostgresTarget, path: str) -> dict[str, Any]:
        proc = self._run(target, "repo-ls", "--output=json", "--recurse", params=(path,), step="pgbackrest repo-ls")
        if proc.returncode != 0:
            raise ProviderError("REPOSITORY_UNREADABLE", f"target {target.name}: pgbackrest repo-ls {path} failed: {errors_of(proc.stderr)}")
        return json.loads(proc.stdout or "{}")

    def archived_wal(self, target: PostgresTarget) -> list[ArchivedWal]:
        stanza = target.source.pgbackrest.stanza
        wal = []
        for archive_id in self._archive_ids(target):
            for path, entry in self._listing(target, f"archive/{stanza}/{archive_id}").items():
                name = Path(path).name
                if entry.get("type") != "file":
                    continue
                checksum = None
                if len(name) > 24 and name[24] == "-":  # 000000010000000000000004-<sha1>.gz
                    name, checksum = name[:24], name[25:65]
                elif not name.endswith(".history"):
                    continue
                wal.append(ArchivedWal(name, utc(entry["time"]) if "time" in entry else None, checksum))
        return wal

    def inventory(self, target: PostgresTarget) -> dict[str, str]:
        stanza = target.source.pgbackrest.stanza
        files = {}
        for top in (f"archive/{stanza}", f"backup/{stanza}"):
            for path, entry in self._listing(target, top).items():
                if entry.get("type") == "file":
                    files[f"{top}/{path}"] = f"{entry.get('size')}:{entry.get('time')}"
        return files

    # -------------------------------------------------------------- restoring

    def lay_down(self, target: PostgresTarget, backup: Backup, data: Path, recovery_target: Optional[datetime], scratch: Path) -> str:
        options = [
            f"--pg1-path={data}",
            f"--set={backup.label}",
            f"--process-max={target.restore.jobs}",
            f"--tablespace-map-all={scratch / 'tablespaces'}",
            "--archive-mode=off",
        ]
        if recovery_target is not None:
            options += ["--type=time", f"--target={pg_time(recovery_target)}", "--target-action=promote"]
        else:
            options += ["--type=default"]
        proc = self._run(target, "restore", *options, step=f"pgbackrest restore --set={backup.label}")
        if proc.returncode != 0:
            said = errors_of(proc.stderr + proc.stdout)
            damaged = any(word in said.lower() for word in ("checksum", "data error", "zlib", "lz4", "zst", "bz2", "formaterror"))
            code = "BACKUP_DAMAGED" if damaged else "RESTORE_FAILED"
            raise ProviderError(code, f"target {target.name}: pgbackrest restore of backup {backup.label} failed: {said}")
        kind = f"--type=time --target='{pg_time(recovery_target)}'" if recovery_target else "--type=default"
        return f"pgbackrest restore --set={backup.label} {kind}"

    def fetch_wal(self, target: PostgresTarget, name: str, dest: Path, data: Path) -> bool:
        proc = self._run(target, "archive-get", f"--pg1-path={data}", params=(name, str(dest)), step=f"archive-get {name}")
        if proc.returncode == 0:
            return True
        if proc.returncode == 1:  # "unable to find … in the archive"
            return False
        raise WalUnreadable(errors_of(proc.stderr + proc.stdout))
