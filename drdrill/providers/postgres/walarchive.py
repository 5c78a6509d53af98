"""`source: {wal_archive: {base_backups: DIR, archive: DIR}}`: plain `pg_basebackup -Fp` directories
and the WAL archive `archive_command = 'cp %p /archive/%f'` fills, as PostgreSQL's documentation
sets them up; no backup tool at all.

A base backup's start comes from its backup_label; its end from the backup history file
(`<segment>.<offset>.backup`, STOP TIME) PostgreSQL archives beside the WAL, else from its start
(PostgreSQL itself then refuses a target before the backup was consistent). WAL files are copied
from the archive (gzip-compressed ones, `%f.gz`, are decompressed). drdrill only reads both.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Optional

from drdrill.providers.postgres.schema import PostgresTarget
from drdrill.providers.base import ProviderError
import drdrill.localpg.safefs as safefs
from drdrill.providers.postgres.recovery import Backup, PhysicalSource
from drdrill.providers.postgres.toolrun import utc
from drdrill.providers.postgres.walreplay import SEGMENT_RE, ArchivedWal, WalUnreadable

_LABEL_LINE = re.compile(r"^([A-Z ]+):\s*(.*)$")
_OFFSET = re.compile(r"^(?:UTC|GMT|Z)?([+-]\d{1,2})(?::?(\d{2}))?$")


def read_label(path: Path) -> dict[str, str]:
    """The fields of a backup_label or a backup history file ("START TIME: …")."""
    fields = {}
    for line in path.read_text(errors="replace").splitlines():
        m = _LABEL_LINE.match(line.strip())
        if m:
            fields[m.group(1)] = m.group(2).strip()
    return fields


def label_time(text: str) -> datetime:
    """'2026-11-29 18:57:45 UTC' (PostgreSQL writes the server's log_timezone abbreviation)."""
    parts = text.split()
    if len(parts) < 2:
        raise ValueError(f"not a time: {text!r}")
    stamp = datetime.fromisoformat(f"{parts[0]} {parts[1]}")
    zone = parts[2] if len(parts) > 2 else "UTC"
    if zone in ("UTC", "GMT", "Z"):
        return stamp.replace(tzinfo=timezone.utc)
    m = _OFFSET.match(zone)
    if not m:
        raise ValueError(f"time zone {zone!r} is an abbreviation drdrill cannot resolve: set log_timezone = 'UTC' on the source server")
    hours, minutes = int(m.group(1)), int(m.group(2) or 0)
    return stamp.replace(tzinfo=timezone(timedelta(hours=hours, minutes=minutes if hours >= 0 else -minutes)))


class WalArchive(PhysicalSource):
    tool_name = "pg_basebackup + WAL archive"

    # -------------------------------------------------------------- the repository

    def _dirs(self, target: PostgresTarget) -> tuple[Path, Path]:
        s = target.source.wal_archive
        base, archive = Path(s.base_backups), Path(s.archive)
        for what, d in (("base_backups", base), ("archive", archive)):
            if not d.is_dir():
                raise ProviderError("BACKUP_REPOSITORY_MISSING", f"target {target.name}: wal_archive.{what} {d} is not a directory")
            if not os.access(d, os.R_OK | os.X_OK):
                raise ProviderError("REPOSITORY_UNREADABLE", f"target {target.name}: this worker cannot read {d}")
        return base, archive

    def backups(self, target: PostgresTarget) -> list[Backup]:
        base, archive = self._dirs(target)
        dirs = [base] if (base / "backup_label").is_file() else sorted(d for d in base.iterdir() if (d / "backup_label").is_file())
        found = []
        for d in dirs:
            try:
                label = read_label(d / "backup_label")
                started = label_time(label["START TIME"])
                major = int((d / "PG_VERSION").read_text().strip().split(".")[0])
            except (OSError, KeyError, ValueError) as exc:
                raise ProviderError("BACKUP_UNREADABLE", f"target {target.name}: base backup {d} cannot be read: {exc}") from exc
            stopped, how = started, "backup_label START TIME (no backup history file in the archive)"
            history = self._history_file(archive, label.get("START WAL LOCATION", ""))
            if history is not None:
                try:
                    stopped, how = label_time(read_label(history)["STOP TIME"]), history.name
                except (KeyError, ValueError):
                    pass
            size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
            found.append(Backup(label=d.name, started=started, stopped=stopped, major=major, size=size, details={"path": str(d), "stop_time_from": how}))
        return found

    @staticmethod
    def _history_file(archive: Path, start: str) -> Optional[Path]:
        """START WAL LOCATION: 0/2000028 (file 000000010000000000000002) -> 000000010000000000000002.00000028.backup"""
        m = re.match(r"([0-9A-F]+)/([0-9A-F]+) \(file ([0-9A-F]{24})\)", start)
        if not m:
            return None
        candidates = sorted(archive.glob(f"{m.group(3)}.*.backup"))
        offset = int(m.group(2), 16) & 0xFFFFFF  # within a 16 MiB segment; other sizes: any candidate
        exact = [c for c in candidates if c.name.split(".")[1] == f"{offset:08X}"]
        return (exact or candidates or [None])[0]

    def archived_wal(self, target: PostgresTarget) -> list[ArchivedWal]:
        _, archive = self._dirs(target)
        wal = []
        for entry in os.scandir(archive):
            name = entry.name[:-3] if entry.name.endswith(".gz") else entry.name
            if SEGMENT_RE.match(name) or name.endswith(".history"):
                wal.append(ArchivedWal(name, utc(entry.stat().st_mtime)))
        return wal

    def inventory(self, target: PostgresTarget) -> dict[str, str]:
        files = {}
        for top in self._dirs(target):
            for f in top.rglob("*"):
                if f.is_file() and not f.is_symlink():
                    st = f.stat()
                    files[str(f)] = f"{st.st_size}:{st.st_mtime_ns}"
        return files

    # -------------------------------------------------------------- restoring

    def lay_down(self, target: PostgresTarget, backup: Backup, data: Path, recovery_target: Optional[datetime], scratch: Path) -> str:
        source = Path(backup.details["path"])
        base, _ = self._dirs(target)
        shutil.rmtree(data)
        shutil.copytree(source, data, symlinks=True)
        # Symlinks (pg_wal elsewhere, tablespaces) point where production keeps its files: copy
        # what they point to into the drill's own directory instead, but only from inside the
        # drill's base_backups directory: a link elsewhere (/root, /etc …) is refused, never read as
        # root into a directory the server user can read. Links inside the copies are refused later.
        links = [p for p in [data / "pg_wal", *((data / "pg_tblspc").glob("*"))] if p.is_symlink()]
        for link in links:
            text = os.readlink(link)
            real = os.path.realpath(text if os.path.isabs(text) else link.parent / text)
            if not (real + "/").startswith(os.path.realpath(base).rstrip("/") + "/") or not os.path.isdir(real):
                raise ProviderError(
                    "BACKUP_SYMLINK_REFUSED",
                    f"target {target.name}: base backup {source} links {link.relative_to(data)} -> {text}, outside wal_archive.base_backups "
                    f"({base}): drdrill copies only what is inside the backup's own directory (take the backup with "
                    "pg_basebackup --tablespace-mapping into it, or with -Ft)",
                )
            copy = scratch / ("pg_wal" if link.name == "pg_wal" else f"tablespace-{link.name}")
            shutil.copytree(real, copy, symlinks=True)
            link.unlink()
            if link.name == "pg_wal":
                shutil.move(str(copy), str(link))
            else:
                os.symlink(copy, link)
        safefs.remove_file(data / "backup_manifest")
        return f"copy of base backup {source}"

    def fetch_wal(self, target: PostgresTarget, name: str, dest: Path, data: Path) -> bool:
        _, archive = self._dirs(target)
        plain, packed = archive / name, archive / f"{name}.gz"
        for f in (plain, packed):
            if f.is_symlink():  # never read as root through a link someone planted in the archive
                raise WalUnreadable(f"{f} is a symbolic link; drdrill reads only regular files from the archive")
        if plain.is_file():
            shutil.copyfile(plain, dest)
            return True
        if packed.is_file():
            with gzip.open(packed, "rb") as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out)
            return True
        return False
