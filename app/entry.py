"""The `drdrill` command's entry point. `drdrill dump` (a cron job's pg_dump) starts without
importing the rest of drdrill (Temporal, the CLI): the dump pays only for pg_dump and its manifest."""

from __future__ import annotations

import sys


def main() -> int | None:
    args = sys.argv[1:]
    if args[:1] == ["dump"] and "--help" not in args[1:]:
        from drdrill.providers.postgres.dumpmanifest import main as dump

        return dump(args[1:])
    from app.cli import main as cli

    return cli()
