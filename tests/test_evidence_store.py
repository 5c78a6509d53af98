"""The evidence store against the real PostgreSQL: a real drill's evidence round-trips, and any
altered, deleted or inserted row is found by verify, which names it."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import psycopg
import pytest
import typer
from typer.testing import CliRunner

from app.cli_evidence import register
from drdrill.evidence.chain import evidence_document, result_from_document, verify_document
from drdrill.evidence.record import record_run
from drdrill.evidence.store import SCHEMA, SCHEMA_VERSION, EvidenceStore, StorePool, open_store
from drdrill.providers.postgres.provider import PostgresProvider
from tests.evidence_fixtures import ADMIN_DSN, sample_result
from tests.moto_server import moto_endpoint  # noqa: F401
from tests.pg_fixtures import cluster_root, shop_dsn, shop_repo  # noqa: F401
from tests.test_postgres_drill import drill_yaml
from tests.test_reports import page_text


# What `drdrill evidence export` writes (docs/evidence.md): the run, its signed log entry, the anchored head.
BUNDLE = sorted(["SHA256SUMS", "evidence.json", "junit.xml", "report.html", "log.jsonl", "anchor.json",
                 "entry.payload", "entry.sig", "entry-key.pem", "head.payload", "head.sig", "head-key.pem"])


@pytest.fixture(autouse=True)
def cli_state(tmp_path, monkeypatch):
    """The CLI's state directory is the one the runs of these tests are recorded from (its key signs them)."""
    monkeypatch.setenv("DRDRILL_STATE_DIR", str(tmp_path))


@pytest.fixture
def store(evidence_store_dsn):
    with open_store(evidence_store_dsn) as s:
        yield s


def cli(*args: str):
    app = typer.Typer()
    register(app)
    return CliRunner().invoke(app, list(args))


def test_a_real_drill_is_stored_once_round_trips_and_renders(drill_harness, shop_repo, cluster_root, store, tmp_path):
    result = drill_harness.run(drill_yaml(shop_repo, name="evidence-drill"), providers={"postgres": PostgresProvider()})
    assert result.verdict == "PASSED", result.findings

    stored = store.load(result.drill_id)
    # Round trip: what the store gives back is the (redacted) result the workflow returned.
    assert result_from_document(stored) == result_from_document(evidence_document(result))
    assert stored["drdrill_version"] and stored["spec_sha256"] == result.spec_sha256 and stored["started_by"] == "test"
    assert [e["kind"] for e in stored["events"]].count("validation") == 4
    # The file beside it is the same document, and verifies on its own.
    on_disk = json.loads(Path(result.evidence_path).read_text())
    assert on_disk["chain_head"] == stored["chain_head"] and verify_document(on_disk)[0]
    (check,) = store.verify(result.drill_id)
    assert check.ok, check.message

    # record_evidence may be retried: nothing is duplicated.
    record_run(drill_harness.state_dir, result)
    with psycopg.connect(store.conn.info.dsn) as conn:
        n = conn.execute(f"SELECT count(*) FROM {SCHEMA}.events WHERE drill_id = %s", (result.drill_id,)).fetchone()[0]
        runs = conn.execute(f"SELECT count(*) FROM {SCHEMA}.runs WHERE drill_id = %s", (result.drill_id,)).fetchone()[0]
    assert (runs, n) == (1, len(stored["events"]))

    # The report a person opens: verdict, RTO, RPO and every check.
    text = page_text(Path(result.evidence_path).with_name("report.html").read_text())
    assert "PASSED" in text and stored["chain_head"] in text
    for o in result.objectives:
        assert f"{o.name} " in text
    for v in result.validations:
        assert v.name in text
    junit = ET.parse(Path(result.evidence_path).with_name("junit.xml")).getroot()
    assert len(junit.findall(".//testcase")) == 4 + 2 and junit.get("failures") == "0"

    # Export: the bundle with SHA256SUMS.
    out = tmp_path / "bundle"
    res = cli("evidence", "export", result.drill_id, "--out", str(out))
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == BUNDLE
    assert len((out / "SHA256SUMS").read_text().splitlines()) == len(BUNDLE) - 1


def _tamper(store: EvidenceStore, *sql: tuple) -> None:
    """Change the store behind drdrill's back, as a database owner could (triggers disabled)."""
    with psycopg.connect(store.conn.info.dsn, autocommit=False) as conn:
        conn.execute("SET session_replication_role = replica")
        for stmt in sql:
            conn.execute(*stmt) if isinstance(stmt, tuple) else conn.execute(stmt)
        conn.commit()


def _row(store, run, seq):
    return store.conn.execute(f"SELECT kind, body, prev_hash, hash FROM {SCHEMA}.events WHERE drill_id = %s AND seq = %s", (run, seq)).fetchone()


def _recorded(store, tmp_path) -> str:
    result = sample_result("tamper")
    record_run(tmp_path, result, dsn=store.conn.info.dsn)
    assert store.verify(result.drill_id)[0].ok
    return result.drill_id


E = f"{SCHEMA}.events"


def _alter_content(store, run):
    _tamper(store, (f"UPDATE {E} SET body = replace(body, 'restore done', 'restore done quickly') WHERE drill_id = %s AND seq = 4", (run,)))
    return "event 4 (restore): content altered"


def _alter_and_rehash(store, run):
    from drdrill.evidence.chain import row_hash

    kind, body, prev, _ = _row(store, run, 4)
    content = json.loads(body)
    content["outcome"] = "PASSED"
    content["detail"] = "forged"
    new = row_hash(run, 4, kind, content, prev)
    _tamper(store, (f"UPDATE {E} SET body = %s, hash = %s WHERE drill_id = %s AND seq = 4", (json.dumps(content), new, run)))
    return "event 4 (restore): content altered"


def _delete_middle(store, run):
    _tamper(store, (f"DELETE FROM {E} WHERE drill_id = %s AND seq = 3", (run,)))
    return "event 3 missing"


def _delete_and_renumber(store, run):
    _tamper(store, (f"DELETE FROM {E} WHERE drill_id = %s AND seq = 3", (run,)), (f"UPDATE {E} SET seq = seq - 1 WHERE drill_id = %s AND seq > 3", (run,)))
    return "event 3 missing"


def _delete_last(store, run):
    _tamper(store, (f"DELETE FROM {E} WHERE drill_id = %s AND seq = (SELECT max(seq) FROM {E} WHERE drill_id = %s)", (run, run)))
    return "event 10 missing"


def _insert_duplicate(store, run):
    kind, body, prev, digest = _row(store, run, 2)
    _tamper(store, (f"INSERT INTO {E} (drill_id, seq, kind, body, prev_hash, hash) VALUES (%s, 2, %s, %s, %s, %s)", (run, kind, body.replace("done", "redone"), prev, digest)))
    return "event inserted after 2"


def _insert_chained_and_renumber(store, run):
    from drdrill.evidence.chain import row_hash

    _, _, _, h2 = _row(store, run, 2)
    content = {"phase": "restore", "outcome": "PASSED", "detail": "forged", "started": None, "ended": None, "target": None, "data": {}}
    _tamper(
        store,
        (f"UPDATE {E} SET seq = seq + 1 WHERE drill_id = %s AND seq > 2", (run,)),
        (f"INSERT INTO {E} (drill_id, seq, kind, body, prev_hash, hash) VALUES (%s, 3, 'timeline', %s, %s, %s)",
         (run, json.dumps(content), h2, row_hash(run, 3, "timeline", content, h2))),
    )
    return "event inserted after 2"


def _append(store, run):
    from drdrill.evidence.chain import row_hash

    last = store.conn.execute(f"SELECT max(seq) FROM {E} WHERE drill_id = %s", (run,)).fetchone()[0]
    _, _, _, head = _row(store, run, last)
    content = {"code": "ALL_GOOD", "message": "forged", "severity": "info"}
    _tamper(store, (f"INSERT INTO {E} (drill_id, seq, kind, body, prev_hash, hash) VALUES (%s, %s, 'finding', %s, %s, %s)",
                    (run, last + 1, json.dumps(content), head, row_hash(run, last + 1, "finding", content, head))))
    return f"event inserted after {last}"


def _alter_final_record(store, run):
    _tamper(store, (f"UPDATE {SCHEMA}.runs SET record = replace(record, '\"verdict\":\"PASSED\"', '\"verdict\":\"FAILED\"'), verdict = 'FAILED' WHERE drill_id = %s", (run,)))
    return "final record: content altered"


def _delete_final_record(store, run):
    _tamper(store, (f"DELETE FROM {SCHEMA}.runs WHERE drill_id = %s", (run,)))
    return "final record missing"


@pytest.mark.parametrize(
    "tamper",
    [_alter_content, _alter_and_rehash, _delete_middle, _delete_and_renumber, _delete_last, _insert_duplicate,
     _insert_chained_and_renumber, _append, _alter_final_record, _delete_final_record],
    ids=lambda f: f.__name__.strip("_"),
)
def test_verify_names_the_first_altered_deleted_or_inserted_row(store, tmp_path, tamper):
    run = _recorded(store, tmp_path)
    expected = tamper(store, run)
    (result,) = store.verify(run)
    assert not result.ok
    assert result.message == f"run {run} {expected}" or result.message.startswith(f"run {run} {expected}"), result.message
    # The CLI says the same and fails.
    res = cli("evidence", "verify", run)
    assert res.exit_code == 1 and f"run {run} {expected}" in res.output, res.output


def test_the_store_is_append_only_and_untouched_runs_still_verify(store, tmp_path):
    run = _recorded(store, tmp_path)
    with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
        store.conn.execute(f"UPDATE {E} SET body = '{{}}' WHERE drill_id = %s", (run,))
    with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
        store.conn.execute(f"DELETE FROM {SCHEMA}.runs WHERE drill_id = %s", (run,))
    res = cli("evidence", "verify", run)
    assert res.exit_code == 0 and f"run {run}: 11 events intact" in res.output, res.output


def test_a_pool_reuses_a_connection_and_never_one_that_failed_or_that_the_server_ended(evidence_store_dsn):
    """StorePool (a worker's evidence connections, kept between activities): a connection is used
    again; one whose use raised is closed, not kept; one the server ended while idle is replaced."""
    assert evidence_store_dsn, "no PostgreSQL to test against"
    pool = StorePool(keep=1)
    with pool.open(evidence_store_dsn) as first:
        pass
    with pool.open(evidence_store_dsn) as again:
        assert again is first
    with pytest.raises(RuntimeError), pool.open(evidence_store_dsn) as failing:
        raise RuntimeError("the activity failed")
    assert failing is first and first.conn.closed
    with pool.open(evidence_store_dsn) as fresh:
        assert fresh is not first
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (fresh.conn.info.backend_pid,))
    with pool.open(evidence_store_dsn) as replaced:
        assert replaced is not fresh and replaced.conn.execute("SELECT 1").fetchone() == (1,)
    pool.close()
    assert replaced.conn.closed


def test_schema_is_created_and_migrated_by_version():
    import uuid

    name = f"drdrill_migrate_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = ADMIN_DSN.replace("dbname=postgres", f"dbname={name}")
    try:
        from drdrill.evidence import store as evidence_store

        # An older drdrill created version 1 only ...
        s = EvidenceStore(dsn)
        saved = evidence_store.MIGRATIONS[:]
        evidence_store.MIGRATIONS[:] = saved[:1]
        try:
            evidence_store.SCHEMA_VERSION, v = 1, evidence_store.SCHEMA_VERSION
            assert s.migrate() == 1
        finally:
            evidence_store.MIGRATIONS[:] = saved
            evidence_store.SCHEMA_VERSION = v
        # ... this one brings it to the current version, once.
        assert s.version() == 1 and s.migrate() == SCHEMA_VERSION and s.migrate() == SCHEMA_VERSION
        versions = [r[0] for r in s.conn.execute(f"SELECT version FROM {SCHEMA}.schema_version ORDER BY 1").fetchall()]
        assert versions == list(range(1, SCHEMA_VERSION + 1))
        s.close()
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_export_copies_the_bundle_to_an_object_lock_bucket(store, tmp_path, moto_endpoint):
    import boto3

    result = sample_result("locked")
    record_run(tmp_path, result, dsn=store.conn.info.dsn)
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="drdrill-evidence", ObjectLockEnabledForBucket=True)
    res = cli("evidence", "export", result.drill_id, "--out", str(tmp_path / "b"), "--s3-bucket", "drdrill-evidence")
    assert res.exit_code == 0, res.output
    head = s3.head_object(Bucket="drdrill-evidence", Key=f"drdrill/{result.drill_id}/evidence.json")
    assert head["ObjectLockMode"] == "COMPLIANCE"
    # retention from the spec (1y) counted from the end of the run
    assert (head["ObjectLockRetainUntilDate"] - result.ended).days in (364, 365, 366)
    keys = sorted(o["Key"].rsplit("/", 1)[1] for o in s3.list_objects_v2(Bucket="drdrill-evidence")["Contents"])
    assert keys == BUNDLE
