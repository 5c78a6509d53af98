"""The evidence store for the test session: a fresh database on the machine's PostgreSQL
(127.0.0.1:5432), named in DRDRILL_EVIDENCE_DSN for every drill the tests run, dropped at the end
(set DRDRILL_TEST_KEEP_EVIDENCE=1 to keep it and print its DSN, e.g. to try `drdrill report` on it).

Imported by tests/conftest.py so that it applies to every test: without it a drill would start the
embedded evidence PostgreSQL under the (per-test) cluster root.
"""

from __future__ import annotations

import os
import uuid

import psycopg
import pytest

ADMIN_DSN = os.environ.get("DRDRILL_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")


@pytest.fixture(scope="session", autouse=True)
def evidence_store_dsn():
    name = f"drdrill_evidence_{uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError:
        yield None  # no PostgreSQL here: tests that record evidence will say so
        return
    dsn = ADMIN_DSN.replace("dbname=postgres", f"dbname={name}")
    saved = os.environ.get("DRDRILL_EVIDENCE_DSN")
    os.environ["DRDRILL_EVIDENCE_DSN"] = dsn
    try:
        yield dsn
    finally:
        if saved is None:
            os.environ.pop("DRDRILL_EVIDENCE_DSN", None)
        else:
            os.environ["DRDRILL_EVIDENCE_DSN"] = saved
        if os.environ.get("DRDRILL_TEST_KEEP_EVIDENCE"):
            print(f"\nevidence of this test session kept: DRDRILL_EVIDENCE_DSN='{dsn}'")
        else:
            with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ------------------------------------------------------------------ sample runs


def sample_result(name: str = "sample", drill_id: str | None = None, declared=None, verdict: str = "PASSED", rto=30.5, rpo=120.0,
                  rto_objective=900.0, rpo_objective=3600.0, secret: str = "", spec_text: str | None = None):
    """A complete DrillResult as the workflow returns it (timeline, checks, findings, teardown)."""
    from datetime import datetime, timedelta, timezone

    from drdrill.core.models import (
        DrillResult, Environment, Finding, IsolationCheck, IsolationProof, ObjectiveResult, RecoveryPoint,
        RestoredResource, TeardownReport, TimelineEvent, ValidationResult,
    )

    t0 = declared or datetime.now(timezone.utc).replace(microsecond=0)
    drill_id = drill_id or f"{name}-{uuid.uuid4().hex[:6]}"
    s = f" {secret}" if secret else ""
    phases = ["declared", "recovery point", "isolate", "verify isolation", "restore", "validate", "teardown"]
    timeline = [
        TimelineEvent(phase=p, started=t0 + timedelta(seconds=5 * i), ended=t0 + timedelta(seconds=5 * i + 4), detail=f"{p} done{s}")
        for i, p in enumerate(phases)
    ]
    timeline.insert(5, TimelineEvent(phase="ready", target="shop", started=t0 + timedelta(seconds=23), ended=t0 + timedelta(seconds=23), detail=f"cluster ready{s}"))
    rto_ok = "PASSED" if rto is not None and rto <= rto_objective else "FAILED"
    rpo_ok = "PASSED" if rpo is not None and rpo <= rpo_objective else "FAILED"
    return DrillResult(
        drill_id=drill_id,
        run_id=uuid.uuid4().hex,
        name=name,
        verdict=verdict,
        declared=t0,
        ended=t0 + timedelta(seconds=40),
        started_by="cli:auditor",
        spec_sha256="a" * 64,
        spec_text=spec_text if spec_text is not None else f"version: 1\nname: {name}\nevidence: {{retention: 1y}}\n# {secret}\n",
        objectives=[
            ObjectiveResult(name="RTO", objective_seconds=rto_objective, achieved_seconds=rto, outcome=rto_ok, detail=f"measured{s}"),
            ObjectiveResult(name="RPO", objective_seconds=rpo_objective, achieved_seconds=rpo, outcome=rpo_ok),
        ],
        rto_seconds=rto,
        rpo_seconds=rpo,
        recovery_points=[RecoveryPoint(target="shop", provider="postgres", id="backup-1", consistent_time=t0 - timedelta(seconds=rpo or 0),
                                       metadata={"source": f"repo{s}"}, candidates=3)],
        environments=[Environment(family="postgres", drill_id=drill_id, id=f"drdrill-{drill_id}", details={"dsn": f"host=/tmp/x{s}"})],
        isolation=[IsolationProof(family="postgres", environment_id=f"drdrill-{drill_id}", checks=[IsolationCheck(name="no TCP listener", outcome="PASSED", detail=f"ok{s}")])],
        restored=[RestoredResource(target="shop", provider="postgres", id="cluster-1", endpoint={"dsn": f"host=/tmp/x dbname=shop{s}", "database": "shop"}, ready=True)],
        validations=[
            ValidationResult(name="tables-match", type="checksum", target="shop", outcome="PASSED", detail=f"3/3 tables match{s}",
                             started=t0 + timedelta(seconds=24), first_passed_at=t0 + timedelta(seconds=26), finished=t0 + timedelta(seconds=26), attempts=1,
                             measured={"tables": 3, "note": secret}),
            ValidationResult(name="orders-present", type="sql", target="shop", outcome="FAILED" if verdict == "FAILED" else "PASSED",
                             detail=f"count = 0{s}" if verdict == "FAILED" else "count = 2000", started=t0 + timedelta(seconds=24),
                             first_passed_at=None if verdict == "FAILED" else t0 + timedelta(seconds=rto or 30), finished=t0 + timedelta(seconds=30), attempts=2),
        ],
        findings=[Finding(code="RECOVERY_POINT_OLD", severity="warning", message=f"the backup is older than a day{s}", target="shop")],
        teardown=[TeardownReport(family="postgres", environment_id=f"drdrill-{drill_id}", deleted=["cluster cluster-1"], errors=[])],
        timeline=timeline,
    )
