"""A backup is untrusted input (issue 21): what drdrill itself reads from one. Each test is an attack
or a defect as an adversary (or an unlucky team) would bring it: a plain dump carrying psql
meta-commands, a decompression bomb, an HTTP server that ignores Range or drips, an S3 object
replaced mid-drill, a `%` in a boundary query, a DSN injection, a secret under an unremarkable name.
Every drill runs through the real worker, Temporal and PostgreSQL (tests/conftest.py)."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pg_fixtures import cluster_root, clusters_left, shop_dsn, shop_repo  # noqa: F401
from tests.moto_server import moto_endpoint  # noqa: F401
from tests.test_dump_sources import bucket, codes, drill, dumps, place, run  # noqa: F401


def _inject(dump: Path, where: Path, line: str, after: bytes = b"SET row_security = off;\n") -> tuple[Path, int]:
    """The dump with `line` inserted after pg_dump's SET block; the line number it has there."""
    text = dump.read_bytes()
    at = text.index(after) + len(after)
    out = place(dump, where, with_sidecar=False)
    out.write_bytes(text[:at] + line.encode() + b"\n" + text[at:])
    return out, text[:at].count(b"\n") + 1


# ---------------------------------------------------------------- plain dumps: psql meta-commands


@pytest.mark.parametrize(
    "attack",
    [
        "\\! touch {marker}",
        "\\setenv PAGER 'touch {marker}'",
        "\\o |touch {marker}",
        "\\copy (SELECT 1) TO PROGRAM 'touch {marker}'",
        "SELECT 1 \\! touch {marker}",  # hidden after SQL on the same line: psql still runs it
        "SELECT 'x' AS \"y\" /* c */ \\echo `touch {marker}`",
    ],
)
def test_a_plain_dump_with_a_psql_meta_command_is_refused_before_psql_reads_it(drill_harness, dumps, tmp_path, cluster_root, attack):
    marker = tmp_path / "marker"
    _, lineno = _inject(dumps["plain"], tmp_path / "b", attack.format(marker=marker))
    result = run(drill_harness, drill(f"{{path: '{tmp_path}/b/*.sql'}}"))

    assert result.verdict == "FAILED"
    assert "DUMP_META_COMMAND" in codes(result), result.findings
    refused = next(f for f in result.findings if f.code == "DUMP_META_COMMAND")
    assert f"shop.sql line {lineno}:" in refused.message
    assert not marker.exists()  # psql never read the line
    assert clusters_left(cluster_root) == []


def test_a_meta_command_in_the_data_of_a_failing_copy_is_refused(drill_harness, dumps, tmp_path, cluster_root):
    """A COPY with a syntax error fails on the server, and psql then reads its data lines as commands."""
    marker = tmp_path / "marker"
    _inject(dumps["plain"], tmp_path / "b", f"COPY nosuch (a FROM stdin;\n\\N\tC:\\\\Users\n\\! touch {marker}\n\\.")
    result = run(drill_harness, drill(f"{{path: '{tmp_path}/b/*.sql'}}"))

    assert result.verdict == "FAILED"
    refused = next(f for f in result.findings if f.code == "DUMP_META_COMMAND")
    assert "if the COPY of line" in refused.message
    assert not marker.exists()


def test_a_meta_command_in_a_compressed_dump_is_refused(drill_harness, dumps, tmp_path, cluster_root):
    marker = tmp_path / "marker"
    f, _ = _inject(dumps["plain"], tmp_path / "b", f"\\! touch {marker}")
    gz = f.with_suffix(".sql.gz")
    gz.write_bytes(gzip.compress(f.read_bytes()))
    f.unlink()
    result = run(drill_harness, drill(f"{{path: '{tmp_path}/b/*.gz'}}"))

    assert "DUMP_META_COMMAND" in codes(result)
    assert not marker.exists()


def test_backslashes_inside_quotes_dollar_quotes_and_comments_and_a_connect_are_not_refused(drill_harness, dumps, tmp_path, cluster_root):
    """What psql does not read as a command is not refused: a function body, strings, comments, and
    the `\\connect` pg_dump writes."""
    benign = (
        "CREATE FUNCTION public.f() RETURNS text LANGUAGE sql AS $body$ SELECT '\\! touch {m}' $body$;\n"
        "SELECT E'\\\\! not a command', $$ \\o |touch {m} $$; -- \\! touch {m}\n"
        "/* \\! touch {m} */\n"
        "\\connect -reuse-previous=on \"dbname='shop'\""
    )
    marker = tmp_path / "marker"
    _inject(dumps["plain"], tmp_path / "b", benign.format(m=marker))
    result = run(drill_harness, drill(f"{{path: '{tmp_path}/b/*.sql'}}"))

    assert result.verdict == "PASSED", result.findings
    assert "DUMP_META_COMMAND" not in codes(result)
    assert not marker.exists()


def test_a_connect_elsewhere_is_refused(drill_harness, dumps, tmp_path, cluster_root):
    _inject(dumps["plain"], tmp_path / "b", "\\connect -reuse-previous=on \"dbname='shop' host=127.0.0.1 port=5432\"")
    result = run(drill_harness, drill(f"{{path: '{tmp_path}/b/*.sql'}}"))

    assert result.verdict == "FAILED"
    assert "DUMP_META_COMMAND" in codes(result)


def test_a_plain_dump_cut_after_a_row_holding_the_closing_marker_is_truncated(drill_harness, dumps, tmp_path, cluster_root):
    """pg_dump's closing comment must be the last line outside COPY data, not text in the last rows."""
    f, _ = _inject(dumps["plain"], tmp_path / "b", "CREATE TABLE public.notes (t text);")
    text = f.read_bytes()
    cut = text.index(b"ALTER TABLE ONLY")  # the primary keys and everything after them are lost
    f.write_bytes(text[:cut] + b"COPY public.notes (t) FROM stdin;\nhello\n--\n-- PostgreSQL database dump complete\n--\n\n")
    result = run(drill_harness, drill(f"{{path: '{tmp_path}/b/*.sql'}}"))

    assert result.verdict == "FAILED"
    assert "ARCHIVE_TRUNCATED" in codes(result), result.findings
    assert "it ends inside a table's COPY data" in next(f.message for f in result.findings if f.code == "ARCHIVE_TRUNCATED")


# ---------------------------------------------------------------- bounded inputs


def _bomb(path: Path, head: bytes, gib: float = 1.0) -> Path:
    """`head` then `gib` GiB of empty lines, zstd-compressed: a few dozen KiB on disk."""
    import zstandard

    cctx = zstandard.ZstdCompressor(level=3)
    with open(path, "wb") as fh, cctx.stream_writer(fh) as w:
        w.write(head)
        block = b"\n" * (64 << 20)
        for _ in range(int(gib * 16)):
            w.write(block)
    return path


_PEAK_RSS = """
import resource, sys
from drdrill.providers.postgres.dumpstores import PathStore
store = PathStore(sys.argv[1])
header = store.header(store.list()[0])
print(header.format or header.problem)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _sniff(path: Path) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", _PEAK_RSS, str(path)], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    what, rss_kib = out.stdout.strip().splitlines()
    return what, int(rss_kib)


def test_sniffing_a_zstd_bomb_does_not_decompress_it(dumps, tmp_path):
    head = dumps["plain"].read_bytes()[:2000]
    (tmp_path / "small").mkdir()
    (tmp_path / "bomb").mkdir()
    _bomb(tmp_path / "small" / "shop.sql.zst", head, gib=0)
    bomb = _bomb(tmp_path / "bomb" / "shop.sql.zst", head, gib=1)
    assert bomb.stat().st_size < 256 * 1024

    base_what, base_rss = _sniff(tmp_path / "small" / "*.zst")
    what, rss = _sniff(tmp_path / "bomb" / "*.zst")
    assert what == base_what == "plain"
    assert rss - base_rss < 64 * 1024  # KiB: a header's worth, not the gigabyte behind it


def test_restoring_a_zstd_bomb_stops_at_the_expansion_ratio(drill_harness, dumps, tmp_path, cluster_root):
    head = dumps["plain"].read_bytes()
    head = head[: head.index(b"SET row_security = off;\n")]
    (tmp_path / "b").mkdir()
    _bomb(tmp_path / "b" / "shop.sql.zst", head, gib=1)
    result = run(drill_harness, drill(f"{{path: '{tmp_path}/b/*.zst'}}"))

    assert result.verdict == "FAILED"
    assert "ARTEFACT_TOO_LARGE" in codes(result), result.findings
    assert "max_expansion_ratio" in next(f.message for f in result.findings if f.code == "ARTEFACT_TOO_LARGE")
    assert clusters_left(cluster_root) == []


def test_a_gzip_dump_larger_than_max_expanded_bytes_is_too_large(drill_harness, dumps, tmp_path, cluster_root):
    place(dumps["plain.gz"], tmp_path / "b", with_sidecar=False)
    text = drill(f"{{path: '{tmp_path}/b/*.gz'}}").replace("restore: {jobs: 2, timeout: 5m}", "restore: {jobs: 2, timeout: 5m, max_expanded_bytes: 4096}")
    result = run(drill_harness, text)

    assert result.verdict == "FAILED"
    assert "ARTEFACT_TOO_LARGE" in codes(result), result.findings


# ---------------------------------------------------------------- queries and DSNs


def test_a_percent_sign_in_a_boundary_query_is_sql_not_a_placeholder(drill_harness, dumps, tmp_path, cluster_root):
    place(dumps["custom"], tmp_path / "b")
    check = """  - {name: even, type: boundary, target: shop, max_gap: 30d,
     query: "SELECT created_at - interval '1 day' FROM orders WHERE id % 2 = 0 AND amount::text LIKE '%0'"}"""
    result = run(drill_harness, drill(f"{{path: '{tmp_path}/b/*.dump'}}", validations=check))

    boundary = next(v for v in result.validations if v.name == "even")
    assert boundary.outcome == "PASSED", boundary.detail
    assert result.verdict == "PASSED"


def test_a_database_name_cannot_point_the_restore_at_another_server(drill_harness, dumps, tmp_path, cluster_root):
    """`source.database` is a name: `host=`/`dbname=` in it must not reach a conninfo string, where
    they would send the restore to production (here: the system PostgreSQL on 127.0.0.1)."""
    import psycopg

    from tests.pg_fixtures import ADMIN_DSN

    def production_has_orders() -> bool:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            return conn.execute("SELECT to_regclass('public.orders') IS NOT NULL").fetchone()[0]

    assert not production_has_orders()
    place(dumps["custom"], tmp_path / "b")
    injected = "x dbname=postgres host=127.0.0.1 port=5432"
    result = run(drill_harness, drill(f"{{path: '{tmp_path}/b/*.dump', database: '{injected}'}}"))

    assert not production_has_orders()
    assert result.verdict == "PASSED", result.findings
    assert result.restored[0].endpoint["database"] == injected


# ---------------------------------------------------------------- an HTTP server that ignores Range


_URL_RSS = """
import resource, sys
from drdrill.providers.postgres.dumpstores import UrlStore
store = UrlStore("DUMP_URL")
a = store.list()[0]
head, tail = store.header(a), store.tail(a)
print(head.format, len(tail), tail[-20:].decode())
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_an_http_source_that_ignores_range_is_never_held_in_memory(dumps, tmp_path):
    import http.server
    import os
    import threading

    head = dumps["plain"].read_bytes()[:4000]
    filler = b"-- filler\n" * (1 << 16)  # 640 KiB
    sizes = {"/small.sql": 2 << 20, "/shop.sql": 256 << 20}

    class IgnoresRange(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - always the whole object, 200, whatever Range says
            size = sizes[self.path]
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            try:
                self.wfile.write(head)
                left = size - len(head) - 20
                while left > 0:
                    self.wfile.write(filler[: min(left, len(filler))])
                    left -= len(filler)
                self.wfile.write(b"-- the last 20 bytes".ljust(20)[:20])
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), IgnoresRange)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def sniff(path: str) -> tuple[str, int]:
        env = {**os.environ, "DUMP_URL": f"http://127.0.0.1:{server.server_port}{path}"}
        out = subprocess.run([sys.executable, "-c", _URL_RSS], capture_output=True, text=True, env=env, check=True,
                             cwd=Path(__file__).resolve().parent.parent)
        first, rss_kib = out.stdout.strip().splitlines()
        return first, int(rss_kib)

    try:
        (small, base), (big, rss) = sniff("/small.sql"), sniff("/shop.sql")
    finally:
        server.shutdown()
        server.server_close()
    assert small == big == "plain 4096 -- the last 20 bytes"
    assert rss - base < 64 * 1024, (base, rss)  # KiB: nothing like the 256 MiB object skipped through


# ---------------------------------------------------------------- recovery points that lie about their time


def test_a_name_time_that_matches_no_file_is_an_error_naming_the_pattern_and_a_file(drill_harness, dumps, tmp_path, cluster_root):
    place(dumps["custom"], tmp_path / "b", "shop-20261206T094723Z.dump")
    pattern = "{time:%Y%m%d-%H%M%S}"
    result = run(drill_harness, drill(f"{{path: '{tmp_path}/b/*.dump', name_time: '{pattern}'}}"))

    assert result.verdict == "FAILED"
    unmatched = next(f for f in result.findings if f.code == "NAME_TIME_UNMATCHED")
    assert pattern in unmatched.message and "shop-20261206T094723Z.dump" in unmatched.message


def test_a_recovery_point_newer_than_the_disaster_is_in_the_future_not_a_negative_rpo(drill_harness, dumps, tmp_path, cluster_root):
    from datetime import datetime, timedelta, timezone

    ahead = datetime.now(timezone.utc) + timedelta(hours=3)  # a zone mistake: local time read as UTC
    place(dumps["custom"], tmp_path / "b", f"shop-{ahead:%Y%m%dT%H%M%SZ}.dump")
    result = run(drill_harness, drill(f"{{path: '{tmp_path}/b/*.dump', name_time: 'shop-{{time:%Y%m%dT%H%M%SZ}}.dump'}}"))

    assert result.verdict == "FAILED"
    assert "RECOVERY_POINT_IN_FUTURE" in codes(result)
    rpo = next(o for o in result.objectives if o.name == "RPO")
    assert rpo.outcome != "PASSED" and (rpo.achieved_seconds is None or rpo.achieved_seconds >= 0)


def test_the_rpo_of_a_point_after_the_declared_moment_is_failed_not_negative():
    from datetime import datetime, timedelta, timezone

    from drdrill.core.judging import rpo
    from drdrill.core.models import RecoveryPoint

    declared = datetime(2026, 12, 6, 12, 0, tzinfo=timezone.utc)
    point = RecoveryPoint(target="shop", provider="postgres", id="p", consistent_time=declared + timedelta(minutes=15))
    result = rpo(timedelta(hours=1), declared, [point], [])

    assert result.outcome == "FAILED" and result.achieved_seconds is None
    assert "RECOVERY_POINT_IN_FUTURE" in result.detail


# ---------------------------------------------------------------- small ones (issue 23, item 17)


def test_a_directory_without_a_glob_says_a_glob_is_needed(drill_harness, dumps, tmp_path, cluster_root):
    place(dumps["custom"], tmp_path / "b")
    result = run(drill_harness, drill(f"{{path: '{tmp_path}/b'}}"))

    assert codes(result) == ["RECOVERY_POINT_NOT_FOUND"]
    assert f"a glob is needed: path: {tmp_path}/b/*.dump" in result.findings[0].message


def test_format_sql_lists_only_the_formats_of_dump_files():
    from drdrill.core.schema import SpecError
    from drdrill.providers.spec import parse_spec

    with pytest.raises(SpecError) as err:
        parse_spec(drill("{path: /b/*.sql, format: sql}"), "<t>")
    message = str(err.value)
    assert "plain" in message and "'base'" not in message and "base" not in message.split("allowed:")[-1]


# ---------------------------------------------------------------- a source that drips


def test_a_source_that_drips_ends_with_restore_stalled(drill_harness, dumps, tmp_path, cluster_root, monkeypatch):
    """Range reads (the header, the tail) come at once; the restore's stream sends its first bytes
    and then one byte at a time: a heartbeat alone would keep it alive for ever."""
    import http.server
    import threading

    body = dumps["plain"].read_bytes()
    stop = threading.Event()

    class Drips(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            rng = self.headers.get("Range")
            if rng:
                start, _, end = rng.removeprefix("bytes=").partition("-")
                start, end = int(start), min(int(end), len(body) - 1)
                self.send_response(206)
                self.send_header("Last-Modified", "Tue, 24 Nov 2026 02:00:00 GMT")
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(body)}")
                self.send_header("Content-Length", str(end - start + 1))
                self.end_headers()
                self.wfile.write(body[start : end + 1])
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(body[:1000])
                for b in body[1000:]:
                    if stop.wait(0.2):
                        return
                    self.wfile.write(bytes([b]))
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Drips)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("DRIP_URL", f"http://127.0.0.1:{server.server_port}/shop.sql")
    try:
        text = drill("{url_env: DRIP_URL}").replace("restore: {jobs: 2, timeout: 5m}", "restore: {jobs: 2, timeout: 5m, stall_after: 3s}")
        result = run(drill_harness, text)
    finally:
        stop.set()
        server.shutdown()
        server.server_close()

    assert result.verdict == "FAILED"
    assert "RESTORE_STALLED" in codes(result), result.findings
    assert "stall_after" in next(f.message for f in result.findings if f.code == "RESTORE_STALLED")
    assert clusters_left(cluster_root) == []


# ---------------------------------------------------------------- an S3 object replaced mid-drill


def test_an_s3_object_replaced_after_it_was_chosen_is_artefact_changed(drill_harness, dumps, moto_endpoint, bucket, cluster_root):
    """The recovery point is chosen, then (in the plan's pre-action, before the restore) someone
    replaces the object with another dump: the restore must not read the new content."""
    from tests.test_dump_sources import _s3, s3_source

    s3 = _s3(moto_endpoint)
    s3.put_object(Bucket=bucket, Key="shop/shop.dump", Body=dumps["custom"].read_bytes())
    replace = (
        "import boto3, sys; boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1')"
        ".put_object(Bucket=sys.argv[2], Key='shop/shop.dump', Body=open(sys.argv[3], 'rb').read())"
    )
    plan = (
        "plan:\n  - group: all\n    targets: [shop]\n    pre:\n"
        f"      - {{name: swap, env: [AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY], "
        f"argv: ['{sys.executable}', -c, \"{replace}\", '{moto_endpoint}', {bucket}, '{dumps['tar']}']}}\n"
    )
    result = run(drill_harness, drill(s3_source(moto_endpoint, bucket)) + plan)

    assert result.verdict == "FAILED"
    assert "ARTEFACT_CHANGED" in codes(result), result.findings
    assert result.restored == []


# ---------------------------------------------------------------- a drdrill repository's globals.sql


def test_a_meta_command_in_a_repositorys_globals_sql_is_refused(drill_harness, shop_repo, tmp_path, cluster_root):
    from drdrill.providers.postgres.provider import PostgresProvider
    from tests.test_postgres_drill import drill_yaml

    marker = tmp_path / "marker"
    planted = [g for g in shop_repo.rglob("globals.sql")]
    assert planted, "drdrill backup writes globals.sql"
    for g in planted:
        g.write_text(g.read_text() + f"\nSELECT 1 \\! touch {marker}\n")
    result = drill_harness.run(drill_yaml(shop_repo), providers={"postgres": PostgresProvider()})

    assert result.verdict == "FAILED"
    assert "DUMP_META_COMMAND" in codes(result), result.findings
    assert "globals.sql line" in next(f.message for f in result.findings if f.code == "DUMP_META_COMMAND")
    assert not marker.exists()
