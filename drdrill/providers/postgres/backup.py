"""`drdrill backup` and the backup repository it writes, which the postgres provider reads.

Repository layout (one directory per recovery point, written atomically):

    <repository>/<YYYYmmddTHHMMSSZ>-<id>/
        manifest.json    consistent time, server version, per-table rows and content checksums,
                         archive sha256 and size, all taken inside the dump's exported snapshot
        archive.dump     pg_dump -Fc   (or archive/ for -Fd, base/ for a pg_basebackup)
        globals.sql      roles (pg_dumpall --globals-only), when the source allows it
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from datetime import timezone
from pathlib import Path

import psycopg

from drdrill.core.models import RecoveryPoint
from drdrill.core.paths import sha256_path  # noqa: F401 (repository.py's, and this module's)
from drdrill.core.times import parse_time
from drdrill.providers.base import ProviderError
from drdrill.localpg.cluster import tool
from drdrill.localpg.data import fingerprints_parallel, list_tables

MANIFEST = "manifest.json"


def libpq_env(dsn: str) -> dict[str, str]:
    """DSN -> PG* environment variables, so no secret ever reaches a command line."""
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    mapping = {
        "host": "PGHOST",
        "port": "PGPORT",
        "user": "PGUSER",
        "password": "PGPASSWORD",
        "dbname": "PGDATABASE",
        "sslmode": "PGSSLMODE",
        "sslrootcert": "PGSSLROOTCERT",
        "sslcert": "PGSSLCERT",
        "sslkey": "PGSSLKEY",
        "options": "PGOPTIONS",
        "application_name": "PGAPPNAME",
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    for key, value in params.items():
        if key in mapping and value is not None:
            env[mapping[key]] = str(value)
    return env


def take_base_backup(dsn: str, repository: str | Path) -> Path:
    """A physical base backup (pg_basebackup -Fp -X stream) of the whole source cluster.

    Its consistent time is recorded as the moment the backup started: the copy holds everything
    committed by then (and possibly a little more), so the RPO measured from it is never flattering.
    A physical copy has no per-table fingerprints: checksum validations of it cannot be verified.
    """
    repo = Path(repository)
    repo.mkdir(parents=True, exist_ok=True)
    with psycopg.connect(dsn, autocommit=True) as conn:
        started, version, dbname, user = conn.execute(
            "SELECT now(), current_setting('server_version'), current_database(), current_user"
        ).fetchone()
    stamp = started.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    point_id = f"{stamp}-{uuid.uuid4().hex[:8]}"
    work = repo / f".tmp-{point_id}"
    work.mkdir()
    archive = work / "base"
    proc = subprocess.run(
        [tool("pg_basebackup"), "-D", str(archive), "-Fp", "-X", "stream", "--checkpoint=fast", "--no-sync"],
        env=libpq_env(dsn),
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        shutil.rmtree(work, ignore_errors=True)
        raise RuntimeError(f"pg_basebackup failed: {proc.stderr.strip()}")
    digest, size = sha256_path(archive)
    manifest = {
        "format": "base",
        "archive": archive.name,
        "archive_sha256": digest,
        "archive_size": size,
        "consistent_time": started.astimezone(timezone.utc).isoformat(),
        "server_version": version,
        "database": dbname,
        "connect_as": user,
        "tables": {},
        "taken_with": "pg_basebackup -Fp -X stream",
    }
    (work / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    final = repo / point_id
    os.replace(work, final)
    return final


def take_backup(dsn: str, repository: str | Path, fmt: str = "custom", jobs: int = 2) -> Path:
    """Back up the database at `dsn` into `repository`; return the recovery point's directory.

    The dump and the manifest read the same exported snapshot, so the manifest's row counts and
    checksums describe exactly what the archive holds, as of the snapshot's `now()`.
    """
    if fmt == "base":
        return take_base_backup(dsn, repository)
    repo = Path(repository)
    repo.mkdir(parents=True, exist_ok=True)
    with psycopg.connect(dsn, autocommit=False) as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        snapshot, consistent, version, dbname = conn.execute(
            "SELECT pg_export_snapshot(), now(), current_setting('server_version'), current_database()"
        ).fetchone()
        tables = list_tables(conn)
        stamp = consistent.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        point_id = f"{stamp}-{uuid.uuid4().hex[:8]}"
        work = repo / f".tmp-{point_id}"
        work.mkdir()
        try:
            archive = work / ("archive.dump" if fmt == "custom" else "archive")
            cmd = [tool("pg_dump"), f"--snapshot={snapshot}", "--no-sync", "-f", str(archive)]
            cmd += ["-Fc"] if fmt == "custom" else ["-Fd", "-j", str(max(1, jobs))]
            dump = subprocess.Popen(cmd, env=libpq_env(dsn), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

            def snap_conn():
                c = psycopg.connect(dsn, autocommit=False)
                c.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                c.execute(psycopg.sql.SQL("SET TRANSACTION SNAPSHOT {}").format(psycopg.sql.Literal(snapshot)))
                return c

            fps = fingerprints_parallel(snap_conn, tables, workers=jobs)
            _, err = dump.communicate()
            if dump.returncode != 0:
                raise RuntimeError(f"pg_dump failed: {err.strip()}")
        finally:
            conn.rollback()
        globals_note = dump_globals(dsn, work / "globals.sql")
        digest, size = sha256_path(archive)
        manifest = {
            "format": fmt,
            "archive": archive.name,
            "archive_sha256": digest,
            "archive_size": size,
            "consistent_time": consistent.astimezone(timezone.utc).isoformat(),
            "server_version": version,
            "database": dbname,
            "tables": fps,
            "globals": (work / "globals.sql").exists(),
            "globals_note": globals_note,
            "taken_with": "pg_dump " + ("-Fc" if fmt == "custom" else f"-Fd -j {jobs}"),
        }
        (work / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        final = repo / point_id
        os.replace(work, final)
        return final
    raise AssertionError("unreachable")


def dump_globals(dsn: str, path: Path) -> str:
    """The roles a restore creates first (pg_dumpall --globals-only, without passwords) into `path`;
    "" when written, else why not (the backup is still taken, without them)."""
    glob = subprocess.run(
        [tool("pg_dumpall"), "--globals-only", "--no-role-passwords", "-f", str(path)],
        env=libpq_env(dsn),
        capture_output=True,
        text=True,
    )
    if glob.returncode == 0:
        return ""
    path.unlink(missing_ok=True)
    return glob.stderr.strip().splitlines()[0] if glob.stderr.strip() else "pg_dumpall failed"


def read_points(repository: str | Path, target: str) -> list[RecoveryPoint]:
    repo = Path(repository)
    if not repo.is_dir():
        raise ProviderError(
            "BACKUP_REPOSITORY_MISSING",
            f"target {target}: backup repository {repo} does not exist (run `drdrill backup` first)",
        )
    points = []
    for d in sorted(repo.iterdir()):
        if d.name.startswith(".") or not (d / MANIFEST).is_file():
            continue
        try:
            m = json.loads((d / MANIFEST).read_text())
            consistent = parse_time(m["consistent_time"])
        except (OSError, ValueError, KeyError, TypeError):
            consistent = None
        if consistent is None:
            continue  # an unreadable manifest is not a recovery point; the repository check reports it
        points.append(
            RecoveryPoint(
                target=target,
                provider="postgres",
                id=d.name,
                consistent_time=consistent,
                size_bytes=m.get("archive_size"),
                metadata={"path": str(d), "manifest": m},
            )
        )
    return points
