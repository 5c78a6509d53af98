"""The `drdrill` command's entry point. `drdrill dump` (a cron job's pg_dump) starts without
importing the rest of drdrill (Temporal, the CLI): the dump pays only for pg_dump and its manifest."""

from __future__ import annotations

import sys


def main() -> int | None:
    args = sys.argv[1:]
    if args[:1] == ["dump"] and "--help" not in args[1:]:
        return _dump(args[1:])
    from app.cli import main as cli

    return cli()


def _dump(argv: list[str]) -> int:
    """pg_dump starts in its exported snapshot first (drdrill.core.dumpstart: the standard library and
    the driver only); the manifest's code is imported while it runs."""
    import psycopg

    from drdrill.core.dumpstart import start

    try:
        started = start(argv, psycopg.connect, (psycopg.Error,))
    except psycopg.Error:
        started = None  # the snapshot could not be exported: dumpmanifest tries again and reports it
    from drdrill.providers.postgres.dumpmanifest import main as dump

    return dump(argv, started)
