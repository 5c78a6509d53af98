"""`drdrill dump`: a drop-in for a cron job's `pg_dump` that also writes `<file>.manifest.json`.

    pg_dump -Fc -f /backups/shop-$(date +%F).dump shop      # before
    drdrill dump -Fc -f /backups/shop-$(date +%F).dump shop # after: the same dump, plus a manifest

Same arguments, same output file, same exit code. It opens a REPEATABLE READ transaction on the
same database and exports its snapshot (`pg_export_snapshot()`), runs the real pg_dump with
`--snapshot`, and, in that very snapshot, counts and fingerprints each table the dump holds
(data.py: the fingerprints `drdrill backup` records), and each range of a large table's integer
primary key (about 1,000 ranges per large table, as reladiff/data-diff segment theirs): a failed
`checksum` check then names the key ranges that differ, with their row counts. The manifest also
holds the dump's sha256 and size, so drills of `path:`/`s3:`/`url_env:` sources verify the bytes
and compare the restored tables with it (`checksum`, `row_count: equals_manifest`).

The manifest is written only when pg_dump succeeded, atomically, and a stale one beside the file is
removed first: it never describes another dump than the one beside it.
"""

from __future__ import annotations

import gzip
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
from psycopg import sql

from drdrill.providers.postgres.artefacts import MANIFEST_SUFFIX
from drdrill.providers.postgres.backup import sha256_path
from drdrill.localpg.cluster import tool
from drdrill.localpg.data import fingerprint, key_ranges, list_tables, table_ident

SUFFIX = MANIFEST_SUFFIX
RANGES = 1000  # about this many key ranges per large table
RANGE_ROWS = 100  # …and no fewer rows than this per range on a small one
NO_MANIFEST = 3  # exit code: pg_dump succeeded, the manifest could not be written

# pg_dump's options that take a value (short, and long when not written --opt=value).
_SHORT_WITH_VALUE = set("dEfFhjnNpStTUZe")
_LONG_WITH_VALUE = {
    "--dbname", "--file", "--format", "--host", "--jobs", "--schema", "--exclude-schema", "--port", "--superuser", "--table",
    "--exclude-table", "--username", "--compress", "--encoding", "--extension", "--exclude-extension", "--exclude-table-data",
    "--lock-wait-timeout", "--role", "--section", "--snapshot", "--exclude-table-and-children", "--table-and-children",
    "--exclude-table-data-and-children", "--extra-float-digits", "--rows-per-insert", "--filter",
}
_LONG_OF = {"d": "--dbname", "f": "--file", "F": "--format", "h": "--host", "p": "--port", "U": "--username", "j": "--jobs"}


class DumpError(Exception):
    pass


def parse_args(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """The options drdrill dump needs to know (long names), and the positional arguments."""
    opts: dict[str, str] = {}
    positional: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            if not eq and name in _LONG_WITH_VALUE:
                i += 1
                value = argv[i] if i < len(argv) else ""
            opts[name] = value
        elif arg.startswith("-") and len(arg) > 1:
            letter = arg[1]
            if letter in _SHORT_WITH_VALUE:
                value = arg[2:]
                if not value:
                    i += 1
                    value = argv[i] if i < len(argv) else ""
                opts[_LONG_OF.get(letter, f"-{letter}")] = value
        else:
            positional.append(arg)
        i += 1
    return opts, positional


def _connect_kwargs(opts: dict[str, str], positional: list[str]) -> tuple[str, dict[str, str]]:
    conninfo = opts.get("--dbname") or (positional[0] if positional else "")
    kwargs = {k: opts[o] for k, o in (("host", "--host"), ("port", "--port"), ("user", "--username")) if opts.get(o)}
    if conninfo and "=" not in conninfo and "://" not in conninfo:  # a bare database name
        kwargs["dbname"], conninfo = conninfo, ""
    return conninfo, kwargs


def _output(opts: dict[str, str]) -> Optional[Path]:
    """The dump's file: --file, else standard output when it is a regular file (`pg_dump db > x.sql`)."""
    if opts.get("--file"):
        return Path(opts["--file"])
    try:
        if os.path.isfile(f"/proc/self/fd/{sys.stdout.fileno()}"):
            return Path(os.readlink(f"/proc/self/fd/{sys.stdout.fileno()}"))
    except (OSError, ValueError):
        pass
    return None


def _client(name: str) -> str:
    """The pg_dump (pg_restore) the cron job ran: the one on PATH, else the newest installed."""
    return shutil.which(name) or tool(name)


def manifest_path(output: Path) -> Path:
    return output.with_name(output.name + SUFFIX)


def run_dump(argv: list[str]) -> int:
    """pg_dump with `argv` in an exported snapshot, then the manifest; pg_dump's exit code."""
    opts, positional = parse_args(argv)
    if "--snapshot" in opts:
        raise DumpError("drdrill dump exports its own snapshot: remove --snapshot from the arguments")
    output = _output(opts)
    pg_dump = _client("pg_dump")
    if output is None or any(o in opts for o in ("--schema-only", "-s")) or "-s" in argv:
        print("drdrill dump: no manifest: " + ("the dump goes to a pipe, not a file (use -f FILE)" if output is None
              else "a schema-only dump holds no rows to fingerprint"), file=sys.stderr)
        return subprocess.run([pg_dump, *argv]).returncode
    manifest_path(output).unlink(missing_ok=True)
    conninfo, kwargs = _connect_kwargs(opts, positional)
    try:
        conn = psycopg.connect(conninfo, autocommit=True, **kwargs)
    except psycopg.Error as exc:  # the dump is still taken, as the cron job expects; its manifest is not
        code = subprocess.run([pg_dump, *argv]).returncode
        print(f"drdrill dump: no manifest: cannot connect to read the snapshot: {str(exc).strip()}", file=sys.stderr)
        return code or NO_MANIFEST
    with conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        snapshot, consistent, version, dbname = conn.execute(
            "SELECT pg_export_snapshot(), now(), current_setting('server_version'), current_database()").fetchone()
        dump = subprocess.Popen([pg_dump, *argv, f"--snapshot={snapshot}"])
        try:  # while pg_dump reads the same snapshot
            leaves = _partitions(conn)
            fps = {t: table_manifest(conn, t) for t in list_tables(conn)}
        finally:
            code = dump.wait()
        conn.execute("ROLLBACK")
    if code != 0:
        return code
    fmt = _format(opts.get("--format", "p"))
    dumped = set(tables_in_dump(output, fmt))
    # A partitioned table's rows are dumped as its partitions' (list_tables names the parent).
    fps = {t: fp for t, fp in fps.items() if t in dumped or dumped & leaves.get(t, set())}
    digest, size = sha256_path(output)
    manifest = {
        "format": fmt, "archive": output.name, "archive_sha256": digest, "archive_size": size,
        "consistent_time": consistent.astimezone(timezone.utc).isoformat(), "server_version": version, "database": dbname,
        "tables": fps, "taken_with": "drdrill dump (pg_dump --snapshot)",
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


_PLAIN_DATA = re.compile(rb"^-- Data for Name: (.+?); Type: TABLE DATA; Schema: (.+?);", re.M)


def tables_in_dump(output: Path, fmt: str) -> list[str]:
    """schema.table of every TABLE DATA entry the dump holds (what a restore brings back)."""
    if fmt == "plain":
        opener = gzip.open if output.read_bytes()[:2] == b"\x1f\x8b" else open
        found = []
        with opener(output, "rb") as fh:  # type: ignore[operator]
            for line in fh:
                m = _PLAIN_DATA.match(line)
                if m:
                    found.append(f"{m.group(2).decode()}.{m.group(1).decode()}")
        return found
    proc = subprocess.run([_client("pg_restore"), "-l", str(output)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise DumpError(f"pg_restore -l {output} failed: {proc.stderr.strip()}")
    found = []
    for line in proc.stdout.splitlines():
        m = re.match(r"^\d+; \d+ \d+ TABLE DATA (\S+) (\S+) ", line)
        if m:
            found.append(f"{m.group(1)}.{m.group(2)}")
    return found


# ---------------------------------------------------------------- fingerprints by key range

_INT_PK = """
SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
WHERE i.indrelid = %s::regclass AND i.indisprimary AND i.indnkeyatts = 1 AND a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype)"""


def table_manifest(conn: psycopg.Connection, table: str) -> dict:
    """A table's rows and fingerprint, and with an integer primary key its key ranges' too, in one
    pass: the table's count and fingerprint are the sums of its ranges' (the same numbers
    `fingerprint` computes, so the check compares them as it does `drdrill backup`'s)."""
    key = conn.execute(_INT_PK, (table_ident(table).as_string(conn),)).fetchone()
    if key is None:
        return fingerprint(conn, table)
    lo, hi = conn.execute(sql.SQL("SELECT min({k}), max({k}) FROM {t}").format(k=sql.Identifier(key[0]), t=table_ident(table))).fetchone()
    estimate = conn.execute("SELECT reltuples FROM pg_class WHERE oid = %s::regclass", (table_ident(table).as_string(conn),)).fetchone()[0]
    if lo is None or (estimate if estimate >= 0 else int(hi) - int(lo) + 1) < 2 * RANGE_ROWS:
        return fingerprint(conn, table)
    count = max(1, min(RANGES, int(estimate if estimate >= 0 else int(hi) - int(lo) + 1) // RANGE_ROWS))
    width = max(1, -(-(int(hi) - int(lo) + 1) // count))
    try:
        with conn.transaction():
            method, ranges = "record", key_ranges(conn, table, key[0], int(lo), width, "record")
    except (psycopg.errors.UndefinedFunction, psycopg.errors.FeatureNotSupported):
        method, ranges = "text", key_ranges(conn, table, key[0], int(lo), width, "text")
    return {"rows": sum(r[0] for r in ranges.values()), "checksum": str(sum(int(r[1]) for r in ranges.values())), "method": method,
            "key": key[0], "lo": int(lo), "width": width, "ranges": ranges}


def main(argv: list[str]) -> int:
    """`drdrill dump ARGS…`: pg_dump's exit code; 2 for arguments it cannot take, 4 (or 3, see
    NO_MANIFEST) when the dump was written but its manifest could not be."""
    from drdrill.core.redact import redact

    try:
        return run_dump(argv)
    except (DumpError, OSError) as exc:
        print(f"drdrill dump: {redact(str(exc))}", file=sys.stderr)
        return 2
    except psycopg.Error as exc:  # never echo the DSN
        print(f"drdrill dump: the manifest could not be written: {redact(str(exc).strip())}", file=sys.stderr)
        return 4
