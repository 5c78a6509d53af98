"""Reports as people and CI systems see them: the per-drill HTML (parsed), JUnit XML, and the period
report with its missed scheduled drills and controls, from runs in the real evidence store."""

from __future__ import annotations

import csv
import io
import json
import uuid
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser

import pytest
import typer
from typer.testing import CliRunner

from app.cli_evidence import register
from drdrill.core.calendar import parse_period
from drdrill.evidence.period import period_report, render_period
from drdrill.core.calendar import cron_times
from drdrill.evidence.chain import evidence_document
from drdrill.evidence.record import record_run
from drdrill.evidence.render import render_drill_html, render_junit
from drdrill.evidence.store import open_store
from tests.evidence_fixtures import sample_result


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.text: list[str] = []
        self.tags: list[tuple[str, dict]] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag in ("style", "script"):
            self._skip += 1

    def handle_endtag(self, tag):
        if tag in ("style", "script"):
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip and data.strip():
            self.text.append(data.strip())


def parse(html: str) -> _Page:
    p = _Page()
    p.feed(html)
    return p


def page_text(html: str) -> str:
    return " ".join(parse(html).text)


def test_drill_report_shows_verdict_objectives_every_check_and_the_evidence_hash():
    result = sample_result("checkout", verdict="FAILED", rto=1250.0, rpo=300.0)
    doc = evidence_document(result)
    page = parse(render_drill_html(doc))
    text = " ".join(page.text)
    tags = [t for t, _ in page.tags]
    # self-contained: no scripts, no external assets; the timeline is inline SVG
    assert "script" not in tags and not any(a.get("src") or (t == "link") for t, a in page.tags)
    assert "svg" in tags and "rect" in tags
    # verdict up front: the first heading is followed by the verdict banner
    assert text.index("FAILED") < text.index("Recovery objectives")
    assert "RTO 20m50s (objective 15m, FAILED)" in text and "RPO 5m (objective 1h, PASSED)" in text
    for v in result.validations:
        assert v.name in text
    assert "count = 0" in text and "RECOVERY_POINT_OLD" in text
    assert "backup-1" in text and "5m" in text  # the recovery point with its age
    assert "no TCP listener" in text and "cluster cluster-1" in text  # isolation and teardown proof
    assert doc["chain_head"] in text and f"drdrill evidence verify {result.drill_id}" in text
    assert "@media print" in render_drill_html(doc)


def test_report_escapes_what_it_shows():
    result = sample_result("escape")
    result.validations[0].detail = "<script>alert(1)</script>"
    html = render_drill_html(evidence_document(result))
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_junit_has_a_testcase_per_check_and_objective_with_failures():
    result = sample_result("ci", verdict="FAILED", rto=1250.0)
    root = ET.fromstring(render_junit(evidence_document(result)))
    suite = root.find("testsuite")
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert set(cases) == {"tables-match", "orders-present", "RTO", "RPO"}
    assert cases["orders-present"].find("failure") is not None and cases["RTO"].find("failure") is not None
    assert cases["tables-match"].find("failure") is None
    assert suite.get("tests") == "4" and suite.get("failures") == "2"


def test_periods_and_cron():
    assert parse_period("2026Q4") == (datetime(2026, 10, 1, tzinfo=timezone.utc), datetime(2027, 1, 1, tzinfo=timezone.utc))
    assert parse_period("2026q1")[1] == datetime(2026, 4, 1, tzinfo=timezone.utc)
    assert parse_period("2026-12")[1] == datetime(2027, 1, 1, tzinfo=timezone.utc)
    with pytest.raises(ValueError):
        parse_period("Q4")
    start, end = parse_period("2026-11")
    assert len(cron_times("0 3 * * 1", start, end, timezone.utc)) == 5  # Mondays in November 2026
    assert cron_times("30 2 1 */3 *", *parse_period("2026"), timezone.utc)[1] == datetime(2026, 4, 1, 2, 30, tzinfo=timezone.utc)


DRILL = """version: 1
name: {name}
objectives: {{rto: 15m, rpo: 1h}}
targets:
  - {{name: shop, provider: sim}}
schedule: {schedule}
evidence: {{controls: [SOC2-A1.3, PCI-DSS-12.10.2]}}
"""


def test_period_report_lists_the_missed_scheduled_drill_and_maps_controls(evidence_store_dsn, tmp_path):
    suffix = uuid.uuid4().hex[:6]
    ran, missed, failing = f"ran-{suffix}", f"missed-{suffix}", f"slow-{suffix}"
    drills = tmp_path / "drills"
    drills.mkdir()
    (drills / "ran.yaml").write_text(DRILL.format(name=ran, schedule="quarterly"))
    (drills / "missed.yaml").write_text(DRILL.format(name=missed, schedule="{quarterly: {month: 2, day: 15}}"))
    (drills / "unscheduled.yaml").write_text(DRILL.format(name=f"adhoc-{suffix}", schedule="null"))
    q = datetime(2025, 11, 3, 9, 0, tzinfo=timezone.utc)
    good = [sample_result(ran, declared=q + timedelta(days=7 * i), rto=30.0 + i) for i in range(3)]
    slow = sample_result(failing, declared=q, verdict="FAILED", rto=2000.0)
    outside = sample_result(ran, declared=datetime(2026, 1, 5, tzinfo=timezone.utc))
    for r in good + [slow, outside]:
        record_run(tmp_path / "state", r, dsn=evidence_store_dsn)

    with open_store(evidence_store_dsn) as store:
        # `drdrill schedule sync` created both schedules before the quarter began
        synced = [{"drill": n, "schedule_id": f"drdrill-{n}", "action": "create"} for n in (ran, missed)]
        store.record_schedule_sync(synced, at=datetime(2025, 9, 20, tzinfo=timezone.utc))
        data = period_report(store, "2025Q4", drills_dir=drills)
        only = period_report(store, "2025Q4", drill=ran, drills_dir=drills)
    mine = [r for r in data["runs"] if r["name"] in (ran, failing)]
    assert [r["drill_id"] for r in mine if r["name"] == ran] == [r.drill_id for r in good]  # not the January run
    missed_findings = [f for f in data["findings"] if f["code"] == "MISSED_SCHEDULED_DRILL" and f["drill"] in (ran, missed)]
    assert [f["drill"] for f in missed_findings] == [missed]
    assert "2025-11-15 02:00:00Z" in missed_findings[0]["message"]
    assert any(f["code"] == "DRILL_FAILED" and f["drill_id"] == slow.drill_id for f in data["findings"])
    controls = {c["key"]: c for c in data["controls"]}
    assert set(controls) >= {"SOC2-A1.2", "SOC2-A1.3", "ISO27001-A.5.29", "ISO27001-A.5.30", "ISO27001-A.8.13", "ISO27001-A.8.14",
                             "PCI-DSS-12.10.2", "HIPAA-164.308(a)(7)(ii)(D)", "DORA-Art.11", "DORA-Art.12"}
    assert good[0].drill_id in controls["SOC2-A1.3"]["evidenced_by"] and slow.drill_id not in controls["SOC2-A1.3"]["evidenced_by"]
    assert any(missed in g for g in controls["PCI-DSS-12.10.2"]["gaps"]) and controls["PCI-DSS-12.10.2"]["status"] != "evidenced"
    assert f"RTO objective missed by run {slow.drill_id}" in controls["ISO27001-A.5.30"]["gaps"]
    assert ran in controls["PCI-DSS-12.10.2"]["declared_by"]
    assert only["summary"]["runs"] == 3 and only["summary"]["missed"] == 0 and only["summary"]["passed"] == 3

    # HTML: what an auditor reads
    text = page_text(render_period(data, "html"))
    assert "MISSED_SCHEDULED_DRILL" in text and missed in text and slow.drill_id in text
    assert "PCI DSS v4.0" in text and "164.308(a)(7)(ii)(D)" in text and "Art. 12" in text
    assert "RTO achieved" in text  # trend charts per drill
    # CSV and JSON carry the same
    rows = list(csv.DictReader(io.StringIO(render_period(data, "csv"))))
    assert any(r["record"] == "finding" and r["code"] == "MISSED_SCHEDULED_DRILL" and r["drill"] == missed for r in rows)
    assert {r["drill_id"] for r in rows if r["record"] == "run"} >= {g.drill_id for g in good}

    # and through the CLI
    app = typer.Typer()
    register(app)
    res = CliRunner().invoke(app, ["report", "--period", "2025Q4", "--drills", str(drills), "--format", "json", "--out", "-"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert missed in [m["drill"] for m in out["missed"]]
    res = CliRunner().invoke(app, ["report", "--period", "2025Q4", "--drills", str(drills), "--out", str(tmp_path / "r.html")])
    assert res.exit_code == 0 and "MISSED_SCHEDULED_DRILL" in res.output and (tmp_path / "r.html").exists()


def test_a_drill_scheduled_later_in_the_period_is_not_missed_yet(tmp_path):
    from drdrill.evidence.period import period_data

    drills = tmp_path / "d"
    drills.mkdir()
    (drills / "x.yaml").write_text(DRILL.format(name="later", schedule="{quarterly: {month: 3, day: 20}}"))
    since = {"later": {"first_sync": datetime(2026, 9, 1, tzinfo=timezone.utc), "schedule_created": None, "first_run": None}}
    data = period_data([], {}, "2026Q4", drills_dir=drills, now=datetime(2026, 11, 25, tzinfo=timezone.utc), schedule_since=since)
    assert data["missed"] == [] and [u["drill"] for u in data["upcoming"]] == ["later"]
    assert all("no drill ran in the period" in c["gaps"] for c in data["controls"])
