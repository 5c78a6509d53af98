"""pg_dump files a team already has: `source: {path | s3 | url_env}`, every pg_dump format, no manifest.

Each file (or directory archive, or object) is a candidate recovery point, dated by its name
pattern, else its archive header, else its modification time; the evidence says which. Before
anything is restored, the chosen one is checked: it is a pg_dump archive at all, of one format with
its siblings, of the declared format, of a PostgreSQL major this worker can restore (the same, else
newer with VERSION_NEWER, never older), and equal to its expected sha256/size or sidecar
(ARTEFACT_UNVERIFIED when nothing says what it should be). A plain dump without pg_dump's closing
line is cut short (ARCHIVE_TRUNCATED): psql would restore it with exit 0.

Restores stream: an object in S3 or behind a URL goes straight into pg_restore or psql (custom and
plain via stdin, gzip/zstd decompressed on the way); a tar goes to a scratch file in the drill's
cluster directory first. What the tools write to stderr becomes findings, and an exit code that
disagrees with them is EXIT_CODE_LIED. The restore runs on a server of the dump's major: the drill's
cluster when it is that major, else a cluster of its own beside it, on the same private socket
(dumprestore.py runs it).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import psycopg

from drdrill.core.models import DrillContext, Finding, RecoveryPoint, RestoredResource
from drdrill.providers.postgres.schema import name_time_regex, PostgresTarget
from drdrill.providers.base import ProviderError, heartbeat, select_for_target
import drdrill.localpg.binaries as installs
from drdrill.providers.postgres.artefacts import MANIFEST_SUFFIX, Artefact, Expectation, Header, parse_sidecar, point_time
from drdrill.providers.postgres.dumpstores import Store, store_for
from drdrill.localpg.cluster import LocalCluster, install_dirs
from drdrill.localpg.data import already_restored, mark_restored
from drdrill.providers.postgres.dumprestore import CHUNK, Restore, require_complete, server_for
from drdrill.providers.postgres.sources import RecoverySource

TIME_SOURCES = {
    "name": "the time in its name (source.name_time)",
    "header": "the archive's header (when pg_dump started)",
    "modified": "its modification time (when it was last written, after the dump's snapshot)",
}


class DumpFiles(RecoverySource):
    """`source: {path: DIR/GLOB}`, `{s3: {bucket, prefix}}` or `{url_env: VAR}`: pg_dump output."""

    # ------------------------------------------------------------ finding the recovery point

    def find(self, ctx: DrillContext, target: PostgresTarget) -> RecoveryPoint:
        source = target.source
        store = store_for(source)
        artefacts = store.list()
        if not artefacts:
            raise ProviderError(
                "RECOVERY_POINT_NOT_FOUND",
                f"target {target.name}: nothing matches {store.place()}: "
                + (f"it is a directory, and a glob is needed: path: {source.path.rstrip('/')}/*.dump (or *.sql, *.sql.gz …)"
                   if source.path and os.path.isdir(source.path) else "check the "
                   + ("glob and the directory" if source.path else "bucket and prefix" if source.s3 else "URL")),
            )
        name_time = name_time_regex(source.name_time) if source.name_time else None
        points = []
        for i, a in enumerate(artefacts):
            heartbeat({"target": target.name, "step": "read headers", "done": i, "of": len(artefacts)})
            try:
                header = store.header(a)
            except OSError as exc:
                raise ProviderError("SOURCE_UNREADABLE", f"target {target.name}: {a.place} cannot be read: {exc.strerror or exc}") from None
            when, how = point_time(a, header, name_time)
            points.append(
                RecoveryPoint(
                    target=target.name, provider="postgres", id=a.name, consistent_time=when, size_bytes=a.size,
                    metadata={
                        "source": source.kind, "place": a.place, "artefact": a.to_dict(), "header": asdict(header),
                        "format": header.describe() if header.format else None,
                        "time_from": how, "time_source": TIME_SOURCES[how],
                    },
                )
            )
        if name_time is not None and not any(p.metadata["time_from"] == "name" for p in points):
            raise ProviderError(
                "NAME_TIME_UNMATCHED",
                f"target {target.name}: source.name_time {source.name_time!r} matches none of the {len(points)} names under "
                f"{store.place()} (e.g. {points[0].id}): fix the pattern to the names' time stamp, or remove it to date them by their headers",
            )
        _refuse_mixed_formats(points, store.place(), target.name)
        chosen = select_for_target(points, ctx, target)
        if chosen.consistent_time > (ctx.as_of or ctx.declared):
            raise ProviderError(
                "RECOVERY_POINT_IN_FUTURE",
                f"target {target.name}: {chosen.id} is dated {chosen.consistent_time.isoformat()} by {TIME_SOURCES[chosen.metadata['time_from']]}, "
                f"after the declared disaster ({(ctx.as_of or ctx.declared).isoformat()}): a wrong clock, zone or name_time; no RPO can be measured from it",
            )
        self._check(chosen, store, target)
        return chosen

    def _check(self, point: RecoveryPoint, store: Store, target: PostgresTarget) -> None:
        """What can be known about the chosen artefact before restoring it, as findings or refusals."""
        a, header = Artefact.from_dict(point.metadata["artefact"]), Header(**point.metadata["header"])
        where = f"target {target.name}: {a.place}"
        if header.format is None:
            code = "ARCHIVE_EMPTY" if a.size == 0 else "ARCHIVE_NOT_A_DUMP"
            raise ProviderError(code, f"{where}: {header.problem}" + (": pg_dump wrote nothing" if code == "ARCHIVE_EMPTY" else ""))
        declared = target.source.format
        if declared not in ("auto", header.format):
            raise ProviderError("ARCHIVE_FORMAT_MISMATCH", f"{where} is a {header.describe()} dump; the drill says format: {declared}")
        if header.format == "directory" and store.local_path(a) is None:
            raise ProviderError("ARCHIVE_NOT_A_DUMP", f"{where}: a directory archive's toc.dat alone; store directory dumps on disk (path:) or as custom (-Fc)")
        expect = self._expectation(a, store, target, point)
        point.metadata["expect"] = asdict(expect)
        if expect.size is not None and a.size is not None and a.size != expect.size:
            raise ProviderError(
                "ARTEFACT_CHECKSUM_MISMATCH",
                f"{where} is {a.size} bytes; {expect.said_by} says {expect.size}: it is not the file that was written",
            )
        if expect.problem:
            raise ProviderError("ARTEFACT_CHECKSUM_MISMATCH", f"{where}: its sidecar {expect.said_by} cannot be used: {expect.problem}")
        if expect.empty:
            point.findings.append(
                Finding(
                    code="ARTEFACT_UNVERIFIED", severity="warning", target=target.name,
                    message=f"{where}: nothing says what it should contain (no sha256 or size in the drill, no "
                    f"{a.name}.sha256 beside it), so damage that still restores goes unseen: add a sidecar (sha256sum)",
                )
            )
        if header.major is not None:
            try:
                chosen, notes = installs.for_major(header.major, target.name)
            except ProviderError as exc:
                raise ProviderError(exc.code, f"{where}: {exc.message}") from None
            point.metadata["restore_with"] = str(chosen)
            point.findings.extend(notes)

    def _expectation(self, a: Artefact, store: Store, target: PostgresTarget, point: RecoveryPoint) -> Expectation:
        source = target.source
        manifest = _read_manifest(a, store, target)
        if manifest is not None:
            point.metadata["manifest"], point.metadata["manifest_from"] = manifest
        if source.sha256 or source.size is not None:
            return Expectation(sha256=(source.sha256 or "").lower() or None, size=source.size, said_by="the drill file")
        side = store.sidecar(a)
        if side is None and manifest is not None:
            m, where = manifest
            return Expectation(sha256=m.get("archive_sha256") if not a.is_dir else None, size=m.get("archive_size") if not a.is_dir else None,
                               files=m.get("files") or {} if a.is_dir else {}, said_by=where)
        if side is None:
            return Expectation()
        where, text = side
        expect = parse_sidecar(text, a)
        expect.said_by = where
        return expect

    # ------------------------------------------------------------ restoring it

    def restore(self, ctx: DrillContext, target: PostgresTarget, point: RecoveryPoint, cluster: LocalCluster) -> RestoredResource:
        a = Artefact.from_dict(point.metadata["artefact"])
        header = Header(**point.metadata["header"])
        expect = Expectation(**point.metadata.get("expect") or {})
        store = store_for(target.source)
        local = store.local_path(a)
        started = time.monotonic()

        # 1. Before anything is restored: the bytes are the expected ones, a plain dump is complete.
        if local is not None and not expect.empty:
            _verify_local(local, a, expect, target.name)
        if header.format == "plain" and header.encoding == "none":
            heartbeat({"target": target.name, "step": "read the end of the dump"})
            require_complete(store.tail(a), a, target.name)

        # 2. A server of the dump's major, and a fresh database in it (a retry starts over).
        binaries = installs.for_major(header.major, target.name)[0] if header.major else cluster.binaries
        server = server_for(cluster, target.name, binaries)
        dbname = target.source.database or target.name
        endpoint = {"dsn": server.dsn(dbname), "database": dbname, "socket_dir": str(cluster.sock)}
        if already_restored(server.dsn(), dbname, point.id):
            return RestoredResource(
                target=target.name, provider="postgres", id=f"{server.where}/{dbname}", endpoint=endpoint,
                description=f"{a.name} restored earlier in this drill", details={"point": point.id, "resumed": True},
            )

        # 3. The archive's owners exist (roles are not in a pg_dump), then the restore itself.
        run = Restore(target=target, artefact=a, header=header, expect=expect, store=store, server=server,
                      binaries=binaries, dbname=dbname, scratch=cluster.path / f"scratch-{target.name}",
                      sandbox=cluster.sandbox(ro=install_dirs(binaries)))
        try:
            run.execute()
        finally:
            run.scratch.unlink(missing_ok=True)
        findings = run.judge()

        # 4. What came back.
        with psycopg.connect(server.dsn(dbname), autocommit=True, connect_timeout=10) as conn:
            tables = mark_restored(conn, dbname, point.id)
        return RestoredResource(
            target=target.name,
            provider="postgres",
            id=f"{server.where}/{dbname}",
            description=f"{run.how}, {len(tables)} tables",
            endpoint=endpoint,
            details={
                "point": point.id, "place": a.place, "format": header.describe(), "tool": run.how,
                "binaries": str(binaries), "server": server.label, "streamed": run.streamed,
                "bytes_read": run.bytes_read, "sha256": run.sha256, "exit_code": run.returncode,
                "owner_roles_created": run.roles_created, "tables": len(tables),
                "seconds": round(time.monotonic() - started, 3),
            },
            findings=findings,
        )


def _read_manifest(a: Artefact, store: Store, target: PostgresTarget) -> Optional[tuple[dict, str]]:
    """`drdrill dump`'s `<name>.manifest.json` beside the artefact: (manifest, where), None without one."""
    try:
        found = store.manifest(a)
    except OSError as exc:
        raise ProviderError("SOURCE_UNREADABLE", f"target {target.name}: {a.place}{MANIFEST_SUFFIX} cannot be read: {exc}") from None
    if found is None:
        return None
    where, text = found
    try:
        manifest = json.loads(text)
        if not isinstance(manifest, dict) or not isinstance(manifest.get("tables"), dict):
            raise ValueError("it has no tables")
    except ValueError as exc:
        raise ProviderError(
            "ARTEFACT_CHECKSUM_MISMATCH",
            f"target {target.name}: {where} is not a manifest drdrill dump wrote ({exc}): remove it, or take the dump again with drdrill dump",
        ) from None
    return manifest, where


def _refuse_mixed_formats(points: list[RecoveryPoint], place: str, target: str) -> None:
    """One source, one format: a glob that matches both custom and plain dumps is ambiguous (someone
    changed the cron job, or the glob is too wide), and a drill of either would not say so."""
    by_format: dict[str, list[str]] = {}
    for p in points:
        fmt = p.metadata["header"]["format"]
        if fmt:
            by_format.setdefault(fmt, []).append(p.id)
    if len(by_format) > 1:
        listed = "; ".join(f"{fmt}: {', '.join(ids[:3])}{' …' if len(ids) > 3 else ''}" for fmt, ids in sorted(by_format.items()))
        raise ProviderError(
            "ARTEFACT_FORMATS_MIXED",
            f"target {target}: {place} matches dumps of {len(by_format)} formats ({listed}): narrow the glob or prefix to one kind",
        )


def _verify_local(path: Path, a: Artefact, expect: Expectation, target: str) -> None:
    """sha256 of a file on disk (or of each file of a directory archive) against what was expected."""
    if a.is_dir:
        for name, want in sorted(expect.files.items()):
            got = _sha256_file(path / name, target) if (path / name).is_file() else "missing"
            if got != want:
                raise ProviderError(
                    "ARTEFACT_CHECKSUM_MISMATCH",
                    f"target {target}: {a.place}/{name} has sha256 {got[:16]}…, {expect.said_by} says {want[:16]}…: "
                    "the dump was altered or damaged after it was written",
                )
        return
    if expect.sha256:
        got = _sha256_file(path, target)
        if got != expect.sha256:
            raise ProviderError(
                "ARTEFACT_CHECKSUM_MISMATCH",
                f"target {target}: {a.place} has sha256 {got[:16]}…, {expect.said_by} says {expect.sha256[:16]}…: "
                "the dump was altered or damaged after it was written",
            )


def _sha256_file(path: Path, target: str) -> str:
    h = hashlib.sha256()
    done = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK * 4):
            h.update(chunk)
            done += len(chunk)
            if done % (CHUNK * 256) < CHUNK * 4:
                heartbeat({"target": target, "step": "sha256", "bytes": done})
    return h.hexdigest()
