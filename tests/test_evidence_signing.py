"""Signed, chained, anchored evidence (docs/evidence.md), one test per hole an insider could use:
each changes the store or the files behind drdrill's back, as a database owner or a local user
could, and `drdrill evidence …` (the real command, in a subprocess) names what changed and fails."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest

from drdrill.evidence.chain import GENESIS, canonical, evidence_document, sha256, split_record
from drdrill.evidence.ledger import sign_entry
from drdrill.evidence.record import record_run
from drdrill.evidence.signing import FileSigner, fingerprint
from drdrill.evidence.store import SCHEMA, EvidenceConflict, open_store
from tests.azure_keyvault_fake import KeyVaultFake, bin_with_az
from tests.gcp_kms_fake import CloudKmsFake
from tests.evidence_fixtures import ADMIN_DSN, sample_result
from tests.moto_server import moto_endpoint  # noqa: F401
from tests.sim_harness import cli_env

DRDRILL = str(Path(sys.executable).parent / "drdrill")
DOC = Path(__file__).resolve().parent.parent / "docs" / "evidence.md"


class Ledger:
    """A fresh evidence store (its own database) and a state directory whose key signs its runs."""

    def __init__(self, dsn: str, state: Path):
        self.dsn, self.state = dsn, state
        self.env = cli_env(DRDRILL_STATE_DIR=str(state), DRDRILL_EVIDENCE_DSN=dsn)

    def record(self, name: str, verdict: str = "PASSED"):
        result = sample_result(name, verdict=verdict)
        record_run(self.state, result, dsn=self.dsn)  # what the record_evidence activity does
        return result

    def drdrill(self, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([DRDRILL, *args], capture_output=True, text=True, env=env or self.env, timeout=240)

    def tamper(self, *statements: tuple) -> None:
        """Change the store as its owner could: triggers disabled."""
        with psycopg.connect(self.dsn) as conn:
            conn.execute("SET session_replication_role = replica")
            for sql, args in statements:
                conn.execute(sql, args)

    def delete_run(self, drill_id: str) -> None:
        self.tamper(*[(f"DELETE FROM {SCHEMA}.{t} WHERE drill_id = %s", (drill_id,)) for t in ("log", "events", "runs")])


@pytest.fixture
def ledger(tmp_path):
    name = f"drdrill_signing_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield Ledger(ADMIN_DSN.replace("dbname=postgres", f"dbname={name}"), tmp_path / "state")
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def broken(proc: subprocess.CompletedProcess, expected: str) -> None:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert expected in proc.stdout, proc.stdout + proc.stderr


def forge(ledger: Ledger, result, **changes) -> dict:
    """The run rewritten and every hash recomputed (events, chain head, record hash), in the store
    and in runs/<id>/evidence.json: all a forger without the key can do."""
    doc = evidence_document(result.model_copy(update=changes))
    ledger.tamper(
        (f"DELETE FROM {SCHEMA}.events WHERE drill_id = %s", (result.drill_id,)),
        (f"UPDATE {SCHEMA}.runs SET verdict = %s, record = %s, record_hash = %s, chain_head = %s WHERE drill_id = %s",
         (doc["verdict"], canonical(split_record(doc)), doc["record_hash"], doc["chain_head"], result.drill_id)),
        *[(f"INSERT INTO {SCHEMA}.events (drill_id, seq, kind, body, prev_hash, hash) VALUES (%s, %s, %s, %s, %s, %s)",
           (result.drill_id, e["seq"], e["kind"], canonical(e["content"]), e["prev_hash"], e["hash"]))
          for e in doc["events"]],
    )
    path = ledger.state / "runs" / result.drill_id / "evidence.json"
    doc["log_entry"] = json.loads(path.read_text())["log_entry"]
    path.write_text(json.dumps(doc, indent=2, sort_keys=True))
    return doc


def test_a_run_rewritten_with_every_hash_recomputed_is_named(ledger):
    first = ledger.record("honest")
    forged = ledger.record("unverified", verdict="COULD_NOT_VERIFY")
    assert ledger.drdrill("evidence", "verify").returncode == 0

    doc = forge(ledger, forged, verdict="PASSED")
    out = ledger.drdrill("evidence", "verify")
    # Each run's own chain is consistent again: only the signed log shows the rewrite.
    assert f"ok       run {forged.drill_id}: 11 events intact" in out.stdout
    broken(out, f"BROKEN   log entry 1 (run {forged.drill_id}): the stored run differs from the signed entry")
    assert "verdict PASSED stored, COULD_NOT_VERIFY signed" in out.stdout
    assert first.drill_id not in out.stdout.split("BROKEN")[1]

    # Rewriting the log entry too (its record hash and its hash) breaks its signature.
    with psycopg.connect(ledger.dsn) as conn:
        entry = json.loads(conn.execute(f"SELECT entry FROM {SCHEMA}.log WHERE seq = 1").fetchone()[0])
    entry.update(record_hash=doc["record_hash"], verdict="PASSED")
    text = canonical(entry)
    ledger.tamper((f"UPDATE {SCHEMA}.log SET entry = %s, hash = %s WHERE seq = 1", (text, sha256(text))))
    broken(ledger.drdrill("evidence", "verify"), f"log entry 1 (run {forged.drill_id}): the signature does not verify")
    broken(ledger.drdrill("evidence", "verify", forged.drill_id), f"log entry 1 (run {forged.drill_id}): the signature does not verify")


def test_a_deleted_run_leaves_a_named_gap(ledger):
    runs = [ledger.record(f"run{i}") for i in range(3)]
    ledger.delete_run(runs[1].drill_id)
    out = ledger.drdrill("evidence", "verify")
    broken(out, f"BROKEN   log entry 1 missing: entry 2 (run {runs[2].drill_id}) follows entry 0 (a run was deleted)")
    # Its evidence.json is still on disk, and names the run the store lost.
    assert f"run {runs[1].drill_id}: " in out.stdout and "is not in the evidence store" in out.stdout
    assert "NOT INTACT: 2/2 runs' own hash chains verify; 2 broken link(s)" in out.stdout  # before, it said "2/2 runs intact"

    # A store emptied of every run is not "a store with no runs" while their files say otherwise.
    for run in (runs[0], runs[2]):
        ledger.delete_run(run.drill_id)
    out = ledger.drdrill("evidence", "verify")
    broken(out, f"TAMPERED run {runs[2].drill_id}: ")
    assert "holds no runs" not in out.stdout and out.stdout.count("is not in the evidence store") == 3, out.stdout


def test_reordered_runs_are_named(ledger):
    a, b = ledger.record("first"), ledger.record("second")
    ledger.tamper((f"UPDATE {SCHEMA}.log SET seq = 100 WHERE seq = 0", ()), (f"UPDATE {SCHEMA}.log SET seq = 0 WHERE seq = 1", ()),
                  (f"UPDATE {SCHEMA}.log SET seq = 1 WHERE seq = 100", ()))
    broken(ledger.drdrill("evidence", "verify"), f"BROKEN   log entry 0 (run {b.drill_id}): signed as entry 1 of run {b.drill_id} (entries moved or reordered)")
    assert a.drill_id


def test_an_edited_evidence_json_on_disk_is_named(ledger):
    result = ledger.record("on-disk", verdict="FAILED")
    path = ledger.state / "runs" / result.drill_id / "evidence.json"
    path.write_text(path.read_text().replace('"verdict": "FAILED"', '"verdict": "PASSED"'))
    expected = f"run {result.drill_id}: {path} differs from the store: verdict is \"PASSED\" on disk, \"FAILED\" in the store"
    broken(ledger.drdrill("evidence", "verify"), expected)
    broken(ledger.drdrill("evidence", "verify", result.drill_id), expected)


def test_import_refuses_unsigned_and_foreign_signed_evidence(ledger, tmp_path):
    unsigned = evidence_document(sample_result("unsigned"))  # self-consistent: its chain verifies
    foreign = evidence_document(sample_result("foreign"))
    stranger = FileSigner(tmp_path / "elsewhere" / "evidence-signing-key.pem")
    foreign["log_entry"] = sign_entry(stranger, 0, GENESIS, foreign)
    files = tmp_path / "incoming"
    for doc in (unsigned, foreign):
        (files / doc["drill_id"]).mkdir(parents=True)
        (files / doc["drill_id"] / "evidence.json").write_text(json.dumps(doc))

    out = ledger.drdrill("evidence", "import", str(files))
    assert out.returncode == 1 and "0 runs stored, 0 already there, 2 refused" in out.stdout, out.stdout + out.stderr
    assert f"{unsigned['drill_id']}/evidence.json: not imported: not signed" in out.stderr
    assert f"signed by {fingerprint(stranger.public_key)}, which is not a trusted key" in out.stderr

    # Its own signature is checked for exactly this record: a changed verdict is refused even with the key trusted.
    key = tmp_path / "stranger.pub"
    key.write_text(stranger.public_key + "\n")
    altered = files / foreign["drill_id"] / "evidence.json"
    good = altered.read_text()
    altered.write_text(good.replace('"verdict": "PASSED"', '"verdict": "FAILED"'))
    out = ledger.drdrill("evidence", "import", str(altered), "--trust", str(key))
    assert out.returncode == 1 and "not imported: run" in out.stderr and "final record: content altered" in out.stderr, out.stderr
    altered.write_text(good)
    out = ledger.drdrill("evidence", "import", str(altered), "--trust", str(key))
    assert out.returncode == 0 and "1 runs stored" in out.stdout, out.stdout + out.stderr
    verified = ledger.drdrill("evidence", "verify")
    assert verified.returncode == 0 and "1/1 runs intact" in verified.stdout, verified.stdout


def test_a_second_different_record_for_a_drill_id_is_refused(ledger):
    result = ledger.record("once", verdict="COULD_NOT_VERIFY")
    path = ledger.state / "runs" / result.drill_id / "evidence.json"
    before = path.read_text()
    record_run(ledger.state, result, dsn=ledger.dsn)  # an identical retry (activities are retried): fine
    with pytest.raises(EvidenceConflict, match=f"run {result.drill_id} is already in the evidence store with a different record"):
        record_run(ledger.state, result.model_copy(update={"verdict": "PASSED"}), dsn=ledger.dsn)
    assert path.read_text() == before
    with open_store(ledger.dsn) as store:
        assert store.load(result.drill_id)["verdict"] == "COULD_NOT_VERIFY"
    assert ledger.drdrill("evidence", "verify").returncode == 0


def test_verify_against_a_bundle_catches_runs_deleted_up_to_its_head(ledger, tmp_path):
    a, b = ledger.record("anchored-a"), ledger.record("anchored-b")
    bundle = tmp_path / "bundle"
    out = ledger.drdrill("evidence", "export", a.drill_id, "--out", str(bundle))
    assert out.returncode == 0 and "anchored head: log entry 1 " in out.stdout, out.stdout + out.stderr
    later = ledger.record("after-the-export")
    ok = ledger.drdrill("evidence", "verify", "--against", str(bundle))
    assert ok.returncode == 0 and "nothing at or before the anchored head (entry 1, " in ok.stdout, ok.stdout + ok.stderr

    # Delete the two newest runs with their log entries and their files: the shorter log is
    # consistent on its own, and only the anchor shows what is gone.
    for run in (b, later):
        ledger.delete_run(run.drill_id)
        (ledger.state / "runs" / run.drill_id / "evidence.json").unlink()
    assert ledger.drdrill("evidence", "verify").returncode == 0
    gone = f"BROKEN   log entry 1 (run {b.drill_id}) missing: the anchored head is entry 1, the log ends at entry 0 (runs were deleted)"
    broken(ledger.drdrill("evidence", "verify", "--against", str(bundle)), gone)
    broken(ledger.drdrill("evidence", "verify", a.drill_id, "--against", str(bundle / "anchor.json")), gone)


def test_the_key_is_a_private_file_in_the_state_directory_and_is_published(ledger):
    out = ledger.drdrill("evidence", "key")
    key = ledger.state / "evidence-signing-key.pem"
    assert out.returncode == 0 and out.stdout.startswith("ssh-ed25519 AAAA"), out.stdout + out.stderr
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and key.stat().st_uid == os.geteuid()
    assert "PRIVATE KEY" not in out.stdout
    pem = ledger.drdrill("evidence", "key", "--pem")
    assert pem.stdout.startswith("-----BEGIN PUBLIC KEY-----")
    result = ledger.record("signed-by-the-file")
    assert json.loads((ledger.state / "runs" / result.drill_id / "evidence.json").read_text())["log_entry"]["public_key"] == out.stdout.split(" drdrill-evidence")[0]

    os.chmod(key, 0o644)
    refused = ledger.drdrill("evidence", "key")
    assert refused.returncode == 2 and f"fix it with `chmod 600 {key}`" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr


def test_after_a_key_rotation_older_entries_verify_once_their_key_is_trusted(ledger, tmp_path):
    before = ledger.record("before-rotation")
    retired = ledger.drdrill("evidence", "key").stdout
    (ledger.state / "evidence-signing-key.pem").rename(tmp_path / "retired-key.pem")  # rotate: the next run makes a new key
    ledger.record("after-rotation")
    old_fp = retired.split()[-1]
    broken(ledger.drdrill("evidence", "verify"), f"log entry 0 (run {before.drill_id}): signed by {old_fp}, which is not a trusted key")
    (ledger.state / "evidence-trusted-keys").write_text("# the key retired on rotation\n" + retired)
    out = ledger.drdrill("evidence", "verify")
    new_fp = ledger.drdrill("evidence", "key").stdout.split()[-1]
    assert out.returncode == 0 and "log: 2 runs signed and chained" in out.stdout and old_fp in out.stdout and new_fp in out.stdout, out.stdout


def test_a_kms_key_on_moto_signs_and_verifies(ledger, moto_endpoint, monkeypatch):
    import boto3

    kms = boto3.client("kms", endpoint_url=moto_endpoint, region_name="us-east-1")
    arn = kms.create_key(KeyUsage="SIGN_VERIFY", KeySpec="ECC_NIST_P256")["KeyMetadata"]["Arn"]
    monkeypatch.setenv("DRDRILL_EVIDENCE_KEY", f"awskms:{arn}")
    result = ledger.record("kms-signed")
    entry = json.loads((ledger.state / "runs" / result.drill_id / "evidence.json").read_text())["log_entry"]
    assert entry["alg"] == "ecdsa-p256-sha256" and entry["public_key"].startswith("ecdsa-sha2-nistp256 ")
    assert not (ledger.state / "evidence-signing-key.pem").exists()

    env = {**ledger.env, "DRDRILL_EVIDENCE_KEY": f"awskms:{arn}", "DRDRILL_AWS_ENDPOINT_URL": moto_endpoint,
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    out = ledger.drdrill("evidence", "verify", env=env)
    assert out.returncode == 0 and f"keys {fingerprint(entry['public_key'])}" in out.stdout, out.stdout + out.stderr
    assert ledger.drdrill("evidence", "key", env=env).stdout.startswith(entry["public_key"])
    # An auditor checks the ECDSA signature of an exported bundle with openssl, as docs/evidence.md says.
    bundle = ledger.state.parent / "kms-bundle"
    assert ledger.drdrill("evidence", "export", result.drill_id, "--out", str(bundle)).returncode == 0
    ok = subprocess.run(["openssl", "dgst", "-sha256", "-verify", "entry-key.pem", "-signature", "entry.sig", "entry.payload"],
                        cwd=bundle, capture_output=True, text=True)
    assert ok.returncode == 0 and "Verified OK" in ok.stdout, ok.stdout + ok.stderr
    # Without the KMS key, this state directory's own key does not vouch for it.
    broken(ledger.drdrill("evidence", "verify"), "which is not a trusted key")


def test_an_auditor_verifies_a_bundle_with_openssl_and_the_documented_script(ledger, tmp_path):
    result = ledger.record("audited")
    ledger.record("later")
    bundle = tmp_path / "bundle"
    assert ledger.drdrill("evidence", "export", result.drill_id, "--out", str(bundle)).returncode == 0
    published = tmp_path / "published.pub"
    published.write_text(ledger.drdrill("evidence", "key").stdout)

    for part in ("entry", "head"):
        ok = subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", f"{part}-key.pem", "-rawin", "-in", f"{part}.payload",
                             "-sigfile", f"{part}.sig"], cwd=bundle, capture_output=True, text=True)
        assert ok.returncode == 0 and "Signature Verified Successfully" in ok.stdout, ok.stdout + ok.stderr

    script = tmp_path / "verify_bundle.py"
    script.write_text(re.search(r"<!-- verify_bundle.py begin -->\n```python\n(.*?)```\n<!-- verify_bundle.py end -->", DOC.read_text(), re.S).group(1))
    ran = subprocess.run([sys.executable, str(script), str(bundle), str(published)], capture_output=True, text=True)
    assert ran.returncode == 0 and f"OK: run {result.drill_id} PASSED, signed in log entry 0, anchored head 1" in ran.stdout, ran.stdout + ran.stderr

    # A bundle changed afterwards fails both ways.
    payload = (bundle / "entry.payload").read_text()
    (bundle / "entry.payload").write_text(payload.replace('"verdict":"PASSED"', '"verdict":"FAILED"'))
    bad = subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", "entry-key.pem", "-rawin", "-in", "entry.payload",
                          "-sigfile", "entry.sig"], cwd=bundle, capture_output=True, text=True)
    assert bad.returncode != 0 and "Signature Verification Failure" in bad.stdout + bad.stderr
    evidence = bundle / "evidence.json"
    evidence.write_text(evidence.read_text().replace('"verdict": "PASSED"', '"verdict": "FAILED"'))
    ran = subprocess.run([sys.executable, str(script), str(bundle), str(published)], capture_output=True, text=True)
    assert ran.returncode != 0 and "AssertionError: record" in ran.stderr, ran.stdout + ran.stderr


@pytest.mark.parametrize("algorithm,alg,openssh", [("EC_SIGN_ED25519", "ed25519", "ssh-ed25519 "), ("EC_SIGN_P256_SHA256", "ecdsa-p256-sha256", "ecdsa-sha2-nistp256 ")])
def test_a_cloud_kms_key_on_the_fake_signs_and_verifies(ledger, monkeypatch, algorithm, alg, openssh):
    name = "projects/p/locations/global/keyRings/drdrill/cryptoKeys/evidence/cryptoKeyVersions/1"
    with CloudKmsFake() as kms:
        kms.add_key(name, algorithm)
        settings = {"DRDRILL_EVIDENCE_KEY": f"gcpkms:{name}", "DRDRILL_GCP_KMS_ENDPOINT": kms.endpoint, "DRDRILL_GCP_ANONYMOUS": "1"}
        for k, v in settings.items():
            monkeypatch.setenv(k, v)
        result = ledger.record("gcp-signed")
        entry = json.loads((ledger.state / "runs" / result.drill_id / "evidence.json").read_text())["log_entry"]
        assert entry["alg"] == alg and entry["public_key"].startswith(openssh)
        assert f"asymmetricSign {name}" in kms.calls
        out = ledger.drdrill("evidence", "verify", env={**ledger.env, **settings})
        assert out.returncode == 0 and f"keys {fingerprint(entry['public_key'])}" in out.stdout, out.stdout + out.stderr
        missing = ledger.drdrill("evidence", "key", env={**ledger.env, **settings, "DRDRILL_EVIDENCE_KEY": f"gcpkms:{name[:-1]}9"})
        assert missing.returncode == 2 and "Cloud KMS answered 404 NOT_FOUND" in missing.stderr and "Traceback" not in missing.stderr


def test_runs_recorded_before_signing_are_adopted_into_the_log(ledger):
    """A store from a drdrill that did not sign: its runs are named unsigned, then signed (adopted)
    with the next run recorded; a log emptied behind drdrill's back still shows through the files."""
    old = ledger.record("unsigned-era")
    ledger.tamper((f"DELETE FROM {SCHEMA}.log", ()))
    broken(ledger.drdrill("evidence", "verify"), f"run {old.drill_id}: {ledger.state / 'runs' / old.drill_id / 'evidence.json'} differs "
           "from the store: it carries signed log entry 0, which the store's log does not hold")
    (ledger.state / "runs" / old.drill_id / "evidence.json").unlink()  # as an older drdrill wrote it: no log entry
    out = ledger.drdrill("evidence", "verify")
    assert out.returncode == 0 and "log: empty; 1 runs recorded before drdrill signed evidence are not signed yet" in out.stdout, out.stdout

    new = ledger.record("signed-era")
    out = ledger.drdrill("evidence", "verify")
    assert out.returncode == 0 and "log: 2 runs signed and chained, head entry 1 " in out.stdout, out.stdout
    with open_store(ledger.dsn) as store:
        entries = store.log_between(0, 1)
    assert [(e["drill_id"], json.loads(e["entry"])["adopted"]) for e in entries] == [(old.drill_id, True), (new.drill_id, False)]


def test_an_azure_key_vault_key_on_the_fake_signs_and_verifies(ledger, monkeypatch, tmp_path):
    token = f"kv-{uuid.uuid4().hex}"
    with KeyVaultFake(token) as vault:
        url = vault.add_key("drdrill-evidence")
        settings = {"DRDRILL_EVIDENCE_KEY": f"azurekv:{url}", "AZURE_TOKEN_CREDENTIALS": "AzureCliCredential",
                    "PATH": f"{bin_with_az(tmp_path / 'bin', token)}:{os.environ['PATH']}"}
        for k, v in settings.items():
            monkeypatch.setenv(k, v)
        result = ledger.record("azure-signed")
        entry = json.loads((ledger.state / "runs" / result.drill_id / "evidence.json").read_text())["log_entry"]
        assert entry["alg"] == "ecdsa-p256-sha256" and entry["public_key"].startswith("ecdsa-sha2-nistp256 ")
        assert any(c.endswith("/sign") for c in vault.calls)
        out = ledger.drdrill("evidence", "verify", env={**ledger.env, **settings})
        assert out.returncode == 0 and f"keys {fingerprint(entry['public_key'])}" in out.stdout, out.stdout + out.stderr
        wrong = ledger.drdrill("evidence", "key", env={**ledger.env, **settings, "DRDRILL_EVIDENCE_KEY": f"azurekv:{url}-gone"})
        assert wrong.returncode == 2 and "Key Vault answered 404 KeyNotFound" in wrong.stderr and "Traceback" not in wrong.stderr
