"""`drdrill dump`: a drop-in for a cron job's `pg_dump` that also writes `<file>.manifest.json`.

    pg_dump -Fc -f /backups/shop-$(date +%F).dump shop      # before
    drdrill dump -Fc -f /backups/shop-$(date +%F).dump shop # after: the same dump, plus a manifest

Same arguments, same output file, same exit code. It opens a REPEATABLE READ transaction on the
same database and exports its snapshot (`pg_export_snapshot()`), runs the real pg_dump with
`--snapshot` (drdrill.core.dumpstart: before the rest of drdrill is imported), and, in that very
snapshot, while pg_dump runs, counts and fingerprints each table the dump holds (data.py: the
fingerprints `drdrill backup` records), and each range of a large table's integer primary key
(about 1,000 ranges per large table, as reladiff/data-diff segment theirs; dumpfingerprints.py,
over two connections): a failed `checksum` check then names the key ranges that differ, with
their row counts. The manifest also
holds the dump's sha256 and size, so drills of `path:`/`s3:`/`url_env:` sources verify the bytes
and compare the restored tables with it (`checksum`, `row_count: equals_manifest`).

The manifest is written only when pg_dump succeeded, atomically, and a stale one beside the file is
removed first: it never describes another dump than the one beside it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from datetime import timezone
from pathlib import Path
from typing import Optional

import psycopg

# Only what the dump needs: this module loads while pg_dump runs, on the CPU pg_dump shares (not
# providers.base, the artefacts' or the clusters' modules: 0.3 s of imports, 12% of a 1 GiB dump).
from drdrill.core.dumpstart import MANIFEST_SUFFIX, Started, manifest_path, no_manifest_reason, output_of, parse_args, start
from drdrill.core.paths import sha256_path
from drdrill.localpg.data import list_tables
from drdrill.providers.postgres.dumpfingerprints import table_manifests, worker_connection

SUFFIX = MANIFEST_SUFFIX
NO_MANIFEST = 3  # exit code: pg_dump succeeded, the manifest could not be written


class DumpError(Exception):
    pass


def _client(name: str) -> str:
    """The pg_dump (pg_restore) the cron job ran: the one on PATH, else the newest installed."""
    if found := shutil.which(name):
        return found
    from drdrill.localpg.cluster import tool

    return tool(name)


def run_dump(argv: list[str], started: Optional[Started] = None) -> int:
    """pg_dump with `argv` in an exported snapshot, then the manifest; pg_dump's exit code.
    `started`: pg_dump already running in its snapshot (app/entry.py starts it before importing this)."""
    opts, _ = parse_args(argv)
    if "--snapshot" in opts:
        raise DumpError("drdrill dump exports its own snapshot: remove --snapshot from the arguments")
    output = output_of(opts)
    reason = no_manifest_reason(argv, opts, output)
    if reason is not None:
        print(f"drdrill dump: no manifest: {reason}", file=sys.stderr)
        return subprocess.run([_client("pg_dump"), *argv]).returncode
    started = started or start(argv, psycopg.connect, (psycopg.Error,), _client("pg_dump"))
    assert started is not None  # start() declines only the cases handled above
    if started.conn is None:
        code = subprocess.run([started.pg_dump, *argv]).returncode
        print(f"drdrill dump: no manifest: cannot connect to read the snapshot: {started.error}", file=sys.stderr)
        return code or NO_MANIFEST
    return _finish(started)


def _finish(started: Started) -> int:
    """While pg_dump reads the snapshot: the tables' fingerprints in it; then, if pg_dump succeeded,
    what the dump holds, its sha256, and the manifest, written atomically."""
    conn, dump, output = started.conn, started.process, started.output
    with conn:
        try:
            leaves = _partitions(conn)
            workers = worker_connection(started.connect, started.snapshot) if started.connect else None
            fps = table_manifests(conn, list_tables(conn), workers)
        finally:
            code = dump.wait()
        conn.execute("ROLLBACK")
    if code != 0:
        return code
    fmt = _format(started.opts.get("--format", "p"))
    found, digest, size = read_plain(output) if fmt == "plain" and output.is_file() else (tables_in_dump(output, fmt), *sha256_path(output))
    dumped = set(found)
    # A partitioned table's rows are dumped as its partitions' (list_tables names the parent).
    fps = {t: fp for t, fp in fps.items() if t in dumped or dumped & leaves.get(t, set())}
    manifest = {
        "format": fmt, "archive": output.name, "archive_sha256": digest, "archive_size": size,
        "consistent_time": started.consistent.astimezone(timezone.utc).isoformat(), "server_version": started.version,
        "database": started.dbname, "tables": fps, "taken_with": "drdrill dump (pg_dump --snapshot)",
    }
    if output.is_dir():
        manifest["files"] = {p.name: sha256_path(p)[0] for p in sorted(output.iterdir()) if p.is_file()}
    tmp = output.with_name(f".{output.name}{SUFFIX}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(manifest, sort_keys=True, separators=(",", ":")))
    os.replace(tmp, manifest_path(output))
    return 0


_LEAVES = """
SELECT r.nspname || '.' || r.relname, ln.nspname || '.' || l.relname
FROM (SELECT c.oid, c.relname, n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relkind = 'p' AND NOT c.relispartition) r
CROSS JOIN LATERAL pg_partition_tree(r.oid) t JOIN pg_class l ON l.oid = t.relid JOIN pg_namespace ln ON ln.oid = l.relnamespace
WHERE t.isleaf"""


def _partitions(conn: psycopg.Connection) -> dict[str, set[str]]:
    """Each partitioned table's leaf partitions (schema.name, as list_tables names tables)."""
    out: dict[str, set[str]] = {}
    for root, leaf in conn.execute(_LEAVES).fetchall():
        out.setdefault(root, set()).add(leaf)
    return out


def _format(value: str) -> str:
    v = (value or "p").lower()
    return {"p": "plain", "c": "custom", "d": "directory", "t": "tar"}.get(v[:1], v)


_PLAIN_DATA = re.compile(rb"-- Data for Name: (.+?); Type: TABLE DATA; Schema: (.+?);")
_MARK = b"\n-- Data for Name: "


def read_plain(output: Path) -> tuple[list[str], str, int]:
    """A plain dump's TABLE DATA tables, sha256 and size, in one read of the file (a 1 GiB plain
    dump is read once, in large blocks, never line by line or whole into memory)."""
    with open(output, "rb") as fh:
        gzipped = fh.read(2) == b"\x1f\x8b"
    digest, size = sha256_path(output) if gzipped else (None, 0)
    h = hashlib.sha256()
    found: list[str] = []
    tail = b"\n"  # the file's start counts as a line start
    with (gzip.open(output, "rb") if gzipped else open(output, "rb")) as fh:  # type: ignore[operator]
        while block := fh.read(1 << 22):
            if not gzipped:
                h.update(block)
                size += len(block)
            tail = _scan(tail + block, found)
        _scan(tail + b"\n", found)
    return found, digest or h.hexdigest(), size


def _scan(buf: bytes, found: list[str]) -> bytes:
    """Append the tables of the complete marker lines in `buf`; what may continue in the next block."""
    pos = buf.find(_MARK)
    while pos >= 0:
        end = buf.find(b"\n", pos + 1)
        if end < 0:
            return buf[pos:]  # a marker line cut by the block's end
        m = _PLAIN_DATA.match(buf, pos + 1, end)
        if m:
            found.append(f"{m.group(2).decode()}.{m.group(1).decode()}")
        pos = buf.find(_MARK, end)
    return buf[-(len(_MARK) - 1):]


def tables_in_dump(output: Path, fmt: str) -> list[str]:
    """schema.table of every TABLE DATA entry the dump holds (what a restore brings back)."""
    if fmt == "plain":
        return read_plain(output)[0]
    proc = subprocess.run([_client("pg_restore"), "-l", str(output)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise DumpError(f"pg_restore -l {output} failed: {proc.stderr.strip()}")
    found = []
    for line in proc.stdout.splitlines():
        m = re.match(r"^\d+; \d+ \d+ TABLE DATA (\S+) (\S+) ", line)
        if m:
            found.append(f"{m.group(1)}.{m.group(2)}")
    return found


def main(argv: list[str], started: Optional[Started] = None) -> int:
    """`drdrill dump ARGS…`: pg_dump's exit code; 2 for arguments it cannot take, 4 (or 3, see
    NO_MANIFEST) when the dump was written but its manifest could not be."""
    from drdrill.core.redact import redact

    try:
        return run_dump(argv, started)
    except (DumpError, OSError) as exc:
        print(f"drdrill dump: {redact(str(exc))}", file=sys.stderr)
        return 2
    except psycopg.Error as exc:  # never echo the DSN
        print(f"drdrill dump: the manifest could not be written: {redact(str(exc).strip())}", file=sys.stderr)
        return 4
