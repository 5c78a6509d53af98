"""Nothing counted that did not happen: simulations are never evidence, missed drills count only
from when a schedule existed, a tampered run counts for nothing without blemishing the others, and
`drdrill report` says every problem it found and exits non-zero for the ones that matter."""

from __future__ import annotations

import json
import uuid
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone

import psycopg
import typer
from typer.testing import CliRunner

from app.cli_evidence import register
from app.reports import period_report
from app.simulate import simulated
from drdrill.core.spec import load_spec
from drdrill.evidence.chain import evidence_document
from drdrill.evidence.record import record_run
from drdrill.evidence.render import render_drill_html, render_junit
from drdrill.evidence.store import SCHEMA, open_store
from tests.evidence_fixtures import sample_result
from tests.sim_harness import REPO, leaked, run_sim

DRILL = """version: 1
name: {name}
objectives: {{rto: 15m, rpo: 1h}}
targets:
  - {{name: shop, provider: sim}}
schedule: {{cron: "0 2 * * *"}}
"""


def _cli(*args: str):
    app = typer.Typer()
    register(app)
    return CliRunner().invoke(app, list(args))


def _period_of(t: datetime) -> str:
    return f"{t.year}Q{(t.month - 1) // 3 + 1}"


def test_a_period_with_only_simulations_evidences_no_control(temporal_server, evidence_store_dsn, tmp_path):
    """`drdrill run --simulate` records a run: it is shown as SIMULATION and counted nowhere."""
    spec = simulated(load_spec(REPO / "drills" / "aws-rds.yaml"))
    spec = spec.model_copy(update={"name": f"sim-only-{uuid.uuid4().hex[:6]}"})
    state = tmp_path / "sim.json"
    result, _ = run_sim(temporal_server.address, spec, state, tmp_path / "state")
    assert result.verdict == "PASSED" and result.simulated and leaked(state) == []

    with open_store(evidence_store_dsn) as store:
        doc = store.load(result.drill_id)
        data = period_report(store, _period_of(result.declared), drill=spec.name, drills_dir=tmp_path / "none")
    assert doc["simulated"] is True
    assert data["summary"]["runs"] == 0 and data["summary"]["passed"] == 0 and data["summary"]["simulations"] == 1
    assert [s["drill_id"] for s in data["simulations"]] == [result.drill_id]
    assert all(not c["evidenced_by"] and c["status"] != "evidenced" for c in data["controls"])
    assert result.drill_id not in json.dumps(data["coverage"])

    # every report of the run says so: the HTML banner, the JUnit suite's name
    html = render_drill_html(doc)
    assert 'id="simulation"' in html and "restored nothing real" in html
    suite = ET.fromstring(render_junit(doc)).find("testsuite")
    assert suite.get("name") == f"SIMULATION drdrill.{spec.name}"

    res = _cli("report", "--period", _period_of(result.declared), "--drill", spec.name, "--drills", str(tmp_path / "none"),
               "--out", str(tmp_path / "r.html"))
    assert "0 runs, 0 passed" in res.output and "1 simulation (not evidence)" in res.output
    assert "no drills directory" in res.output and res.exit_code == 3  # scheduled drills were not checked
    assert "SIMULATION" in (tmp_path / "r.html").read_text()


def test_missed_drills_count_from_the_first_recorded_sync_and_are_grouped(evidence_store_dsn, tmp_path):
    name = f"nightly-{uuid.uuid4().hex[:6]}"
    drills = tmp_path / "drills"
    drills.mkdir()
    (drills / "nightly.yaml").write_text(DRILL.format(name=name))
    now = datetime(2026, 12, 7, 6, 0, tzinfo=timezone.utc)  # the 7th is still in its catch-up window
    with open_store(evidence_store_dsn) as store:
        before = period_report(store, "2026Q4", drill=name, drills_dir=drills, now=now)
        store.record_schedule_sync([{"drill": name, "schedule_id": f"drdrill-{name}", "action": "create"}],
                                   at=datetime(2026, 12, 3, 9, 0, tzinfo=timezone.utc))
        after = period_report(store, "2026Q4", drill=name, drills_dir=drills, now=now)

    # never synced: nothing is invented, and the report says what it could not check
    assert before["missed"] == [] and not before["scheduled_checked"]
    assert any(name in p and "not checked" in p for p in before["problems"])
    # synced on Dec 3: missed on the 4th, 5th and 6th at 02:00 (not the 60-odd days before)
    assert [m["expected_at"][:10] for m in after["missed"]] == ["2026-12-04", "2026-12-05", "2026-12-06"]
    (group,) = after["missed_by_drill"]
    assert (group["count"], group["first"][:10], group["last"][:10]) == (3, "2026-12-04", "2026-12-06")
    missed = [f for f in after["findings"] if f["code"] == "MISSED_SCHEDULED_DRILL"]
    assert len(missed) == 1 and "missed 3 scheduled runs, from 2026-12-04 02:00:00Z to 2026-12-06 02:00:00Z" in missed[0]["message"]
    pci = next(c for c in after["controls"] if c["key"] == "PCI-DSS-12.10.2")
    assert sum(name in g for g in pci["gaps"]) == 1
    assert after["scheduled_checked"]


def test_a_tampered_run_is_listed_and_counts_for_nothing_while_intact_runs_evidence_controls(evidence_store_dsn, tmp_path):
    name = f"tamper-{uuid.uuid4().hex[:6]}"
    q = datetime(2024, 10, 7, 9, 0, tzinfo=timezone.utc)
    runs = [sample_result(name, declared=q + timedelta(days=7 * i)) for i in range(5)]
    for r in runs:
        record_run(tmp_path / "state", r, dsn=evidence_store_dsn)
    bad = runs[2].drill_id
    with psycopg.connect(evidence_store_dsn) as conn:  # behind drdrill's back, as a database owner could
        conn.execute("SET session_replication_role = replica")
        conn.execute(f"UPDATE {SCHEMA}.events SET body = replace(body, 'restore done', 'restore done fast') WHERE drill_id = %s", (bad,))
    with open_store(evidence_store_dsn) as store:
        data = period_report(store, "2024Q4", drill=name, drills_dir=tmp_path / "none")
    assert data["summary"]["tampered"] == 1 and data["summary"]["evidence_intact"] == 4 and data["summary"]["passed"] == 4
    assert any(f["code"] == "EVIDENCE_TAMPERED" and f["drill_id"] == bad for f in data["findings"])
    soc2 = next(c for c in data["controls"] if c["key"] == "SOC2-A1.3")
    assert soc2["status"] == "evidenced" and bad not in soc2["evidenced_by"] and len(soc2["evidenced_by"]) == 4

    res = _cli("report", "--period", "2024Q4", "--drill", name, "--drills", str(tmp_path / "none"), "--format", "json", "--out", "-")
    assert res.exit_code == 1  # tampered evidence
    assert "problem: no drills directory" in res.output
