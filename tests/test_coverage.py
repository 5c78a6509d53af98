"""Fleet coverage: a drill that selects 3 of 12 tagged volumes, over four runs against moto_server
on the real Temporal dev server, covers them all, least recently restored first; `drdrill coverage`
shows what was never drilled, what is not protected, and what could not be verified; the period
report carries the coverage control; the scheduled check alerts before the period ends."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from datetime import datetime, timezone
from pathlib import Path

from typer.testing import CliRunner

from app import cli as cli_mod
from drdrill.evidence.period import period_report, render_period
from drdrill.core import selection
from drdrill.core.operations import LimiterRequest, limiter_workflow_id
from drdrill.providers.spec import load_spec
from drdrill.evidence.coverage import current_period
from drdrill.evidence.store import open_store
from drdrill.providers.postgres.backup import take_backup
from tests.moto_server import OTHER_REGION, REGION, aws, moto_endpoint  # noqa: F401
from tests.ops_helpers import unique
from tests.pg_fixtures import shop_dsn  # noqa: F401
from tests.test_aws_drill import CHECK
from tests.test_notify import Receiver
from tests.test_reports import page_text
from worker import connect
from workflows.drill import DrillWorkflow

REGIONS = (REGION, OTHER_REGION)


def fleet(aws) -> tuple[dict[str, str], dict[str, str]]:
    """12 volumes tagged backup-plan=nightly, 6 per region, each with a snapshot; 3 untagged ones
    without any. Returns ({volume id: region} tagged, {volume id: region} untagged)."""
    tagged, untagged = {}, {}
    for region in REGIONS:
        ec2 = aws.client("ec2", region)
        az = sorted(z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"])[0]
        for i in range(6):
            tags = [{"Key": "backup-plan", "Value": "nightly"}, {"Key": "Name", "Value": f"orders-{region}-{i}"}]
            vol = ec2.create_volume(AvailabilityZone=az, Size=8, TagSpecifications=[{"ResourceType": "volume", "Tags": tags}])["VolumeId"]
            ec2.create_snapshot(VolumeId=vol, Description="nightly")
            tagged[vol] = region
        for i in range(2 if region == REGION else 1):
            vol = ec2.create_volume(AvailabilityZone=az, Size=4, TagSpecifications=[{"ResourceType": "volume", "Tags": [{"Key": "team", "Value": "scratch"}]}])["VolumeId"]
            untagged[vol] = region
    return tagged, untagged


FLEET = """version: 1
name: {name}
description: 3 of the nightly-backed-up volumes, those restored least recently first
objectives: {{rto: 30m, rpo: 1d}}
max_duration: 20m
isolation: {{network_cidr: 10.77.0.0/16, allow_ingress_from: ["192.0.2.10/32"]}}
targets:
  - name: data
    provider: aws.ebs
    select: {{tags: {{backup-plan: nightly}}, regions: [us-east-1, eu-west-1], sample: 3}}
    restore: {{timeout: 5m}}
validations:
  - {{type: command, name: volume-restored, target: data, argv: {check}, timeout: 1m}}
"""


def coverage_cli(drills: Path, period: str, fmt: str = "json"):
    return CliRunner().invoke(cli_mod.app, ["coverage", "--period", period, "--drills", str(drills), "--format", fmt, "--out", "-"])


class RestoreWatch:
    """While a drill runs: how many of its targets restore at once, and its task queue."""

    def __init__(self) -> None:
        self.most = 0
        self.queue = ""

    async def __call__(self, handle) -> None:
        self.queue = (await handle.describe()).task_queue
        while True:
            status = await handle.query(DrillWorkflow.status)
            self.most = max(self.most, sum(1 for t in status.targets if t.phase in ("restore", "wait ready")))
            if status.phase in ("validate", "teardown", "evidence", "done"):
                return
            await asyncio.sleep(0.02)  # allowed: polling the status query for a condition, not waiting for time


async def restore_permits(address: str, queue: str, region: str) -> list[str]:
    """The labels of the restore permits the region's limiter was asked for."""
    client = await connect(address)
    handle = client.get_workflow_handle(limiter_workflow_id(queue, "restore", f"aws:{region}"))
    labels = []
    async for event in handle.fetch_history_events():
        if event.HasField("workflow_execution_signaled_event_attributes"):
            attrs = event.workflow_execution_signaled_event_attributes
            if attrs.signal_name == "request":
                (req,) = await client.data_converter.decode(attrs.input.payloads, [LimiterRequest])
                labels.append(req.request.label)
    return labels


def test_a_fleet_drill_covers_every_tagged_volume_least_recently_restored_first(drill_harness, aws, tmp_path, monkeypatch, temporal_server):
    monkeypatch.setenv("DRDRILL_AWS_REGIONS", ",".join(REGIONS))  # for `drdrill coverage`, which builds its provider from the environment
    monkeypatch.setenv("DRDRILL_RESTORE_LIMITS", '{"aws": 1}')
    tagged, untagged = fleet(aws)
    drills = tmp_path / "drills"
    drills.mkdir()
    name = unique("fleet")
    (drills / "fleet.yaml").write_text(FLEET.format(name=name, check=CHECK))
    (drills / "coverage.yaml").write_text("coverage: {every: quarter, min_fraction: 1.0, protected_tag: backup-plan}\n")
    spec = load_spec(drills / "fleet.yaml")
    period = current_period("quarter", datetime.now(timezone.utc))[0]

    # What run 0 will choose, from the same discovery and seed (its drill id), and no history.
    found = aws.provider.discover("aws.ebs", spec.targets[0].select)
    predicted = selection.expand(spec, {"data": selection.Discovery(target="data", resources=found)}, default_seed=f"{name}-run0", now=datetime.now(timezone.utc))

    drilled: list[str] = []
    for run in range(4):
        watch = RestoreWatch()
        result = drill_harness.run(spec, providers={"aws": aws.provider}, drill_id=f"{name}-run{run}", during=watch)

        assert result.verdict == "PASSED", (result.findings, result.validations)
        (record,) = result.selections
        assert record.matched == 12 and {c.id for c in record.candidates} == set(tagged)  # the tagged set only
        picked = [c.id for c in record.candidates if c.chosen]
        assert len(picked) == 3 and not set(picked) & set(drilled)  # never restored ones first
        assert {tagged[v] for v in picked} == {record.scope}  # one drill restores into one region
        if run == 0:
            assert picked == [c.id for c in predicted.records[0].candidates if c.chosen]  # the same seed picks the same
        else:
            assert all(c.reason.startswith("never restored") for c in record.candidates if c.chosen)
        assert sorted(r.target for r in result.restored) == sorted(record.chosen)
        assert sorted(v.name for v in result.validations) == sorted(f"volume-restored:{t[len('data-'):]}" for t in record.chosen)
        assert all(v.outcome == "PASSED" for v in result.validations)
        assert result.resources == {c.target: f"aws.ebs:{c.id}" for c in record.candidates if c.chosen}
        # The restore limit held after the expansion: each chosen volume took its region's permit, one at a time.
        assert watch.most <= 1
        permits = asyncio.run(restore_permits(temporal_server.address, watch.queue, record.scope))
        assert sorted(permits) == sorted(f"{name}/{t}" for t in record.chosen)
        report = Path(result.evidence_path).with_name("report.html").read_text()
        assert all(t in report for t in record.chosen) and "Selections" in report and "never restored" in report
        drilled += picked

        if run == 2:  # 9 of 12 drilled: the other 3 were never drilled
            res = coverage_cli(drills, period)
            assert res.exit_code == 1, res.output
            data = json.loads(res.output)
            rows = {r["id"]: r for r in data["rows"]}
            never = set(tagged) - set(drilled)
            assert {v for v, r in rows.items() if r["status"] == "not covered"} == never
            assert all(rows[v]["flags"] == ["NEVER_DRILLED"] and rows[v]["last_drill"] is None for v in never)
            assert data["control"]["status"] == "not met" and data["summary"]["protected"] == 12 and data["summary"]["covered"] == 9

    assert sorted(drilled) == sorted(tagged)
    res = coverage_cli(drills, period)
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    rows = {r["id"]: r for r in data["rows"]}
    assert data["control"] == {**data["control"], "status": "met", "text": "every protected resource restored at least once in the period"}
    assert data["providers"] == [{"family": "aws", "read": True, "resources": 15, "detail": "", "regions": ["us-east-1", "eu-west-1"]}]
    for vol, region in tagged.items():
        row = rows[vol]
        assert row["status"] == "covered" and row["flags"] == [] and row["scope"] == region and row["name"].startswith(f"orders-{region}-")
        assert row["last_drill"]["drill"] == name and row["last_drill"]["verdict"] == "PASSED" and row["last_restored"]
        assert {"tag backup-plan=nightly", "1 recovery point(s)", f"selected by drill {name}"} <= set(row["protected_by"])
        assert row["drills"] == [{"drill": name, "target": "data", "how": "selects"}] and row["point_age_seconds"] >= 0
    for vol in untagged:
        assert rows[vol]["status"] == "unprotected" and rows[vol]["protected_by"] == [] and not rows[vol]["protected"]

    html = coverage_cli(drills, period, "html").output
    text = page_text(html)
    assert "MET" in text and "12 of 12 protected resources restored" in text and "<svg" in html and "<script" not in html
    assert all(v in text for v in untagged) and "Unprotected resources" in text
    table = list(csv.DictReader(io.StringIO(coverage_cli(drills, period, "csv").output)))
    assert sorted(r["id"] for r in table if r["status"] == "covered") == sorted(tagged)
    assert sorted(r["id"] for r in table if r["protected"] == "no") == sorted(untagged)

    # The period report carries the coverage section and its control line.
    with open_store() as store:
        data = period_report(store, period, drills_dir=drills)
    (control,) = [c for c in data["controls"] if c["key"] == "COVERAGE"]
    assert control["title"] == "every protected resource restored at least once in the period" and control["status"] == "evidenced"
    assert sorted(control["evidenced_by"]) == [f"{name}-run{i}" for i in range(4)]
    text = page_text(render_period(data, "html"))
    assert "Restore coverage" in text and "Every protected resource restored at least once in the period" in text
    assert any(r["record"] == "coverage" and r["code"] == "covered" for r in csv.DictReader(io.StringIO(render_period(data, "csv"))))


def test_a_provider_without_credentials_is_could_not_verify_never_left_out(tmp_path, monkeypatch):
    for var in ("AZURE_SUBSCRIPTION_ID", "GOOGLE_CLOUD_PROJECT", "DRDRILL_GCP_PROJECT", "CLOUDSDK_CORE_PROJECT", "DRDRILL_GCP_SWEEP_PROJECTS"):
        monkeypatch.delenv(var, raising=False)
    drills = tmp_path / "drills"
    drills.mkdir()
    disk = "/subscriptions/00000000-0000-0000-0000-0000000000aa/resourceGroups/prod/providers/Microsoft.Compute/disks/orders"
    (drills / "azure.yaml").write_text(
        f'name: azure-orders\nobjectives: {{rto: 1h, rpo: 1d}}\ntargets:\n  - {{name: orders, provider: azure.disk, source: {{disk_id: "{disk}"}}}}\n'
    )
    (drills / "gcp.yaml").write_text(
        "name: gcp-fleet\nobjectives: {rto: 1h, rpo: 1d}\ntargets:\n  - {name: web, provider: gcp.instance, select: {tags: {backup-plan: nightly}}}\n"
    )
    period = current_period("quarter", datetime.now(timezone.utc))[0]

    res = coverage_cli(drills, period)

    assert res.exit_code == 3, res.output
    data = json.loads(res.output)
    states = {p["family"]: p for p in data["providers"]}
    assert not states["azure"]["read"] and "no Azure subscription" in states["azure"]["detail"]
    assert not states["gcp"]["read"] and "no GCP project" in states["gcp"]["detail"]
    # The named disk is listed, not omitted (beside what drills restored from these providers before).
    (row,) = [r for r in data["rows"] if r["id"] == disk]
    assert row["kind"] == "azure.disk" and row["status"] == "could not verify"
    assert row["flags"] == ["NEVER_DRILLED", "COULD_NOT_VERIFY"] and row["drills"][0]["drill"] == "azure-orders"
    assert all(r["status"] == "could not verify" for r in data["rows"] if not r["restored_in_period"])
    assert data["control"]["status"] == "could not verify"
    assert [states["azure"]["detail"], states["gcp"]["detail"]] == data["control"]["gaps"][:2]
    text = CliRunner().invoke(cli_mod.app, ["coverage", "--period", period, "--drills", str(drills), "--out", str(tmp_path / "c.html")]).output
    assert "COULD NOT VERIFY the azure inventory could not be read" in text and "COULD NOT VERIFY the gcp inventory" in text


def test_the_coverage_policy_is_as_strict_as_a_drill_file(tmp_path):
    drills = tmp_path / "drills"
    drills.mkdir()
    (drills / "coverage.yaml").write_text("coverage: {every: quarter, min_fraction: 1.0, protected_tags: backup-plan}\n")
    res = coverage_cli(drills, current_period("quarter", datetime.now(timezone.utc))[0])
    assert res.exit_code == 2
    assert "coverage.protected_tags: unknown key 'protected_tags'; allowed here: every, min_fraction, protected_tag" in res.output
    lint = CliRunner().invoke(cli_mod.app, ["lint", str(drills / "coverage.yaml")])
    assert lint.exit_code == 2 and "protected_tags" in lint.output
    (drills / "coverage.yaml").write_text("coverage: {every: month, min_fraction: 0.5}\n")
    assert CliRunner().invoke(cli_mod.app, ["lint", str(drills / "coverage.yaml")]).exit_code == 0
    from app.schedules import drill_files

    assert drill_files([drills]) == []  # `drdrill schedule sync drills/` does not take the policy for a drill


def test_the_scheduled_check_alerts_before_the_period_ends_naming_the_resources_and_their_drill(temporal_server, tmp_path, shop_dsn, monkeypatch):
    from drdrill.providers.activity_io import CoverageCheckInput, CoverageCheckResult
    from app.schedules import COVERAGE_SCHEDULE_ID
    from drdrill.providers.spec import parse_coverage_policy
    from tests.ops_helpers import service
    from workflows.coverage import CoverageCheckWorkflow

    drills = tmp_path / "drills"
    drills.mkdir()
    repo = tmp_path / "backups" / "billing"
    take_backup(shop_dsn, repo)
    name = unique("billing")
    (drills / "billing.yaml").write_text(
        f"name: {name}\nobjectives: {{rto: 1h, rpo: 1d}}\ntargets:\n  - {{name: db, provider: postgres, source: {{repository: {repo}}}}}\n"
    )
    (drills / "coverage.yaml").write_text("coverage: {every: quarter, alert_before: 3660d, notify: {webhooks_env: [COVERAGE_HOOK]}}\n")

    with Receiver() as hook:
        monkeypatch.setenv("COVERAGE_HOOK", hook.url)

        async def go():
            async with service(temporal_server.address, tmp_path / "state") as svc:
                installed = await svc.cli("coverage", "schedule", "--drills", str(drills), "--every", "1d")
                assert installed.exit_code == 0, installed.output
                schedule = svc.client.get_schedule_handle(COVERAGE_SCHEDULE_ID)
                try:
                    action = (await schedule.describe()).schedule.action
                    check = CoverageCheckInput.model_validate(
                        svc.client.data_converter.payload_converter.from_payload(action.args[0], dict)
                    )
                finally:
                    await schedule.delete()
                due = await svc.client.execute_workflow(CoverageCheckWorkflow.run, check, id=unique("coverage"), task_queue=svc.queue)
                quiet = check.model_copy(update={"policy": parse_coverage_policy("coverage: {alert_before: 0s, notify: {webhooks_env: [COVERAGE_HOOK]}}")})
                calm = await svc.client.execute_workflow(CoverageCheckWorkflow.run, quiet, id=unique("coverage"), task_queue=svc.queue)
                return check, due, calm

        check, due, calm = asyncio.run(go())

    assert [s.name for s in check.specs] == [name] and check.source == str(drills)
    assert isinstance(due, CoverageCheckResult) and due.alert and due.notified == ["COVERAGE_HOOK"] and due.control == "not met"
    assert [g.resource for g in due.gaps] == ["billing"] and due.gaps[0].flags[0] == "NEVER_DRILLED"
    (post,) = hook.posts
    body = post["json"]
    assert body["event"] == "COVERAGE" and "protected resources not yet restored" in body["text"]
    assert f"billing (postgres): would be covered by drill {name} (target db)" in body["text"]
    assert body["findings"][0]["code"] == "NEVER_DRILLED"
    assert not calm.alert and calm.notified == [] and len(hook.posts) == 1  # not within alert_before: quiet
