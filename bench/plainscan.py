"""How fast drdrill reads a plain dump as psql would (drdrill/providers/postgres/plainscan.py): the
scanner runs in the pump thread beside psql, so its throughput bounds a plain restore's speed.

    .venv/bin/python -m bench.plainscan [MiB]

Builds a pg_dump-shaped plain dump in memory (one table of COPY rows with NULLs, quotes, escapes and
timestamps, plus SQL around it) and feeds it in 1 MiB chunks, as the pump does."""

from __future__ import annotations

import sys
import time

from drdrill.providers.postgres.plainscan import PlainDumpScanner


def dump(mib: int) -> bytes:
    head = b"--\n-- PostgreSQL database dump\n--\n\nSET standard_conforming_strings = on;\nCREATE TABLE public.t (id int, name text, at timestamptz);\n"
    rows = b"".join(b"%d\tcustomer \\\\%d O'Brien\t2026-12-06 13:50:57.966652+00\n" % (i, i) if i % 7 else b"%d\t\\N\t\\N\n" % i for i in range(10000))
    body = rows * max(1, (mib << 20) // len(rows))
    return head + b"COPY public.t (id, name, at) FROM stdin;\n" + body + b"\\.\n\nALTER TABLE ONLY public.t ADD CONSTRAINT t_pkey PRIMARY KEY (id);\n\n--\n-- PostgreSQL database dump complete\n--\n\n"


def main() -> None:
    mib = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    data = dump(mib)
    scanner = PlainDumpScanner("bench.sql")
    started = time.perf_counter()
    for i in range(0, len(data), 1 << 20):
        scanner.feed(data[i : i + (1 << 20)])
    scanner.finish()
    took = time.perf_counter() - started
    print(f"{len(data) / 2**20:.0f} MiB, {scanner.lineno} lines in {took:.2f} s: {len(data) / 2**20 / took:.0f} MiB/s ({scanner.complete() or 'complete'})")


if __name__ == "__main__":
    main()
