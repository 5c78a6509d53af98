"""Selections (`select:`): the pure choice (drdrill/core/selection.py), the drill format, and drills
that choose their resources at drill time against the Azure and GCP fakes and real PostgreSQL
backups. The AWS fleet over several runs, with coverage, is in tests/test_coverage.py."""

from __future__ import annotations

import re
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from drdrill.core import selection
from drdrill.core.selection import Discovery, LastRestore, ProtectedResource
from drdrill.core.schema import NAME_RE, SpecError
from drdrill.providers.spec import parse_spec
from drdrill.providers.azure.provider import AzureProvider
from drdrill.providers.postgres.provider import PostgresProvider
from drdrill.providers.postgres.backup import take_backup
from tests.azure_fake import AzureFake
from tests.gcp_fake import ComputeFake
from tests.pg_fixtures import clusters_left, cluster_root, shop_dsn  # noqa: F401
from tests.test_azure import StaticToken, covered_by_role
from tests.test_gcp import make_provider

NOW = datetime.now(timezone.utc).replace(microsecond=0)


def fleet_spec(select: str, validations: str = "", isolation: str = "", rule: str = "") -> object:
    return parse_spec(
        f"""
name: fleet
objectives: {{rto: 1h, rpo: 1d}}
targets:
  - name: data
    provider: aws.ebs
    select: {select}
{rule}
{isolation}
validations:
{validations or '  - {type: command, name: readable, target: data, argv: ["true"]}'}
""",
        "fleet.yaml",
    )


def volumes(n: int, region: str = "us-east-1", newest: timedelta = timedelta(hours=1), prefix: str = "a") -> list[ProtectedResource]:
    return [
        ProtectedResource(
            kind="aws.ebs",
            id=f"vol-{prefix}{i:03x}",
            scope=region,
            source={"volume_id": f"vol-{prefix}{i:03x}", "region": region},
            newest_point=NOW - newest,
            oldest_point=NOW - newest - timedelta(days=3),
            points=3,
        )
        for i in range(n)
    ]


def last(at: datetime, drill_id: str = "fleet-1") -> LastRestore:
    return LastRestore(at=at, drill="fleet", drill_id=drill_id, verdict="PASSED")


def chosen(expansion) -> list[str]:
    return [c.id for r in expansion.records for c in r.candidates if c.chosen]


# ---------------------------------------------------------------- the pure choice


def test_the_same_seed_and_history_choose_the_same_resources_in_any_listing_order():
    spec = fleet_spec("{tags: {backup-plan: nightly}, sample: 3}")
    found = volumes(12)
    a = selection.expand(spec, {"data": Discovery(target="data", resources=found)}, default_seed="drill-1", now=NOW)
    b = selection.expand(spec, {"data": Discovery(target="data", resources=list(reversed(found)))}, default_seed="drill-1", now=NOW)
    other = selection.expand(spec, {"data": Discovery(target="data", resources=found)}, default_seed="drill-2", now=NOW)

    assert len(chosen(a)) == 3 and chosen(a) == chosen(b)
    assert chosen(other) != chosen(a)  # another drill id draws again
    (record,) = a.records
    assert record.seed == "drill-1" and record.matched == 12 and record.eligible == 12
    assert all(c.reason == "never restored (seeded draw among 12)" for c in record.candidates if c.chosen)
    assert all(c.reason == "not drawn: sample of 3 reached" for c in record.candidates if not c.chosen)


def test_the_selection_seed_fixes_the_draw_whatever_the_drill_id():
    spec = fleet_spec("{tags: {backup-plan: nightly}, sample: 2, seed: 42}")
    runs = [selection.expand(spec, {"data": Discovery(target="data", resources=volumes(8))}, default_seed=d, now=NOW) for d in ("x", "y")]
    assert chosen(runs[0]) == chosen(runs[1]) and runs[0].records[0].seed == "42"


def test_least_recently_restored_first_so_every_resource_is_covered_in_turn():
    spec = fleet_spec("{tags: {backup-plan: nightly}, sample: 3}")
    found = volumes(12)
    history: dict[str, LastRestore] = {}
    covered: list[str] = []
    for run in range(4):
        plan = selection.expand(spec, {"data": Discovery(target="data", resources=found, last_restored=dict(history))}, default_seed=f"run-{run}", now=NOW)
        picked = chosen(plan)
        assert len(picked) == 3 and not set(picked) & set(covered)  # never one restored before, while some never were
        covered += picked
        for key in (c.key for c in plan.records[0].candidates if c.chosen):
            history[key] = last(NOW - timedelta(days=10 - run), f"run-{run}")
    assert sorted(covered) == sorted(r.id for r in found)
    # Now every one was restored: the oldest restores come first, with the reason recorded.
    plan = selection.expand(spec, {"data": Discovery(target="data", resources=found, last_restored=history)}, default_seed="run-5", now=NOW)
    oldest = {c.key for c in plan.records[0].candidates if c.last_drill_id == "run-0"}
    assert {c.key for c in plan.records[0].candidates if c.chosen} == oldest
    assert all(c.reason.startswith("least recently restored: ") and "run-0 (PASSED)" in c.reason for c in plan.records[0].candidates if c.chosen)


def test_one_drill_restores_into_one_region():
    spec = fleet_spec("{tags: {backup-plan: nightly}, sample: 4}")
    found = volumes(3, "us-east-1", prefix="e") + volumes(3, "eu-west-1", prefix="b")
    plan = selection.expand(spec, {"data": Discovery(target="data", resources=found)}, default_seed="s", now=NOW)
    (record,) = plan.records
    picked = [c for c in record.candidates if c.chosen]
    assert {c.scope for c in picked} == {record.scope} and len(picked) == 3  # the region has only 3
    assert all(f"this drill restores aws resources in {record.scope}" in c.reason for c in record.candidates if c.scope != record.scope)
    # isolation.aws_region pins it
    pinned = fleet_spec("{tags: {backup-plan: nightly}, sample: 2}", isolation="isolation: {aws_region: eu-west-1}")
    plan = selection.expand(pinned, {"data": Discovery(target="data", resources=found)}, default_seed="s", now=NOW)
    assert {c.scope for c in plan.records[0].candidates if c.chosen} == {"eu-west-1"}
    assert "(isolation.aws_region)" in next(c.reason for c in plan.records[0].candidates if c.scope == "us-east-1")


def test_the_rule_window_decides_which_candidates_can_be_drilled():
    fresh, stale = volumes(2, newest=timedelta(hours=2), prefix="f"), volumes(2, newest=timedelta(days=40), prefix="c")
    none = [ProtectedResource(kind="aws.ebs", id="vol-d01", scope="us-east-1", source={"volume_id": "vol-d01"})]
    spec = fleet_spec("{tags: {backup-plan: nightly}}", rule="    recovery_point: {rule: random, within: 30d}")
    plan = selection.expand(spec, {"data": Discovery(target="data", resources=fresh + stale + none)}, default_seed="s", now=NOW)
    (record,) = plan.records
    assert sorted(chosen(plan)) == sorted(r.id for r in fresh)
    reasons = {c.id: c.reason for c in record.candidates}
    assert reasons["vol-d01"] == "no recovery point" and reasons[stale[0].id] == "no recovery point within the last 30d"
    (warning,) = [p for p in plan.problems if p.code == "SELECTION_WITHOUT_RECOVERY_POINT"]
    assert warning.severity == "warning" and "3 matching resource(s)" in warning.message and "vol-d01" in warning.message
    latest = fleet_spec("{tags: {backup-plan: nightly}}", rule="    recovery_point: {rule: latest, max_age: 1d}")
    plan = selection.expand(latest, {"data": Discovery(target="data", resources=fresh + stale)}, default_seed="s", now=NOW)
    assert sorted(chosen(plan)) == sorted(r.id for r in fresh)


def test_a_selection_that_matches_nothing_is_a_finding_and_keeps_the_drill_as_written():
    spec = fleet_spec("{tags: {backup-plan: nightly}}")
    plan = selection.expand(spec, {"data": Discovery(target="data", resources=[])}, default_seed="s", now=NOW)
    assert plan.empty and plan.spec is spec
    (empty,) = [p for p in plan.problems if p.code == "SELECTION_EMPTY"]
    assert empty.severity == "error" and empty.target == "data" and "no aws.ebs resource matches {'tags': {'backup-plan': 'nightly'}}" in empty.message
    unusable = selection.expand(spec, {"data": Discovery(target="data", resources=volumes(2, newest=timedelta(days=400)))}, default_seed="s", now=NOW)
    assert not unusable.empty  # rule latest without max_age: any point will do
    pinned = fleet_spec("{tags: {backup-plan: nightly}}", isolation="isolation: {aws_region: ap-south-1}")
    elsewhere = selection.expand(pinned, {"data": Discovery(target="data", resources=volumes(2))}, default_seed="s", now=NOW)
    assert elsewhere.empty and "2 aws.ebs resource(s) match, none can be drilled now" in elsewhere.problems[0].message


def test_expansion_names_one_target_per_resource_and_repeats_its_validations():
    spec = fleet_spec(
        "{tags: {backup-plan: nightly}, sample: 2}",
        validations="  - {type: command, name: readable, target: data, argv: ['true']}\n  - {type: command, target: data, argv: ['false'], required: false}\n  - {type: http, name: site, url: 'http://example.com'}",
        rule="    restore: {timeout: 7m}\n    recovery_point: {rule: latest, max_age: 2d}",
    )
    plan = selection.expand(spec, {"data": Discovery(target="data", resources=volumes(5))}, default_seed="s", now=NOW)
    names = [t.name for t in plan.spec.targets]
    assert names == plan.records[0].chosen and all(n.startswith("data-vol-a") for n in names)
    for t in plan.spec.targets:
        assert t.select is None and t.source.volume_id == t.name[len("data-"):] and t.source.region == "us-east-1"
        assert t.restore.timeout == timedelta(minutes=7) and t.recovery_point.max_age == timedelta(days=2)
    assert [plan.spec.validation_name(i) for i in range(len(plan.spec.validations))] == (
        [f"readable:{n[len('data-'):]}" for n in names] + [f"command:{n}" for n in names] + ["site"]
    )
    assert selection.resource_keys(plan.spec.targets) == {n: f"aws.ebs:{n[len('data-'):]}" for n in names}


def test_target_names_stay_valid_unique_and_stable():
    long_named = ProtectedResource(kind="gcp.disk", id="p/z/" + "x" * 60, name="x" * 60, source={})
    name = selection.target_name("orders-data", long_named, set())
    assert len(name) <= 40 and re.match(NAME_RE, name) and name == selection.target_name("orders-data", long_named, set())
    r = volumes(1)[0]
    first = selection.target_name("data", r, set())
    assert selection.target_name("data", r, {first}) != first  # taken: a hash keeps it unique


def test_tags_and_exclude_tags():
    sel = fleet_spec("{tags: {backup-plan: '*', tier: prod}, exclude_tags: {drill: skip}}").targets[0].select
    assert selection.tags_match({"backup-plan": "nightly", "tier": "prod"}, sel)
    assert not selection.tags_match({"backup-plan": "nightly", "tier": "dev"}, sel)
    assert not selection.tags_match({"tier": "prod"}, sel)
    assert not selection.tags_match({"backup-plan": "weekly", "tier": "prod", "drill": "skip"}, sel)


# ---------------------------------------------------------------- the drill format


@pytest.mark.parametrize(
    "target, problem",
    [
        ("{name: d, provider: aws.ebs}", "targets[0]: target 'd' needs 'source:' (the resource to restore) or 'select:'"),
        ("{name: d, provider: aws.ebs, source: {volume_id: vol-1}, select: {tags: {a: b}}}", "has both 'source:' and 'select:'"),
        ("{name: d, provider: aws.ebs, select: {zones: [us-east-1a]}}", "select.zones does not apply to aws.ebs targets; they select by tags, exclude_tags, regions"),
        ("{name: d, provider: azure.disk, select: {}}", "select needs something to select by: tags or resource_groups"),
        ("{name: d, provider: postgres, select: {tags: {a: b}}}", "select.tags does not apply to postgres targets; they select by repositories"),
        ("{name: d, provider: sim, select: {tags: {a: b}}}", "sim targets cannot select their resources"),
        ("{name: d, provider: aws.ebs, select: {tags: {a: b}, sample: 0}}", "targets[0].select.sample"),
        ("{name: d, provider: gcp.disk, select: {labels: {a: b}}}", "targets[0].select.labels: unknown key 'labels'"),
    ],
)
def test_a_bad_selection_names_the_field_and_the_fix(target, problem):
    with pytest.raises(SpecError) as exc:
        parse_spec(f"name: x\nobjectives: {{rto: 1h, rpo: 1h}}\ntargets:\n  - {target}\n", "x.yaml")
    assert problem in str(exc.value)


def test_repositories_are_relative_to_the_drill_file_and_survive_the_trip_through_temporal(tmp_path):
    spec = parse_spec(
        "name: x\nobjectives: {rto: 1h, rpo: 1h}\ntargets:\n  - {name: db, provider: postgres, select: {repositories: backups/*}}\n",
        "x.yaml",
        base_dir=tmp_path,
    )
    assert spec.targets[0].select.repositories == [str(tmp_path / "backups" / "*")] and spec.targets[0].source is None
    again = type(spec).model_validate(spec.model_dump(mode="json"))
    assert again.targets[0].select == spec.targets[0].select


# ---------------------------------------------------------------- drills that select, through the worker


def test_postgres_selection_of_two_repositories_drills_both(drill_harness, shop_dsn, tmp_path, cluster_root):
    for name in ("shop-eu", "shop-us"):
        take_backup(shop_dsn, tmp_path / "backups" / name)
    (tmp_path / "backups" / "notes.txt").write_text("not a repository")
    spec = parse_spec(
        """
name: pg-fleet
objectives: {rto: 15m, rpo: 1h}
max_duration: 10m
targets:
  - name: db
    provider: postgres
    select: {repositories: backups/*}
    restore: {jobs: 1, timeout: 5m}
validations:
  - {type: checksum, target: db, name: tables-match}
  - {type: sql, target: db, query: "SELECT count(*) FROM orders", expect: "> 0"}
""",
        "pg-fleet.yaml",
        base_dir=tmp_path,
    )
    result = drill_harness.run(spec, providers={"postgres": PostgresProvider()})

    assert result.verdict == "PASSED", (result.findings, result.validations)
    (record,) = result.selections
    assert record.matched == 2 and sorted(record.chosen) == ["db-shop-eu", "db-shop-us"]
    assert sorted(r.target for r in result.restored) == ["db-shop-eu", "db-shop-us"]
    assert sorted(v.name for v in result.validations) == ["sql:db-shop-eu", "sql:db-shop-us", "tables-match:shop-eu", "tables-match:shop-us"]
    assert all(v.outcome == "PASSED" for v in result.validations)
    assert result.resources == {"db-shop-eu": f"postgres:{tmp_path}/backups/shop-eu", "db-shop-us": f"postgres:{tmp_path}/backups/shop-us"}
    select_event = next(e for e in result.timeline if e.phase == "select")
    assert select_event.outcome == "PASSED" and "db: 2 of 2 matching" in select_event.detail
    assert clusters_left(cluster_root) == []


def test_a_selection_matching_nothing_fails_the_drill_and_creates_nothing(drill_harness, tmp_path, cluster_root):
    spec = parse_spec(
        "name: pg-none\nobjectives: {rto: 15m, rpo: 1h}\ntargets:\n  - {name: db, provider: postgres, select: {repositories: backups/*}}\n"
        "validations:\n  - {type: checksum, target: db}\n",
        "pg-none.yaml",
        base_dir=tmp_path,
    )
    result = drill_harness.run(spec, providers={"postgres": PostgresProvider()})

    assert result.verdict == "FAILED"
    (finding,) = [f for f in result.findings if f.code == "SELECTION_EMPTY"]
    assert finding.target == "db" and "the selection chose nothing" in finding.message
    assert result.restored == [] and result.environments == [] and result.validations == []
    assert next(e for e in result.timeline if e.phase == "select").outcome == "FAILED"
    assert clusters_left(cluster_root) == []
    assert "SELECTION_EMPTY" in Path(result.evidence_path).with_name("report.html").read_text()


# ---------------------------------------------------------------- Azure and GCP fakes


def test_azure_selection_by_tag_and_resource_group(drill_harness):
    fake = AzureFake().start()
    provider = AzureProvider(
        StaticToken(), subscription_id=fake.subscription_id, endpoint=fake.url, location=fake.location,
        connection_verify=fake.ca_path, polling_interval=0.02, ready_poll_initial=0.02, ready_poll_max=0.2,
    )
    try:
        fake.add_group("prod")
        fake.add_group("staging")
        disks = {}
        for rg, name, tags in [
            ("prod", "orders-1", {"backup-plan": "nightly"}),
            ("prod", "orders-2", {"backup-plan": "nightly"}),
            ("prod", "orders-3", {"backup-plan": "nightly"}),
            ("prod", "scratch", {}),
            ("prod", "legacy", {"backup-plan": "nightly", "drill": "skip"}),
            ("staging", "orders-s", {"backup-plan": "nightly"}),
        ]:
            disks[name] = fake.add_disk(rg, name, 16)
            fake.resources[disks[name].lower()]["tags"] = tags
            fake.add_snapshot(rg, f"{name}-snap", disks[name], NOW - timedelta(hours=3))
        spec = f"""
name: azure-fleet
objectives: {{rto: 1h, rpo: 1d}}
isolation: {{azure_location: {fake.location}}}
targets:
  - name: orders
    provider: azure.disk
    select: {{tags: {{backup-plan: nightly}}, exclude_tags: {{drill: skip}}, resource_groups: [prod], sample: 2}}
validations:
  - type: command
    target: orders
    argv: ["{sys.executable}", "-c", "import os, sys; sys.exit(0 if os.environ['DRDRILL_DISK_STATE'] == 'Unattached' else 1)"]
    timeout: 30s
"""
        result = drill_harness.run(spec, providers={"azure": provider})

        assert result.verdict == "PASSED", (result.findings, result.validations)
        (record,) = result.selections
        assert sorted(c.name for c in record.candidates) == ["orders-1", "orders-2", "orders-3"]  # tag, group and exclusion applied
        assert record.scope == fake.location and len(record.chosen) == 2
        assert sorted(r.target for r in result.restored) == sorted(record.chosen)
        assert {p.metadata["source_disk_id"].lower() for p in result.recovery_points} <= {disks[f"orders-{i}"].lower() for i in (1, 2, 3)}
        assert [v.outcome for v in result.validations] == ["PASSED", "PASSED"]
    finally:
        provider.close()
        fake.stop()
    assert fake.drill_state() == []
    assert not [a for a in fake.actions if not covered_by_role(a)]  # still within deploy/azure/role.json


def test_gcp_selection_by_label_and_zone(drill_harness):
    fake = ComputeFake().start()
    gcp = make_provider(fake)
    try:
        project = "acme-prod"
        for zone, name, labels in [
            ("us-central1-a", "orders-1", {"backup-plan": "nightly"}),
            ("us-central1-a", "orders-2", {"backup-plan": "nightly"}),
            ("us-central1-a", "tmp", {}),
            ("europe-west1-b", "orders-eu", {"backup-plan": "nightly"}),
        ]:
            disk = fake.seed_disk(project, zone, name)
            disk["labels"] = labels
            fake.seed_snapshot(project, f"{name}-nightly", disk, NOW - timedelta(hours=5))
        spec = f"""
name: gcp-fleet
objectives: {{rto: 30m, rpo: 1d}}
max_duration: 10m
targets:
  - name: disks
    provider: gcp.disk
    select: {{tags: {{backup-plan: nightly}}, project: {project}, zones: [us-central1-a]}}
    restore: {{timeout: 2m}}
isolation: {{gcp_project: {project}, allow_ingress_from: [192.0.2.0/24]}}
validations:
  - name: ready
    type: command
    target: disks
    argv: ["{sys.executable}", "-c", "import os, sys; sys.exit(0 if os.environ['DRDRILL_STATUS'] == 'READY' else 1)"]
    timeout: 30s
"""
        result = drill_harness.run(spec, providers={"gcp": gcp})

        assert result.verdict == "PASSED", (result.findings, result.validations)
        (record,) = result.selections
        assert sorted(c.id for c in record.candidates) == [f"{project}/us-central1-a/orders-1", f"{project}/us-central1-a/orders-2"]
        assert sorted(record.chosen) == ["disks-orders-1", "disks-orders-2"] and record.scope == "us-central1"
        assert sorted(v.name for v in result.validations) == ["ready:orders-1", "ready:orders-2"]
        assert all(v.outcome == "PASSED" for v in result.validations)
        assert result.resources["disks-orders-1"] == f"gcp.disk:{project}/us-central1-a/orders-1"
    finally:
        gcp.close()
        fake.stop()
    assert fake.leftovers() == []
