"""Secrets never reach evidence: not the files, not the report, not the evidence store."""

from __future__ import annotations

import pytest
import psycopg

from drdrill.evidence.record import record_run
from drdrill.evidence.store import SCHEMA
from drdrill.core.redact import redact, redact_obj
from tests.evidence_fixtures import sample_result

SECRETS = {
    "libpq password": ("host=db.internal port=5432 user=app password=Hunter2-libpq dbname=shop", "Hunter2-libpq"),
    "quoted libpq password": ("host=db user=app password='Quoted Pass 9' dbname=shop", "Quoted Pass 9"),
    "URL DSN": ("postgresql://app:S3cretUrlPw@db.internal:5432/shop", "S3cretUrlPw"),
    "DSN from the environment": ("connecting with host=envdb user=svc sslkey=EnvDsnValue77", "EnvDsnValue77"),
    "AWS access key id": ("credentials AKIAIOSFODNN7EXAMPLE in use", "AKIAIOSFODNN7EXAMPLE"),
    "AWS secret from the environment": ("aws said wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY", "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"),
    "bearer token": ("Authorization: Bearer abcDEF123456ghiJKL789", "abcDEF123456ghiJKL789"),
    "GitHub token": ("token ghp_ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", "ghp_ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"),
    "JWT": ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"),
    "password in JSON": ('{"user": "app", "password": "JsonPw-4431"}', "JsonPw-4431"),
    "S3 presigned URL signature": (
        "https://bucket.s3.amazonaws.com/dump?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=ASIAXEXAMPLE1234567%2F20261124&"
        "X-Amz-Security-Token=FQoGZXIvYXdzSessionTok&X-Amz-Signature=9f86d081884c7d659a2feaa0c55ad015", "9f86d081884c7d659a2feaa0c55ad015"),
    "S3 presigned URL session token": ("https://b.s3.amazonaws.com/k?X-Amz-Security-Token=FQoGZXIvYXdzSessionTok2&X-Amz-Signature=abc123",
                                       "FQoGZXIvYXdzSessionTok2"),
    "GCS signed URL": ("https://storage.googleapis.com/b/o?X-Goog-Algorithm=GOOG4&X-Goog-Signature=a1b2c3d4e5f6GoogSig", "a1b2c3d4e5f6GoogSig"),
    "Azure SAS": ("https://acct.blob.core.windows.net/c/b?sv=2022-11-02&sp=r&sig=AzureSasSig%2Babc%3D", "AzureSasSig%2Babc%3D"),
    "Azure connection string": ("DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=AzAccountKey0123==;EndpointSuffix=core.windows.net",
                                "AzAccountKey0123=="),
    "Slack webhook": ("posted to https://hooks.slack.com/services/T000/B000/XXXXSlackHook", "XXXXSlackHook"),
    "private key": ("-----BEGIN RSA PRIVATE KEY-----\nMIIEowPrivKeyBody\n-----END RSA PRIVATE KEY-----", "MIIEowPrivKeyBody"),
}


@pytest.fixture
def secret_env(monkeypatch):
    monkeypatch.setenv("ORDERS_DB_DSN", "host=envdb user=svc sslkey=EnvDsnValue77")
    monkeypatch.setenv("EnvDsnValue77_unused", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY")


@pytest.mark.parametrize("kind", list(SECRETS))
def test_redact_masks_every_kind(kind, secret_env):
    text, secret = SECRETS[kind]
    assert secret in text
    assert secret not in redact(text)
    assert secret not in str(redact_obj({"detail": text, "nested": [text, {"dsn": text}]}))


def test_structured_secret_fields_are_masked_whole_and_hashes_are_kept():
    out = redact_obj({"endpoint": {"dsn": "host=/tmp/x user=drdrill dbname=shop", "database": "shop"}, "api_token": "zzz",
                      "chain_head": "ab" * 32, "spec_sha256": "cd" * 32, "dsn_env": "DEMO_SHOP_DSN"})
    assert out["endpoint"] == {"dsn": "***", "database": "shop"} and out["api_token"] == "***"
    assert out["chain_head"] == "ab" * 32 and out["spec_sha256"] == "cd" * 32 and out["dsn_env"] == "DEMO_SHOP_DSN"


def test_no_secret_reaches_the_files_the_report_or_the_store(secret_env, evidence_store_dsn, tmp_path):
    everything = " | ".join(text for text, _ in SECRETS.values())
    result = sample_result("secrets", secret=everything)
    path = record_run(tmp_path, result, dsn=evidence_store_dsn)
    run_dir = path.rsplit("/", 1)[0]
    written = {name: open(f"{run_dir}/{name}").read() for name in ("evidence.json", "report.html", "junit.xml")}
    with psycopg.connect(evidence_store_dsn) as conn:
        stored = conn.execute(
            f"SELECT r.record || string_agg(e.body, ' ') FROM {SCHEMA}.runs r JOIN {SCHEMA}.events e USING (drill_id) "
            "WHERE r.drill_id = %s GROUP BY r.record", (result.drill_id,)
        ).fetchone()[0]
    written["store"] = stored
    for kind, (_, secret) in SECRETS.items():
        for where, text in written.items():
            assert secret not in text, f"{kind} reached {where}"
    assert "***" in written["report.html"] and "***" in stored


def test_an_http_checks_own_expected_text_is_not_masked_but_what_the_service_says_is(tmp_path):
    """Issue 23 item 17: `containing 'token=abc'` is the drill file's own text, shown as written;
    a secret the service answers with is still masked."""
    import http.server
    import threading

    from datetime import datetime, timezone

    from drdrill.core.validations import HttpValidation
    from drdrill.providers.activity_io import ValidateInput
    from drdrill.validation.run import run_validation

    class Answers(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ready token=abc")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        check = HttpValidation(type="http", name="ready", url=f"http://127.0.0.1:{server.server_port}/?token=s3cr3tQueryTok", contains="token=abc")
        inp = ValidateInput(name="ready", validation=check, declared=datetime.now(timezone.utc), rpo_objective_seconds=3600)
        result = run_validation(inp)
    finally:
        server.shutdown()
        server.server_close()
    assert result.outcome == "PASSED", result.detail
    assert "containing 'token=abc'" in result.detail
    assert "s3cr3tQueryTok" not in result.detail
