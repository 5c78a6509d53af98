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
from drdrill.evidence.period import period_report
from app.simulate import simulated
from drdrill.providers.spec import load_spec
from drdrill.evidence.chain import evidence_document
from drdrill.evidence.record import record_run
from drdrill.evidence.render import render_drill_html, render_junit
from drdrill.evidence.store import SCHEMA, open_store
from tests.evidence_fixtures import sample_result
from tests.moto_server import aws, moto_endpoint  # noqa: F401
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

    # the lists: the verdict (not COMPLETED), whole ids and times on a pipe, and JSON
    from tests.ops_helpers import cli

    listed = cli("list", "--json", "--limit", "500", env={"TEMPORAL_ADDRESS": temporal_server.address, "DRDRILL_STATE_DIR": str(tmp_path / "state")})
    assert listed.exit_code == 0, listed.output
    (mine,) = [r for r in json.loads(listed.output) if r["drill_id"] == result.drill_id]
    assert (mine["verdict"], mine["phase"]) == ("PASSED (SIMULATION)", "")
    piped = cli("list", "--limit", "500", env={"TEMPORAL_ADDRESS": temporal_server.address, "DRDRILL_STATE_DIR": str(tmp_path / "state")})
    assert any(line.split("\t")[:2] == [result.drill_id, "PASSED (SIMULATION)"] for line in piped.output.splitlines())
    evidence = cli("evidence", "list", "--period", _period_of(result.declared))
    (line,) = [line for line in evidence.output.splitlines() if result.drill_id in line]
    assert "…" not in line and line.split("\t")[2] == result.drill_id and line.split("\t")[3] == "PASSED (SIMULATION)"
    assert any(r["run"] == result.drill_id and r["simulation"] for r in json.loads(cli("evidence", "list", "--json").output))


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


# ------------------------------------------------------------------ coverage: every source kind, every region

SOURCES = {
    "repository": "{repository: backups/shop}",
    "path": '{path: "dumps/*.dump", name_time: "shop-{time:%Y%m%dT%H%M%SZ}.dump"}',
    "s3": "{s3: {bucket: shop-dumps, prefix: nightly/}}",
    "url_env": "{url_env: SHOP_DUMP_URL}",
    "pgbackrest": "{pgbackrest: {stanza: shop}}",
    "barman": "{barman: {source_url: s3://shop-barman/pg, server: shop}}",
    "wal_archive": "{wal_archive: {base_backups: base, archive: wal}}",
}


def _coverage(drills, period: str, *extra: str):
    from app import cli as cli_mod

    return CliRunner().invoke(cli_mod.app, ["coverage", "--period", period, "--drills", str(drills), "--format", "json", "--out", "-", *extra])


def test_coverage_lists_every_postgres_source_kind_with_a_stable_id_and_name(tmp_path, monkeypatch):
    from drdrill.core.selection import resource_key, resource_ref

    monkeypatch.setenv("DRDRILL_S3_CONNECT_TIMEOUT", "1")
    drills = tmp_path / "drills"
    for d in ("drills/dumps", "drills/backups/shop", "drills/base", "drills/wal"):
        (tmp_path / d).mkdir(parents=True)
    (drills / "dumps" / "shop-20261201T020000Z.dump").write_bytes(b"PGDMP not a real dump")
    # Names of this test's own (a shared evidence store holds other tests' drills of stanza "shop" …):
    # paths are unique already, being under tmp_path.
    u = uuid.uuid4().hex[:6]
    sources = {k: v if k in ("path", "repository", "wal_archive") else v.replace("shop", f"shop{u}").replace("SHOP", f"SHOP{u.upper()}")
               for k, v in SOURCES.items()}
    for kind, source in sources.items():
        (drills / f"{kind}.yaml").write_text(
            f"version: 1\nname: cov-{kind.replace('_', '-')}\nobjectives: {{rto: 1h, rpo: 1d}}\n"
            f"targets:\n  - {{name: shop, provider: postgres, source: {source}}}\n"
        )
    first, again = _coverage(drills, "2026Q4"), _coverage(drills, "2026Q4")

    assert first.exit_code == 1, first.output  # not met: never drilled; never a raw pydantic error
    assert "validation error" not in first.output and "Traceback" not in first.output
    rows = {r["drills"][0]["drill"].removeprefix("cov-").replace("-", "_"): r for r in json.loads(first.output)["rows"]}
    assert set(rows) == set(SOURCES)
    for kind in SOURCES:
        spec = load_spec(drills / f"{kind}.yaml")
        assert rows[kind]["key"] == resource_key(*resource_ref(spec.targets[0]))  # the key its runs record
        assert rows[kind]["kind"] == "postgres" and rows[kind]["protected"] and "NEVER_DRILLED" in rows[kind]["flags"]
    assert json.loads(again.output)["rows"] == json.loads(first.output)["rows"]  # stable
    names = {k: r["name"] for k, r in rows.items()}
    assert names["path"] == "dumps/*.dump" or names["path"].endswith("dumps/*.dump")
    assert names["s3"] == f"s3://shop{u}-dumps/nightly/" and names["url_env"] == f"$SHOP{u.upper()}_DUMP_URL"
    assert names["pgbackrest"] == f"pgBackRest stanza shop{u}" and names["barman"].startswith(f"barman server shop{u}")
    problems = json.loads(first.output)["problems"]  # why a source has no recovery point is said, not guessed
    assert any("drill cov-path, target shop" in p and "no recovery point read" in p for p in problems), problems


def test_coverage_reads_every_region_named_and_the_tag_can_be_the_only_criterion(aws, tmp_path, monkeypatch):
    from tests.moto_server import OTHER_REGION, REGION

    monkeypatch.delenv("DRDRILL_AWS_REGIONS", raising=False)
    monkeypatch.setenv("DRDRILL_AWS_REGION", REGION)
    vols = {}
    for region, tag in ((REGION, True), (OTHER_REGION, True), (OTHER_REGION, False)):
        ec2 = aws.client("ec2", region)
        az = sorted(z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"])[0]
        tags = [{"Key": "backup-plan", "Value": "nightly"}] if tag else [{"Key": "team", "Value": "scratch"}]
        vol = ec2.create_volume(AvailabilityZone=az, Size=4, TagSpecifications=[{"ResourceType": "volume", "Tags": tags}])["VolumeId"]
        ec2.create_snapshot(VolumeId=vol, Description="nightly")
        vols[(region, tag)] = vol
    drills = tmp_path / "drills"
    drills.mkdir()
    (drills / "coverage.yaml").write_text(
        f"coverage: {{providers: [aws], protected_tag: backup-plan, protected_by: tag, regions: [{OTHER_REGION}]}}\n"
    )
    res = _coverage(drills, "2026Q4")
    data = json.loads(res.output)
    (aws_state,) = [p for p in data["providers"] if p["family"] == "aws"]
    assert aws_state["read"] and set(aws_state["regions"]) == {REGION, OTHER_REGION}
    by_id = {r["id"]: r for r in data["rows"]}
    assert by_id[vols[(REGION, True)]]["protected"] and by_id[vols[(OTHER_REGION, True)]]["protected"]
    assert not by_id[vols[(OTHER_REGION, False)]]["protected"]  # a snapshot alone does not protect it
    text = _coverage(drills, "2026Q4").output
    assert OTHER_REGION in text
    html_out = tmp_path / "c.html"
    from app import cli as cli_mod

    out = CliRunner().invoke(cli_mod.app, ["coverage", "--period", "2026Q4", "--drills", str(drills), "--out", str(html_out)]).output
    assert f"aws: read regions {REGION}, {OTHER_REGION}" in out or f"aws: read regions {OTHER_REGION}, {REGION}" in out


# ------------------------------------------------------------------ the reports, as a browser lays them out

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
OVERFLOWS = """() => {
  const bad = [];
  for (const el of document.body.querySelectorAll('*')) {
    if (el.closest('svg') || el.closest('details:not([open])')) continue;
    const style = getComputedStyle(el);
    if (style.display === 'inline' || style.display === 'none' || !el.clientWidth) continue;
    const text = [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
    if (text && el.scrollWidth > el.clientWidth + 1 && style.overflowX === 'visible')
      bad.push(el.tagName + ': ' + el.textContent.trim().slice(0, 60));
  }
  for (const svg of document.querySelectorAll('svg')) {
    const box = svg.viewBox.baseVal;
    for (const t of svg.querySelectorAll('text')) {
      const b = t.getBBox();
      if (b.x < box.x - 1 || b.x + b.width > box.x + box.width + 1) bad.push('svg text cut off: ' + t.textContent.slice(0, 60));
    }
  }
  return bad;
}"""


def report_pages(tmp_path) -> dict[str, str]:
    """The three reports, with what made them hard to read: long ids and paths, same-day runs, many
    missed drills, a simulation, a tampered run, an unreadable inventory beside a covered resource."""
    from drdrill.evidence.coverage_report import render_coverage_html
    from drdrill.evidence.period import period_data, render_period
    from drdrill.providers.spec import CoverageSpec, parse_spec
    from drdrill.evidence.coverage import Restore, coverage_report

    day = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)
    text = "version: 1\nname: checkout-service-primary-db\nevidence: {controls: [SOC2-A1.3, ISO27001-A.8.13]}\n"
    runs = [sample_result("checkout-service-primary-db", declared=day + timedelta(hours=h), rto=30.0 + 400 * h, rpo=60.0 * (h + 1), spec_text=text)
            for h in (0, 3)]
    runs.append(sample_result("checkout-service-primary-db", declared=day + timedelta(days=9), verdict="FAILED", rto=1250.0, spec_text=text))
    for r in runs:
        r.environments[0].id = "/var/lib/drdrill/clusters/drdrill-checkout-service-primary-db-20261102t090000z-4f2a9c"
        r.isolation[0].environment_id = r.environments[0].id
        r.validations[0].measured = {"tables": {"public.orders": 500, "public.customers": 200}, "rows": 700}
        r.recovery_points[0].size_bytes = 26_395_648
        r.recovery_points[0].metadata = {  # as the dump source records a pg_dump file with its sidecar
            "format": "custom (-Fc)", "header": {"pg_dump_version": "15.20 (Debian 15.20-0+deb12u1)", "format": "custom"},
            "expect": {"sha256": "ab" * 32, "size": None, "files": {}, "said_by": "/backups/shop/shop-20261102T020000Z.dump.sha256", "problem": ""},
            "restore_with": "PostgreSQL 15 (system, /usr/lib/postgresql/15/bin)",
        }
    sim = sample_result("checkout-service-primary-db", declared=day + timedelta(days=1))
    sim.simulated = True
    docs = [evidence_document(r) for r in runs + [sim]]
    verified = {d["drill_id"]: (True, "intact") for d in docs}
    verified[docs[1]["drill_id"]] = (False, f"run {docs[1]['drill_id']} event 4 (restore): content altered")
    drills = tmp_path / "drills"
    drills.mkdir()
    (drills / "nightly.yaml").write_text(DRILL.format(name="checkout-service-primary-db"))
    since = {"checkout-service-primary-db": {"first_sync": day - timedelta(days=20), "schedule_created": None, "first_run": day}}
    data = period_data(docs, verified, "2026Q4", drills_dir=drills, now=datetime(2026, 12, 6, tzinfo=timezone.utc), schedule_since=since)

    disk = "/subscriptions/00000000-0000-0000-0000-0000000000aa/resourceGroups/production-west/providers/Microsoft.Compute/disks/orders-data-0"
    spec = parse_spec(f'name: azure-orders\nobjectives: {{rto: 1h, rpo: 1d}}\ntargets:\n  - {{name: orders, provider: azure.disk, source: {{disk_id: "{disk}"}}}}\n')

    def no_provider(family):
        raise RuntimeError(f"the {family} inventory needs AZURE_SUBSCRIPTION_ID")

    key = f"azure.disk:{disk.lower()}"
    history = {key: [Restore(at=day, drill="azure-orders", drill_id="azure-orders-1", verdict="PASSED", target="orders", restored=True)]}
    cov = coverage_report([spec], CoverageSpec(), period="2026Q4", start=datetime(2026, 10, 1, tzinfo=timezone.utc),
                          end=datetime(2027, 1, 1, tzinfo=timezone.utc), now=datetime(2026, 12, 6, tzinfo=timezone.utc),
                          history=history, provider_for=no_provider)
    data["coverage"] = cov.model_dump(mode="json")
    return {
        "drill.html": render_drill_html(docs[2]),
        "simulation.html": render_drill_html(docs[3]),
        "period.html": render_period(data, "html"),
        "coverage.html": render_coverage_html(cov),
    }


def test_no_report_overflows_or_cuts_off_text_at_1280_or_800_pixels(tmp_path):
    from playwright.sync_api import sync_playwright

    pages = report_pages(tmp_path)
    for name, html in pages.items():
        (tmp_path / name).write_text(html)
    problems = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for width in (1280, 800):
                page = browser.new_page(viewport={"width": width, "height": 2000})
                for name in pages:
                    page.goto((tmp_path / name).as_uri())
                    wide = page.evaluate("[document.documentElement.scrollWidth, innerWidth]")
                    if wide[0] > wide[1]:
                        problems.append(f"{name} at {width}px: the page is {wide[0]}px wide")
                    problems += [f"{name} at {width}px: {b}" for b in page.evaluate(OVERFLOWS)]
                page.close()
        finally:
            browser.close()
    assert problems == [], "\n".join(problems)


def test_reports_say_things_in_words(tmp_path):
    pages = report_pages(tmp_path)
    drill, period, coverage = pages["drill.html"], pages["period.html"], pages["coverage.html"]
    assert '{"rows": 700}' not in drill and "<details>" in drill and "public.orders" in drill  # measurements behind a disclosure
    assert "/var/lib/drdrill/clusters/drdrill-checkout" in drill  # the full path, once, in the disclosure
    assert drill.count("/var/lib/drdrill/clusters/drdrill-checkout-service-primary-db-20261102t090000z-4f2a9c") <= 3
    assert "FAILED" in drill and "COULD_NOT_VERIFY<" not in drill
    assert "made by pg_dump 15.20" in drill and "sha256 expected by /backups/shop/shop-20261102T020000Z.dump.sha256" in drill
    assert "25.2 MiB" in drill and "26395648" not in drill
    assert "SOC2-A1.3" in drill.split('id="controls"', 1)[1].split("</section>", 1)[0]  # the drill's declared controls, in words
    assert 'id="simulation"' in pages["simulation.html"] and 'id="simulation"' not in drill
    assert "TAMPERED" in period and "Simulations (not evidence)" in period and "evidence tampered, not counted" in period
    assert "objective 1h (above the scale)" in period and "11-02 09:00" in period  # RPO points not squashed; same day told apart
    assert period.count('data-finding="MISSED_SCHEDULED_DRILL"') == 1  # one line per drill, with its count
    row = '<tr data-resource="azure.disk:'
    assert row in coverage
    covered = coverage.split(row, 1)[1].split("</tr>", 1)[0]
    assert "covered" in covered and "COULD_NOT_VERIFY" not in covered


def test_a_schedule_temporal_knows_counts_without_a_recorded_sync(temporal_server, evidence_store_dsn, tmp_path):
    """A schedule created without a recorded sync (an older drdrill, the Python API): with a
    long-lived Temporal the report reads its creation time, so its drill is checked."""
    import asyncio

    from app import schedules
    from worker import connect

    name = f"known-{uuid.uuid4().hex[:6]}"
    drills = tmp_path / "drills"
    drills.mkdir()
    (drills / "known.yaml").write_text(DRILL.format(name=name))
    queue = f"honest-{uuid.uuid4().hex[:6]}"

    async def with_client(action):
        client = await connect(temporal_server.address)
        return await action(client)

    plan = asyncio.run(with_client(lambda c: schedules.sync(c, [drills], queue)))
    assert [c.action for c in plan.changes] == ["create"]
    try:
        now = datetime.now(timezone.utc)
        record_run(tmp_path / "state", sample_result(name, declared=now - timedelta(minutes=5)), dsn=evidence_store_dsn)
        from tests.ops_helpers import cli

        env = {"TEMPORAL_ADDRESS": temporal_server.address, "DRDRILL_TASK_QUEUE": queue, "DRDRILL_STATE_DIR": str(tmp_path / "state")}
        res = cli("report", "--period", _period_of(now), "--drill", name, "--drills", str(drills), "--format", "json", "--out", "-", env=env)
    finally:
        asyncio.run(with_client(lambda c: c.get_schedule_handle(f"drdrill-{name}").delete()))
    data = json.loads(res.output[: res.output.rindex("}") + 1])
    assert not any(name in p for p in data["problems"]), data["problems"]
    assert data["scheduled_checked"] and res.exit_code == 0, res.output
