"""The start of `drdrill dump`: read pg_dump's command line, export a snapshot, start pg_dump in it.

Kept to the standard library (the database driver is handed in) so that the `drdrill` command
starts the cron job's pg_dump before it imports the rest of drdrill: that import costs 0.5 s of
CPU (1–2 s on a loaded machine) and would otherwise delay the dump by as much. The manifest is
computed in the same snapshot while pg_dump runs (providers/postgres/dumpmanifest.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

MANIFEST_SUFFIX = ".manifest.json"  # `drdrill dump`'s sidecar (providers/postgres/artefacts.py reads it by this name)

# pg_dump's options that take a value (short, and long when not written --opt=value).
_SHORT_WITH_VALUE = set("dEfFhjnNpStTUZe")
_LONG_WITH_VALUE = {
    "--dbname", "--file", "--format", "--host", "--jobs", "--schema", "--exclude-schema", "--port", "--superuser", "--table",
    "--exclude-table", "--username", "--compress", "--encoding", "--extension", "--exclude-extension", "--exclude-table-data",
    "--lock-wait-timeout", "--role", "--section", "--snapshot", "--exclude-table-and-children", "--table-and-children",
    "--exclude-table-data-and-children", "--extra-float-digits", "--rows-per-insert", "--filter",
}
_LONG_OF = {"d": "--dbname", "f": "--file", "F": "--format", "h": "--host", "p": "--port", "U": "--username", "j": "--jobs"}

SNAPSHOT = "SELECT pg_export_snapshot(), now(), current_setting('server_version'), current_database()"


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


def connect_kwargs(opts: dict[str, str], positional: list[str]) -> tuple[str, dict[str, str]]:
    conninfo = opts.get("--dbname") or (positional[0] if positional else "")
    kwargs = {k: opts[o] for k, o in (("host", "--host"), ("port", "--port"), ("user", "--username")) if opts.get(o)}
    if conninfo and "=" not in conninfo and "://" not in conninfo:  # a bare database name
        kwargs["dbname"], conninfo = conninfo, ""
    return conninfo, kwargs


def output_of(opts: dict[str, str]) -> Optional[Path]:
    """The dump's file: --file, else standard output when it is a regular file (`pg_dump db > x.sql`)."""
    if opts.get("--file"):
        return Path(opts["--file"])
    try:
        if os.path.isfile(f"/proc/self/fd/{sys.stdout.fileno()}"):
            return Path(os.readlink(f"/proc/self/fd/{sys.stdout.fileno()}"))
    except (OSError, ValueError):
        pass
    return None


def no_manifest_reason(argv: list[str], opts: dict[str, str], output: Optional[Path]) -> Optional[str]:
    """Why this dump gets no manifest (pg_dump then runs alone), or None."""
    if output is None:
        return "the dump goes to a pipe, not a file (use -f FILE)"
    if any(o in opts for o in ("--schema-only", "-s")) or "-s" in argv:
        return "a schema-only dump holds no rows to fingerprint"
    return None


def manifest_path(output: Path) -> Path:
    return output.with_name(output.name + MANIFEST_SUFFIX)


@dataclass
class Started:
    """pg_dump running in the exported snapshot of `conn`'s open transaction (conn None: it could
    not connect, `error` says why, and pg_dump has not been started)."""

    argv: list[str]
    opts: dict[str, str]
    output: Path
    pg_dump: str
    conn: Any = None
    process: Optional[subprocess.Popen] = None
    consistent: Any = None
    version: str = ""
    dbname: str = ""
    error: str = ""
    snapshot: str = ""
    connect: Optional[Callable[[], Any]] = None  # another connection to the same database, as `conn`


def start(argv: list[str], connect: Callable[..., Any], errors: tuple[type[BaseException], ...], pg_dump: Optional[str] = None) -> Optional[Started]:
    """Start pg_dump with `argv` in a freshly exported snapshot (a stale manifest beside its file
    removed first). None when this dump gets no manifest, takes its own --snapshot, or no pg_dump
    is on PATH: the caller handles those (dumpmanifest.run_dump)."""
    opts, positional = parse_args(argv)
    output = output_of(opts)
    pg_dump = pg_dump or shutil.which("pg_dump")
    if "--snapshot" in opts or no_manifest_reason(argv, opts, output) is not None or pg_dump is None or output is None:
        return None
    manifest_path(output).unlink(missing_ok=True)
    started = Started(argv=argv, opts=opts, output=output, pg_dump=pg_dump)
    conninfo, kwargs = connect_kwargs(opts, positional)
    try:
        started.conn = connect(conninfo, autocommit=True, **kwargs)
    except errors as exc:  # the dump is still taken, as the cron job expects; its manifest is not
        started.error = str(exc).strip()
        return started
    try:
        started.conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        started.snapshot, started.consistent, started.version, started.dbname = started.conn.execute(SNAPSHOT).fetchone()
    except BaseException:
        started.conn.close()
        raise
    started.process = subprocess.Popen([pg_dump, *argv, f"--snapshot={started.snapshot}"])
    started.connect = lambda: connect(conninfo, autocommit=True, **kwargs)
    return started
