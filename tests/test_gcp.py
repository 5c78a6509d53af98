"""The GCP provider, end to end through the real worker, against the Compute REST fake (tests/gcp_fake.py).

Each test checks what a user sees: the verdict, the findings, the isolation proof, and that the
fake holds nothing but the seeded production resources afterwards.
"""

from __future__ import annotations

import ipaddress
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from google.auth.credentials import AnonymousCredentials

from drdrill.core.models import DrillContext
from drdrill.providers.base import ProviderError
from drdrill.providers.gcp.provider import (
    LABEL_DRILL_ID,
    LABEL_EXPIRES_AT,
    GcpProvider,
    gcp_labels,
    gcp_name,
    label_value,
)
from drdrill.providers.spec import load_spec, parse_spec
from tests.gcp_fake import LABEL_KEY_RE, LABEL_VALUE_RE, NAME_RE, ComputeFake

REPO = Path(__file__).resolve().parent.parent
PROJECT, ZONE = "acme-prod", "us-central1-a"
NOW = datetime.now(timezone.utc)


def make_provider(fake: ComputeFake, **kw) -> GcpProvider:
    return GcpProvider(
        credentials=AnonymousCredentials(),
        api_endpoint=fake.endpoint,
        project=PROJECT,
        poll_initial=0.01,
        poll_max=0.05,
        backoff_initial=0.01,
        backoff_max=0.05,
        **kw,
    )


@pytest.fixture
def fake():
    """The fake, seeded with production: a database disk, a web instance, nightly snapshots."""
    f = ComputeFake().start()
    data = f.seed_disk(PROJECT, ZONE, "orders-db-data", size_gb=20)
    boot = f.seed_disk(PROJECT, ZONE, "web-1", size_gb=10)
    web_data = f.seed_disk(PROJECT, ZONE, "web-1-data", size_gb=10)
    f.seed_instance(PROJECT, ZONE, "web-1", ["web-1", "web-1-data"])
    for days in (3, 2, 1):
        t = NOW - timedelta(days=days - 1, hours=3)
        tag = f"d{days}"
        f.seed_snapshot(PROJECT, f"orders-db-data-{tag}", data, t, {"backup": "nightly"})
        f.seed_snapshot(PROJECT, f"web-1-{tag}", boot, t, {"backup": "nightly"})
        f.seed_snapshot(PROJECT, f"web-1-data-{tag}", web_data, t + timedelta(minutes=2), {"backup": "nightly"})
    # Noise the rules must ignore: an unlabelled newer snapshot, a snapshot still being created.
    f.seed_snapshot(PROJECT, "orders-db-data-manual", data, NOW - timedelta(minutes=30), {})
    f.seed_snapshot(PROJECT, "orders-db-data-pending", data, NOW - timedelta(minutes=5), {"backup": "nightly"}, status="CREATING")
    yield f
    f.stop()


@pytest.fixture
def gcp(fake):
    provider = make_provider(fake)
    yield provider
    provider.close()
    assert fake.leftovers() == [], "the drill left resources behind"


def _ctx(name: str = "t") -> DrillContext:
    return DrillContext(drill_id=f"{name}-{uuid.uuid4().hex[:6]}", drill_name=name, declared=NOW, expires_at=NOW + timedelta(hours=6))


DISK_DRILL = f"""
name: gcp-disk-inline
objectives: {{rto: 30m, rpo: 2d}}
max_duration: 10m
targets:
  - name: orders-data
    provider: gcp.disk
    source: {{project: {PROJECT}, zone: {ZONE}, disk: orders-db-data, snapshot_labels: {{backup: nightly}}}}
    restore: {{timeout: 2m}}
isolation: {{gcp_project: {PROJECT}, allow_ingress_from: [192.0.2.0/24]}}
validations:
  - name: disk-ready
    type: command
    target: orders-data
    argv: ["{sys.executable}", "-c", "import os, sys; sys.exit(0 if os.environ['DRDRILL_STATUS'] == 'READY' else 1)"]
    timeout: 30s
"""

INSTANCE_DRILL = f"""
name: gcp-instance-inline
objectives: {{rto: 30m, rpo: 2d}}
max_duration: 10m
targets:
  - name: web
    provider: gcp.instance
    source: {{project: {PROJECT}, zone: {ZONE}, instance: web-1, snapshot_labels: {{backup: nightly}}}}
    restore: {{timeout: 2m}}
isolation: {{gcp_project: {PROJECT}, gcp_region: us-central1, network_cidr: 10.77.0.0/24}}
validations:
  - name: instance-up
    type: command
    target: web
    argv: ["{sys.executable}", "-c", "import os, sys; sys.exit(0 if os.environ['DRDRILL_STATUS'] == 'RUNNING' and os.environ['DRDRILL_INTERNAL_IP'] else 1)"]
    timeout: 30s
"""


# ---------------------------------------------------------------- end to end, through the worker


def test_disk_drill_example_passes_and_leaves_nothing(drill_harness, fake, gcp):
    spec = load_spec(REPO / "drills" / "gcp-disk.yaml")
    result = drill_harness.run(spec, providers={"gcp": gcp})

    assert result.verdict == "PASSED", result.findings
    assert result.findings == []
    point = result.recovery_points[0]
    # The newest READY snapshot labelled backup=nightly (not the manual or the pending one).
    assert point.id == "orders-db-data-d1"
    assert [c.outcome for c in result.isolation[0].checks] == ["PASSED"] * len(result.isolation[0].checks)
    assert {c.name for c in result.isolation[0].checks} >= {"no default internet route", "egress denied", "ingress only from the validation sources"}
    restored = result.restored[0]
    assert restored.endpoint["status"] == "READY" and restored.endpoint["source_snapshot"] == "orders-db-data-d1"
    assert restored.endpoint["size_gb"] == 20
    assert [v.outcome for v in result.validations] == ["PASSED"]
    deleted = " ".join(result.teardown[0].deleted)
    assert "disk acme-prod/us-central1-a/drdrill-" in deleted and "network acme-prod/drdrill-" in deleted
    assert result.teardown[0].refused == []


def test_instance_drill_example_passes_and_leaves_nothing(drill_harness, fake, gcp):
    result = drill_harness.run(REPO / "drills" / "gcp-instance.yaml", providers={"gcp": gcp})

    assert result.verdict == "PASSED", result.findings
    point = result.recovery_points[0]
    assert point.id == "web-1-d1+web-1-data-d1"
    assert [s["device_name"] for s in point.metadata["snapshots"]] == ["web-1", "web-1-data"]
    ep = result.restored[0].endpoint
    assert ep["status"] == "RUNNING" and ep["external_ip"] == ""
    assert ipaddress.ip_address(ep["internal_ip"]) in ipaddress.ip_network("10.213.0.0/16")
    assert ep["network"] == gcp_name_from(result.drill_id, "net")
    assert [v.outcome for v in result.validations] == ["PASSED"]
    deleted = result.teardown[0].deleted
    assert sum(d.startswith("disk ") for d in deleted) == 2 and sum(d.startswith("instance ") for d in deleted) == 1
    assert sum(d.startswith("firewall ") for d in deleted) == 3


def gcp_name_from(drill_id: str, suffix: str) -> str:
    return gcp_name(DrillContext(drill_id=drill_id, drill_name="x", declared=NOW, expires_at=NOW), suffix=suffix)


def test_capacity_failure_mid_restore_still_tears_down(drill_harness, fake, gcp):
    # The disks are restored, then the zone has no capacity for the instance.
    fake.fail_operation("compute.instances.insert", code="ZONE_RESOURCE_POOL_EXHAUSTED")
    result = drill_harness.run(INSTANCE_DRILL, providers={"gcp": gcp})

    assert result.verdict == "FAILED"
    codes = [f.code for f in result.findings]
    assert "GCP_CAPACITY_UNAVAILABLE" in codes
    assert "ZONE_RESOURCE_POOL_EXHAUSTED" in next(f.message for f in result.findings if f.code == "GCP_CAPACITY_UNAVAILABLE")
    assert [v.outcome for v in result.validations] == ["NOT_RUN"]
    # The two disks restored before the failure were found by label and deleted.
    assert sum(d.startswith("disk ") for d in result.teardown[0].deleted) == 2
    # (the gcp fixture asserts the fake is empty of drill resources)


def test_rate_and_quota_errors_are_retried(drill_harness, fake, gcp):
    fake.inject("compute.snapshots.list", status=429, times=2)
    fake.inject("compute.disks.insert", status=403, reason="quotaExceeded", times=1)
    fake.inject("compute.networks.insert", status=403, reason="rateLimitExceeded", times=1)
    fake.inject("compute.zoneOperations.get", status=503, times=1)
    result = drill_harness.run(DISK_DRILL, providers={"gcp": gcp})

    assert result.verdict == "PASSED", result.findings
    assert fake.calls.count("compute.snapshots.list") >= 3
    assert fake.calls.count("compute.disks.insert") == 2
    assert fake.calls.count("compute.networks.insert") == 2


def test_missing_snapshots_fail_the_drill_and_create_nothing(drill_harness, fake, gcp):
    spec = DISK_DRILL.replace("backup: nightly", "backup: weekly")
    result = drill_harness.run(spec, providers={"gcp": gcp})

    assert result.verdict == "FAILED"
    finding = next(f for f in result.findings if f.code == "RECOVERY_POINT_NOT_FOUND")
    assert "labelled {'backup': 'weekly'}" in finding.message
    assert not any(c.endswith(".insert") for c in fake.calls)


def test_stale_recovery_point_is_a_finding(drill_harness, fake, gcp):
    spec = DISK_DRILL.replace("    restore: {timeout: 2m}", "    restore: {timeout: 2m}\n    recovery_point: {rule: latest, max_age: 1h}")
    result = drill_harness.run(spec, providers={"gcp": gcp})

    assert result.verdict == "FAILED"
    assert [f.code for f in result.findings] == ["RECOVERY_POINT_STALE"]
    assert [v.outcome for v in result.validations] == ["PASSED"]


# ---------------------------------------------------------------- the provider directly


def _disk_target(rule: dict | None = None, labels: str = "{backup: nightly}"):
    rp = ""
    if rule:
        rp = "\n    recovery_point: {" + ", ".join(f"{k}: {v}" for k, v in rule.items()) + "}"
    spec = parse_spec(
        f"""
name: t
objectives: {{rto: 1h, rpo: 1d}}
targets:
  - name: orders-data
    provider: gcp.disk
    source: {{project: {PROJECT}, zone: {ZONE}, disk: orders-db-data, snapshot_labels: {labels}}}{rp}
"""
    )
    return spec.targets[0]


def test_recovery_point_rules(fake, gcp):
    ctx = _ctx()
    assert gcp.find_recovery_point(ctx, _disk_target()).id == "orders-db-data-d1"
    # Without a label filter the newer manual snapshot counts; the CREATING one never does.
    assert gcp.find_recovery_point(ctx, _disk_target(labels="{}")).id == "orders-db-data-manual"
    at = (NOW - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    point = gcp.find_recovery_point(ctx, _disk_target({"rule": "at", "at": at}))
    assert point.id == "orders-db-data-d2"
    assert point.consistent_time == datetime.fromisoformat(next(s["creationTimestamp"] for s in fake.resources("snapshots") if s["name"] == "orders-db-data-d2"))
    picks = {gcp.find_recovery_point(ctx, _disk_target({"rule": "random", "within": "4d", "seed": s})).id for s in range(12)}
    assert picks <= {"orders-db-data-d1", "orders-db-data-d2", "orders-db-data-d3"} and len(picks) > 1
    same = gcp.find_recovery_point(ctx, _disk_target({"rule": "random", "within": "4d"})).id
    assert same == gcp.find_recovery_point(ctx, _disk_target({"rule": "random", "within": "4d"})).id


def test_snapshots_survive_the_loss_of_their_source_disk(fake, gcp):
    # The disaster: the source disk is gone. Its snapshots still name it, and still restore.
    with fake.lock:
        fake.store.items.pop((PROJECT, "disks", f"zones/{ZONE}", "orders-db-data"))
    assert gcp.find_recovery_point(_ctx(), _disk_target()).id == "orders-db-data-d1"


def test_restore_and_isolation_are_idempotent_and_teardown_twice_is_harmless(fake, gcp):
    ctx = _ctx("idem")
    spec = parse_spec(INSTANCE_DRILL)
    target = spec.targets[0]
    point = gcp.find_recovery_point(ctx, target)
    env = gcp.create_isolation(ctx, spec.isolation, spec.targets)
    assert gcp.create_isolation(ctx, spec.isolation, spec.targets) == env  # 409s: get and go on
    first = gcp.restore(ctx, target, point, env)
    second = gcp.restore(ctx, target, point, env)
    assert first.id == second.id
    assert len([r for r in fake.resources("instances") if r["name"].startswith("drdrill-")]) == 1
    ready = gcp.wait_ready(ctx, target, second, timeout=30)
    assert ready.ready and ready.endpoint["status"] == "RUNNING"
    report = gcp.teardown(ctx, env)
    assert len(report.deleted) == 1 + 2 + 2 + 1 + 1  # instance, disks, firewalls (no ingress allowed), subnet, network
    again = gcp.teardown(ctx, env)
    assert again.deleted == [] and again.refused == [] and again.errors == []


def test_every_created_resource_is_labelled_and_validly_named(fake, gcp):
    ctx = _ctx("Label_Check.With.An.Unusually-Long-Drill-Identifier-That-Goes-On")
    spec = parse_spec(INSTANCE_DRILL)
    target = spec.targets[0]
    env = gcp.create_isolation(ctx, spec.isolation, spec.targets)
    gcp.restore(ctx, target, gcp.find_recovery_point(ctx, target), env)
    made = [r for c in ("disks", "instances") for r in fake.resources(c) if r["name"].startswith("drdrill-")]
    assert len(made) == 3
    for r in made:
        assert r["labels"][LABEL_DRILL_ID] == label_value(ctx.drill_id)
        assert int(r["labels"][LABEL_EXPIRES_AT]) == int(ctx.expires_at.timestamp())
        assert all(LABEL_KEY_RE.match(k) and LABEL_VALUE_RE.match(v) for k, v in r["labels"].items())
    for c in ("networks", "subnetworks", "firewalls", "disks", "instances"):
        for r in fake.resources(c):
            assert NAME_RE.match(r["name"])
    assert all(LABEL_DRILL_ID in r["description"] for c in ("networks", "subnetworks", "firewalls") for r in fake.resources(c))
    gcp.teardown(ctx, env)


def test_label_mapping():
    ctx = DrillContext(drill_id="Q4:Orders/DR#1", drill_name="x", declared=NOW, expires_at=datetime(2027, 1, 1, tzinfo=timezone.utc))
    labels = gcp_labels(ctx, "orders-data")
    assert labels == {"drdrill-drill-id": "q4-orders-dr-1", "drdrill-expires-at": "1798761600", "drdrill-managed": "true", "drdrill-target": "orders-data"}
    long = label_value("x" * 100)
    assert len(long) == 63 and long != label_value("x" * 99) and LABEL_VALUE_RE.match(long)
    assert NAME_RE.match(gcp_name(ctx, "orders-data", "disk0"))


def test_name_taken_by_someone_else_is_refused(fake, gcp):
    ctx = _ctx("taken")
    spec = parse_spec(DISK_DRILL)
    # Someone else's network squats on the drill's deterministic name.
    with fake.lock:
        fake._new("networks", PROJECT, "global", gcp_name(ctx, suffix="net"), {"autoCreateSubnetworks": False, "subnetworks": [], "description": "not ours"})
        fake.store.seeded.add((PROJECT, "networks", "global", gcp_name(ctx, suffix="net")))
    with pytest.raises(ProviderError) as err:
        gcp.create_isolation(ctx, spec.isolation, spec.targets)
    assert err.value.code == "NAME_TAKEN"
    report = gcp.teardown(ctx, _bare_env(ctx))
    refused = [o for o in report.outcomes if o.result == "refused"]
    assert [(o.kind, o.id) for o in refused] == [("network", f"{PROJECT}/{gcp_name(ctx, suffix='net')}")]
    assert ctx.drill_id in refused[0].reason and report.deleted == []


def _bare_env(ctx):
    from drdrill.core.models import Environment

    return Environment(family="gcp", drill_id=ctx.drill_id, id=ctx.resource_name())


def test_half_created_environment_is_torn_down_from_the_drill_id_alone(fake, gcp):
    ctx = _ctx("half")
    spec = parse_spec(DISK_DRILL)
    fake.inject("compute.firewalls.insert", status=400, reason="invalid", times=None)
    with pytest.raises(ProviderError):
        gcp.create_isolation(ctx, spec.isolation, spec.targets)
    assert fake.leftovers()  # a network and a subnetwork were made
    # What the workflow passes when create_isolation failed: an Environment without details.
    report = gcp.teardown(ctx, _bare_env(ctx))
    assert {d.split()[0] for d in report.deleted} == {"subnetwork", "network"}


def test_a_network_holding_someone_elses_firewall_rule_is_kept(fake, gcp):
    ctx = _ctx("shared")
    spec = parse_spec(DISK_DRILL)
    env = gcp.create_isolation(ctx, spec.isolation, spec.targets)
    # Someone adds a rule of their own to the drill's network.
    with fake.lock:
        fake._new("firewalls", PROJECT, "global", "ops-debug", {
            "network": env.details["network_self_link"], "direction": "INGRESS", "priority": 1000,
            "allowed": [{"IPProtocol": "tcp"}], "sourceRanges": ["10.0.0.0/8"], "description": "ops debugging",
        })
    report = gcp.teardown(ctx, env)
    results = {(o.kind, o.id.rsplit("/", 1)[-1]): o for o in report.outcomes}
    assert results[("firewall", "ops-debug")].result == "refused"
    assert sorted(n for (k, n), o in results.items() if k == "firewall" and o.result == "deleted") == sorted(env.details["firewalls"])
    for kept in (("subnetwork", env.details["subnetwork"]), ("network", env.details["network"])):
        assert results[kept].result == "refused" and "kept" in results[kept].reason
    # Once their rule is gone, the next attempt (the workflow retries teardown) removes the rest.
    with fake.lock:
        fake.store.items.pop((PROJECT, "firewalls", "global", "ops-debug"))
    again = gcp.teardown(ctx, env)
    assert sorted(o.kind for o in again.outcomes if o.result == "deleted") == ["network", "subnetwork"]
    assert again.refused == []


def test_a_refused_list_filter_falls_back_to_reading_everything(fake, gcp):
    ctx = _ctx("filter")
    spec = parse_spec(DISK_DRILL)
    target = spec.targets[0]
    env = gcp.create_isolation(ctx, spec.isolation, spec.targets)
    gcp.restore(ctx, target, gcp.find_recovery_point(ctx, target), env)
    bad = "Invalid value for field 'filter': '(labels.drdrill-drill-id = ...)'. Invalid list filter expression."
    fake.inject("compute.disks.aggregatedList", status=400, reason="invalid", message=bad, times=1)
    report = gcp.teardown(ctx, env)
    assert any(d.startswith("disk ") for d in report.deleted)
    # Production disks were read too, and left alone (they carry no drill label).
    assert report.refused == []


def test_verify_isolation_finds_a_route_out(fake, gcp):
    ctx = _ctx("leak")
    spec = parse_spec(DISK_DRILL)
    env = gcp.create_isolation(ctx, spec.isolation, spec.targets)
    proof = gcp.verify_isolation(ctx, env)
    assert proof.outcome == "PASSED"
    # Someone re-adds a default route to the internet gateway.
    with fake.lock:
        fake._new("routes", PROJECT, "global", "sneaky-default", {
            "network": env.details["network_self_link"], "destRange": "0.0.0.0/0", "priority": 1000,
            "nextHopGateway": f"https://www.googleapis.com/compute/v1/projects/{PROJECT}/global/gateways/default-internet-gateway",
        })
    proof = gcp.verify_isolation(ctx, env)
    assert proof.outcome == "FAILED"
    failed = {c.name for c in proof.checks if c.outcome == "FAILED"}
    assert failed == {"no default internet route", "no route leaves the network"}
    gcp.teardown(ctx, env)  # the route goes with its network


def test_orphans_are_listed_and_swept(fake, gcp):
    ctx = _ctx("orphan")
    spec = parse_spec(INSTANCE_DRILL)
    target = spec.targets[0]
    env = gcp.create_isolation(ctx, spec.isolation, spec.targets)
    gcp.restore(ctx, target, gcp.find_recovery_point(ctx, target), env)

    # While the drill runs and has not expired, nothing is an orphan.
    assert gcp.list_orphans(NOW, {ctx.drill_id}) == []
    # Its workflow is gone: everything it made is an orphan (production is never listed).
    orphans = gcp.list_orphans(NOW, set())
    kinds = sorted(o.kind for o in orphans)
    assert kinds == ["disk", "disk", "firewall", "firewall", "instance", "network", "subnetwork"]
    assert {o.drill_id for o in orphans} == {label_value(ctx.drill_id)}
    # Still running but past its expiry: orphans too.
    assert len(gcp.list_orphans(ctx.expires_at + timedelta(seconds=1), {ctx.drill_id})) == len(orphans)

    # Sweep the network first: its firewall rules and subnetwork go with it once the
    # instance is gone; before that it is in use and the error says it will be retried.
    network = next(o for o in orphans if o.kind == "network")
    with pytest.raises(ProviderError) as err:
        gcp.delete_orphan(network)
    assert err.value.retryable
    # What `drdrill sweep` runs: list, then delete in the order listed (dependents first).
    outcomes = [gcp.delete_orphan(o) for o in gcp.list_orphans(NOW, set())]
    assert sorted(o.kind for o in outcomes) == kinds
    assert [o.result for o in outcomes] == ["deleted"] * len(kinds), outcomes
    assert gcp.list_orphans(NOW, set()) == []


def test_sweep_refuses_a_resource_whose_label_changed(fake, gcp):
    ctx = _ctx("relabel")
    spec = parse_spec(DISK_DRILL)
    target = spec.targets[0]
    env = gcp.create_isolation(ctx, spec.isolation, spec.targets)
    gcp.restore(ctx, target, gcp.find_recovery_point(ctx, target), env)
    disk = next(o for o in gcp.list_orphans(NOW, set()) if o.kind == "disk")
    # Between listing and deleting, someone adopts the disk (relabels it).
    _relabel(fake, disk.id, {"owner": "someone-else"})
    outcome = gcp.delete_orphan(disk)
    assert outcome.result == "refused" and ctx.drill_id in outcome.reason
    report = gcp.teardown(ctx, env)
    assert report.refused == [] and all(not d.startswith("disk ") for d in report.deleted)  # not found by label: left alone


def _relabel(fake, disk_id: str, labels: dict) -> None:
    """Someone adopts a drill's disk: it gets their labels, and it is theirs now (no leftover)."""
    project, zone, name = disk_id.split("/")
    key = (project, "disks", f"zones/{zone}", name)
    with fake.lock:
        fake.store.items[key]["labels"] = labels
        fake.store.seeded.add(key)


def _left_behind_disk(fake, ctx: DrillContext) -> str:
    """A restored disk a crashed worker left behind, labelled as `restore` labels it."""
    name = gcp_name(ctx, "orders-data")
    with fake.lock:
        fake._new("disks", PROJECT, f"zones/{ZONE}", name, {"sizeGb": "20", "status": "READY", "labels": gcp_labels(ctx, "orders-data")})
    return name


def test_sweep_deletes_an_ended_drills_disk_and_refuses_a_relabelled_one(fake, gcp):
    # A drill id GCP labels cannot hold verbatim (upper case) is still recognised as running.
    ended, adopted, running = _ctx("ended"), _ctx("adopted"), _ctx("Running")
    names = {c.drill_id: _left_behind_disk(fake, c) for c in (ended, adopted, running)}

    orphans = {o.drill_id: o for o in gcp.list_orphans(NOW, {running.drill_id})}
    assert sorted(orphans) == sorted([ended.drill_id, adopted.drill_id])
    assert orphans[ended.drill_id].kind == "disk" and orphans[ended.drill_id].id == f"{PROJECT}/{ZONE}/{names[ended.drill_id]}"
    assert orphans[ended.drill_id].expires_at == ended.expires_at.replace(microsecond=0)
    assert orphans[ended.drill_id].details["reason"] == "drill not active"

    # Between listing and deleting, someone adopts one of the disks.
    _relabel(fake, orphans[adopted.drill_id].id, {"owner": "someone-else"})
    deleted = gcp.delete_orphan(orphans[ended.drill_id])
    refused = gcp.delete_orphan(orphans[adopted.drill_id])

    assert (deleted.kind, deleted.id, deleted.result) == ("disk", orphans[ended.drill_id].id, "deleted")
    assert refused.result == "refused" and adopted.drill_id in refused.reason
    left = {d["name"] for d in fake.resources("disks")}
    assert names[ended.drill_id] not in left and names[adopted.drill_id] in left and names[running.drill_id] in left
    # The running drill's own teardown finds its disk by label and deletes it.
    report = gcp.teardown(running, _bare_env(running))
    assert [(o.kind, o.result) for o in report.outcomes if o.kind == "disk"] == [("disk", "deleted")]


def test_from_environment_uses_the_configured_endpoint(fake):
    env = {
        "DRDRILL_GCP_API_ENDPOINT": fake.endpoint,
        "DRDRILL_GCP_ANONYMOUS": "1",
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "DRDRILL_GCP_REGION": "us-central1",
        "DRDRILL_GCP_POLL_INITIAL": "0.01",
    }
    provider = GcpProvider.from_environment(env, {})
    try:
        assert provider.project == PROJECT and provider.region == "us-central1" and provider.sweep_projects == [PROJECT]
        assert provider.find_recovery_point(_ctx(), _disk_target()).id == "orders-db-data-d1"
        assert provider.list_orphans(NOW, set()) == []
    finally:
        provider.close()
