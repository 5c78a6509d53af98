"""The Azure provider against a fake ARM endpoint (tests/azure_fake.py) speaking Azure's protocol,
through the real azure-mgmt-* clients and, for whole drills, the real Temporal worker."""

from __future__ import annotations

import fnmatch
import json
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from azure.core.credentials import AccessToken

from drdrill.core.models import DrillContext, Environment, Orphan
from drdrill.providers.azure.provider import AzureProvider
from drdrill.providers.base import ProviderError
from drdrill.providers.spec import load_spec, parse_spec

from tests.azure_fake import TOKEN, AzureFake

REPO = Path(__file__).resolve().parent.parent
ROLE = json.loads((REPO / "deploy" / "azure" / "role.json").read_text())


class StaticToken:
    """A credential for the fake: the SDK's bearer-token policy asks it for a token per scope."""

    def __init__(self) -> None:
        self.scopes: set[str] = set()

    def get_token(self, *scopes, **kwargs) -> AccessToken:
        self.scopes.update(scopes)
        return AccessToken(TOKEN, int(time.time()) + 3600)


def covered_by_role(action: str) -> bool:
    allowed = [a.lower() for a in ROLE["Actions"]]
    denied = [a.lower() for a in ROLE["NotActions"]]
    a = action.lower()
    return any(fnmatch.fnmatchcase(a, p) for p in allowed) and not any(fnmatch.fnmatchcase(a, p) for p in denied)


@pytest.fixture
def fake():
    f = AzureFake().start()
    yield f
    f.stop()
    assert f.drill_state() == [], "the test left drill resources behind"
    # Least privilege: every ARM action this test drove is in deploy/azure/role.json.
    missing = sorted(a for a in f.actions if not covered_by_role(a))
    assert not missing, f"deploy/azure/role.json lacks {missing}"


@pytest.fixture
def provider(fake):
    p = AzureProvider(
        StaticToken(),
        subscription_id=fake.subscription_id,
        endpoint=fake.url,
        location=fake.location,
        connection_verify=fake.ca_path,  # the fake's certificate, generated for this test
        polling_interval=0.02,
        ready_poll_initial=0.02,
        ready_poll_max=0.2,
    )
    yield p
    p.close()


NOW = datetime.now(timezone.utc)


@pytest.fixture
def prod(fake):
    """A production resource group: a VM with an OS disk and two data disks, a standalone data disk, snapshots."""
    fake.add_group("prod")
    ids = {
        "disk": fake.add_disk("prod", "orders-data", 64),
        "os": fake.add_disk("prod", "app-os", 30, os_type="Linux"),
        "d0": fake.add_disk("prod", "app-data0", 128),
        "d1": fake.add_disk("prod", "app-data1", 16),
    }
    ids["vm"] = fake.add_vm("prod", "app", ids["os"], [ids["d0"], ids["d1"]])
    for h in (2, 26, 50):  # daily snapshots, the newest 2h old
        t = NOW - timedelta(hours=h)
        fake.add_snapshot("prod", f"orders-daily-{h}", ids["disk"], t, {"policy": "daily"})
        fake.add_snapshot("prod", f"app-os-{h}", ids["os"], t, {"policy": "daily"})
        fake.add_snapshot("prod", f"app-d0-{h}", ids["d0"], t + timedelta(minutes=1), {"policy": "daily"})
        fake.add_snapshot("prod", f"app-d1-{h}", ids["d1"], t + timedelta(minutes=2), {"policy": "daily"})
    # A newer ad-hoc snapshot without the policy tag: `snapshot_tags` must skip it.
    fake.add_snapshot("prod", "orders-adhoc", ids["disk"], NOW - timedelta(minutes=30))
    # A data-disk snapshot with no OS snapshot near it: not a complete VM recovery point.
    fake.add_snapshot("prod", "app-d0-lonely", ids["d0"], NOW - timedelta(minutes=20), {"policy": "daily"})
    return ids


def ctx(drill_id: str = "unit-0001", declared: datetime = NOW) -> DrillContext:
    return DrillContext(drill_id=drill_id, drill_name="unit", declared=declared, expires_at=declared + timedelta(hours=6))


def py(script: str) -> str:
    return json.dumps([sys.executable, "-c", script])


# The command validations read what wait_ready reported about the restored resource
# (DRDRILL_<KEY> variables); see drills/azure-*.yaml for the checks used against real Azure.
DISK_CHECK = (
    "import os,sys; e=os.environ; "
    "ok = e['DRDRILL_DISK_STATE']=='Unattached' and e['DRDRILL_SIZE_GB']=='64' "
    "and e['DRDRILL_SOURCE_SNAPSHOT_ID'].endswith('/snapshots/orders-daily-2') "
    "and '/resourceGroups/drdrill-' in e['DRDRILL_DISK_ID']; "
    "print(e['DRDRILL_DISK_ID']); sys.exit(0 if ok else 1)"
)
VM_CHECK = (
    "import ipaddress,os,sys; e=os.environ; "
    "ok = ipaddress.ip_address(e['DRDRILL_PRIVATE_IP']) in ipaddress.ip_network('10.213.0.0/24') "
    "and e['DRDRILL_POWER_STATE']=='running' and e['DRDRILL_PUBLIC_IP']=='False'; "
    "print(e['DRDRILL_PRIVATE_IP']); sys.exit(0 if ok else 1)"
)


def disk_drill(prod, name: str = "azure-disk-test") -> str:
    return f"""
name: {name}
objectives: {{rto: 1h, rpo: 1d}}
isolation: {{allow_ingress_from: [10.50.0.0/24], azure_location: westeurope}}
targets:
  - name: orders
    provider: azure.disk
    source: {{disk_id: "{prod['disk']}", snapshot_tags: {{policy: daily}}}}
    recovery_point: {{rule: latest, max_age: 1d}}
validations:
  - type: command
    name: restored-disk
    target: orders
    argv: {py(DISK_CHECK)}
    timeout: 30s
"""


def vm_drill(prod, name: str = "azure-vm-test") -> str:
    return f"""
name: {name}
objectives: {{rto: 1h, rpo: 1d}}
isolation: {{allow_ingress_from: [10.50.0.0/24]}}
targets:
  - name: app
    provider: azure.vm
    source: {{vm_id: "{prod['vm']}", vm_size: Standard_B2s, snapshot_tags: {{policy: daily}}}}
validations:
  - type: command
    name: restored-vm
    target: app
    argv: {py(VM_CHECK)}
    timeout: 30s
"""


# ---------------------------------------------------------------- whole drills through the worker


def test_disk_drill_passes_end_to_end_and_leaves_nothing(drill_harness, fake, provider, prod):
    result = drill_harness.run(disk_drill(prod), providers={"azure": provider})

    assert result.verdict == "PASSED", (result.findings, result.validations)
    (point,) = result.recovery_points
    assert point.id.endswith("/snapshots/orders-daily-2")  # newest tagged; the untagged ad-hoc one is skipped
    assert point.candidates == 3
    assert [c.outcome for p in result.isolation for c in p.checks] == ["PASSED"] * 6
    (restored,) = result.restored
    assert restored.endpoint["source_snapshot_id"] == point.id
    assert [v.outcome for v in result.validations] == ["PASSED"]
    (report,) = result.teardown
    assert report.deleted and report.deleted[-1].endswith(f"/resourceGroups/drdrill-{result.drill_id}")
    assert fake.drill_state() == []


def test_vm_drill_passes_end_to_end_and_leaves_nothing(drill_harness, fake, provider, prod):
    result = drill_harness.run(vm_drill(prod), providers={"azure": provider})

    assert result.verdict == "PASSED", (result.findings, result.validations)
    (point,) = result.recovery_points
    assert point.id.endswith("/snapshots/app-os-2")
    assert [d["snapshot_id"].rsplit("/", 1)[1] for d in point.metadata["data"]] == ["app-d0-2", "app-d1-2"]
    assert point.consistent_time == NOW - timedelta(hours=2)  # a VM is as old as its oldest disk snapshot
    (vm,) = result.restored
    assert vm.endpoint["power_state"] == "running" and vm.endpoint["public_ip"] is False
    assert vm.endpoint["private_ip"].startswith("10.213.0.")
    assert len(vm.details["data_disk_ids"]) == 2
    assert [v.outcome for v in result.validations] == ["PASSED"]
    deleted = result.teardown[0].deleted
    assert sum("/virtualMachines/" in d for d in deleted) == 1
    assert sum("/disks/" in d for d in deleted) == 3
    assert sum("/networkInterfaces/" in d for d in deleted) == 1
    assert fake.drill_state() == []


def test_failure_mid_restore_still_tears_down(drill_harness, fake, provider, prod):
    # The VM's creation fails permanently (a size that is not available), after its disks and NIC exist.
    fake.fail("PUT", "Microsoft.Compute/virtualMachines", code="SkuNotAvailable",
              message="The requested size for resource is currently not available in location 'westeurope'.", times=-1)

    result = drill_harness.run(vm_drill(prod, "azure-vm-fails"), providers={"azure": provider})

    assert result.verdict == "FAILED"
    codes = {f.code: f for f in result.findings}
    assert "AZURE_OPERATION_FAILED" in codes and "SkuNotAvailable" in codes["AZURE_OPERATION_FAILED"].message
    assert codes["AZURE_OPERATION_FAILED"].target == "app"
    assert [v.outcome for v in result.validations] == ["NOT_RUN"]
    (report,) = result.teardown
    assert any("/disks/app-osdisk" in d for d in report.deleted)  # what the failed restore left was deleted
    assert fake.drill_state() == []


def test_throttling_is_retried_after_retry_after(drill_harness, fake, provider, prod):
    fake.throttle(times=2, method="GET", path_contains="/providers/microsoft.compute/snapshots", retry_after=1)
    fake.throttle(times=1, method="PUT", path_contains="/providers/microsoft.compute/disks/", retry_after=1)

    result = drill_harness.run(disk_drill(prod, "azure-throttled"), providers={"azure": provider})

    assert result.verdict == "PASSED", result.findings
    assert fake.throttled == 3
    assert not [f for f in result.findings if f.code.startswith("AZURE")]
    assert fake.drill_state() == []


def test_transient_operation_failure_is_retried_onto_the_same_disk(drill_harness, fake, provider, prod):
    fake.fail("PUT", "Microsoft.Compute/disks", code="InternalExecutionError", times=1)

    result = drill_harness.run(disk_drill(prod, "azure-retried"), providers={"azure": provider})

    assert result.verdict == "PASSED", result.findings
    deleted = result.teardown[0].deleted
    assert [d.rsplit("/", 1)[1] for d in deleted if "/disks/" in d] == ["orders-disk"]  # one disk, reused by name
    assert fake.drill_state() == []


def test_shipped_example_drills_parse():
    for name in ("azure-disk.yaml", "azure-vm.yaml"):
        spec = load_spec(REPO / "drills" / name)
        assert spec.targets[0].provider.startswith("azure.")
        assert spec.validations, f"{name} has no validation"


# ---------------------------------------------------------------- provider operations


def test_recovery_point_rules(fake, provider, prod):
    spec = parse_spec(disk_drill(prod)).targets[0]
    c = ctx()

    spec.recovery_point = spec.recovery_point.model_validate({"rule": "at", "at": (NOW - timedelta(hours=25)).isoformat()})
    assert provider.find_recovery_point(c, spec).id.endswith("/orders-daily-26")

    spec.recovery_point = spec.recovery_point.model_validate({"rule": "random", "within": "30h"})
    picks = {provider.find_recovery_point(c, spec).id for _ in range(3)}
    assert len(picks) == 1 and picks.pop().rsplit("/", 1)[1] in {"orders-daily-2", "orders-daily-26"}

    spec.recovery_point = spec.recovery_point.model_validate({"rule": "latest", "max_age": "1h"})
    stale = provider.find_recovery_point(c, spec)
    assert [f.code for f in stale.findings] == ["RECOVERY_POINT_STALE"]

    spec.source.snapshot_tags = {"policy": "hourly"}
    with pytest.raises(ProviderError) as err:
        provider.find_recovery_point(c, spec)
    assert err.value.code == "RECOVERY_POINT_NOT_FOUND"


def test_vm_recovery_point_needs_every_disk(fake, provider, prod):
    vm = parse_spec(vm_drill(prod)).targets[0]
    vm.source.snapshot_group_window = timedelta(seconds=30)  # data-disk snapshots came 1-2 minutes later
    with pytest.raises(ProviderError) as err:
        provider.find_recovery_point(ctx(), vm)
    assert err.value.code == "RECOVERY_POINT_NOT_FOUND" and "2 data disk" in err.value.message

    fake.resources.pop(prod["vm"].lower())  # the source VM itself is gone
    with pytest.raises(ProviderError) as err:
        provider.find_recovery_point(ctx(), vm)
    assert err.value.code == "AZURE_SOURCE_NOT_FOUND"


def test_verify_isolation_fails_when_the_network_has_a_way_out(fake, provider, prod):
    c = ctx("unit-tamper")
    spec = parse_spec(disk_drill(prod))
    env = provider.create_isolation(c, spec.isolation, spec.targets)
    assert provider.create_isolation(c, spec.isolation, spec.targets).details == env.details  # idempotent
    assert provider.verify_isolation(c, env).outcome == "PASSED"

    rg = env.details["resource_group"]
    vnet = fake.resources[env.details["vnet_id"].lower()]
    vnet["properties"]["virtualNetworkPeerings"] = [
        {"name": "to-prod", "properties": {"remoteVirtualNetwork": {"id": "/subscriptions/x/resourceGroups/prod/providers/Microsoft.Network/virtualNetworks/prod"}}}
    ]
    nsg = fake.resources[env.details["nsg_id"].lower()]
    nsg["properties"]["securityRules"].append(
        {"name": "allow-out", "properties": {"priority": 100, "direction": "Outbound", "access": "Allow", "protocol": "*",
                                             "sourceAddressPrefix": "*", "destinationAddressPrefix": "Internet", "destinationPortRange": "*"}}
    )
    nsg["properties"]["securityRules"].append(
        {"name": "allow-ssh", "properties": {"priority": 110, "direction": "Inbound", "access": "Allow", "protocol": "Tcp",
                                             "sourceAddressPrefix": "0.0.0.0/0", "destinationAddressPrefix": "*", "destinationPortRange": "22"}}
    )
    fake._put_raw(rg, "Microsoft.Network/publicIPAddresses", "sneaky-ip", {"properties": {"ipAddress": "20.1.2.3"}})

    proof = provider.verify_isolation(c, env)
    failed = {ch.name for ch in proof.checks if ch.outcome == "FAILED"}
    assert proof.outcome == "FAILED"
    assert failed == {"no peering", "no gateway or public endpoint", "outbound denied", "inbound only from validation sources"}

    # drdrill did not create the public IP: teardown leaves it alone, and the network and the group
    # that hold it (deleting the group would delete it too), and says so; a person must look at a
    # drill network that grew a public IP.
    report = provider.teardown(c, env)
    refused = {o.id.rsplit("/", 1)[1]: o.reason for o in report.outcomes if o.result == "refused"}
    assert set(refused) == {"sneaky-ip", "isolated-vnet", "isolated-nsg", rg} and not report.deleted
    assert "does not create" in refused["sneaky-ip"]
    assert "without this drill's tag" in refused[rg]
    assert rg.lower() in fake.groups and fake.get(env.details["vnet_id"]) is not None

    fake.resources.pop(f"{fake.rg_id(rg)}/providers/Microsoft.Network/publicIPAddresses/sneaky-ip".lower())  # the person removes it
    again = provider.teardown(c, env)
    assert [(o.kind, o.result) for o in again.outcomes] == [("vnet", "deleted"), ("nsg", "deleted"), ("resource_group", "deleted")]
    assert [o.result for o in provider.teardown(c, env).outcomes] == ["already_gone"]  # absent is success
    assert fake.drill_state() == []


def test_teardown_and_isolation_refuse_a_group_without_the_drill_tag(fake, provider, prod):
    c = ctx("unit-untagged")
    fake.add_group("drdrill-unit-untagged", tags={"owner": "someone else"})
    env = Environment(family="azure", drill_id=c.drill_id, id=c.resource_name())

    report = provider.teardown(c, env)
    assert report.refused and not report.deleted
    assert "drdrill-unit-untagged" in fake.groups
    spec = parse_spec(disk_drill(prod))
    with pytest.raises(ProviderError) as err:
        provider.create_isolation(c, spec.isolation, spec.targets)
    assert err.value.code == "AZURE_NAME_TAKEN"
    assert fake.groups["drdrill-unit-untagged"]["tags"] == {"owner": "someone else"}


def test_orphans_are_listed_and_deleted(fake, provider, prod):
    spec = parse_spec(disk_drill(prod))
    old = ctx("old-drill", declared=NOW - timedelta(days=2))
    live = ctx("live-drill")
    provider.create_isolation(old, spec.isolation, spec.targets)
    live_env = provider.create_isolation(live, spec.isolation, spec.targets)
    fake.add_group("drdrill-lookalike")  # no tag: never an orphan

    orphans = provider.list_orphans(NOW, {"live-drill"})
    assert {(o.drill_id, o.details["reason"]) for o in orphans} == {("old-drill", "expired")}
    assert [o.kind for o in orphans] == ["vnet", "nsg", "resource_group"]  # in deletion order: the group last
    assert "live-drill" in {o.drill_id for o in provider.list_orphans(NOW + timedelta(days=1), {"live-drill"})}  # expired too

    forged = Orphan(provider="azure", id=live_env.details["resource_group_id"], kind="resource_group", drill_id="old-drill")
    refused = provider.delete_orphan(forged)
    assert refused.result == "refused" and "'live-drill'" in refused.reason
    assert [provider.delete_orphan(o).result for o in orphans] == ["deleted"] * 3
    assert [provider.delete_orphan(o).result for o in orphans] == ["already_gone"] * 3
    assert {o.drill_id for o in provider.list_orphans(NOW, set())} == {"live-drill"}
    provider.teardown(live, live_env)
    assert fake.drill_state() == []
    assert "drdrill-lookalike" in fake.groups


def test_sweep_deletes_an_ended_drill_and_refuses_what_changed_since_the_listing(fake, provider, prod):
    spec = parse_spec(disk_drill(prod))
    ended, retagged, crowded = ctx("ended-drill"), ctx("retagged-drill"), ctx("crowded-drill")
    envs = {c.drill_id: provider.create_isolation(c, spec.isolation, spec.targets) for c in (ended, retagged, crowded)}
    # Someone put a public IP of their own into one drill's resource group.
    their_ip = fake._put_raw(envs["crowded-drill"].id, "Microsoft.Network/publicIPAddresses", "their-ip", {"properties": {}})["id"]

    orphans = provider.list_orphans(NOW, {"running-drill"})  # none of the three drills is running
    assert {o.drill_id for o in orphans} == {"ended-drill", "retagged-drill", "crowded-drill"}
    assert all(o.details["reason"] == "drill not active" for o in orphans)
    # Between the listing and the deletion, another drill's tag was put on one drill's VNet.
    fake.resources[envs["retagged-drill"].details["vnet_id"].lower()]["tags"]["drdrill:drill-id"] = "someone-else"

    outcomes = {(o.drill_id, o.kind): provider.delete_orphan(o) for o in orphans}

    results = {key: out.result for key, out in outcomes.items()}
    assert {kind: r for (drill, kind), r in results.items() if drill == "ended-drill"} == {"vnet": "deleted", "nsg": "deleted", "resource_group": "deleted"}
    assert fake.resources_in(envs["ended-drill"].id) == [] and envs["ended-drill"].id not in fake.groups
    assert results[("retagged-drill", "vnet")] == "refused"
    assert outcomes[("retagged-drill", "vnet")].reason == "tag drdrill:drill-id is 'someone-else', expected 'retagged-drill'"
    # What holds the retagged VNet or the public IP is kept, and the reason names what it holds.
    for drill, holds in (("retagged-drill", "isolated-vnet"), ("crowded-drill", "their-ip")):
        for kind in ("nsg", "resource_group") if drill == "retagged-drill" else ("vnet", "nsg", "resource_group"):
            assert results[(drill, kind)] == "refused", (drill, kind)
            assert outcomes[(drill, kind)].reason.startswith("kept:") and holds in outcomes[(drill, kind)].reason
    assert fake.get(their_ip) is not None and fake.get(envs["retagged-drill"].details["vnet_id"]) is not None

    # Once a person has taken the public IP away and given the VNet its tag back, the next sweep finishes.
    fake.resources.pop(their_ip.lower())
    fake.resources[envs["retagged-drill"].details["vnet_id"].lower()]["tags"]["drdrill:drill-id"] = "retagged-drill"
    assert {provider.delete_orphan(o).result for o in provider.list_orphans(NOW, set())} == {"deleted"}
    assert provider.list_orphans(NOW, set()) == []


def test_fake_speaks_arm_errors(fake, provider):
    """The contract the fake holds the provider to: api-version required, ARM error bodies, auth."""
    import ssl
    import urllib.error
    import urllib.request

    ctx_ = ssl.create_default_context(cafile=fake.ca_path)

    def call(path: str, token: str = TOKEN):
        req = urllib.request.Request(fake.url + path, headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(req, context=ctx_) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    sub = f"/subscriptions/{fake.subscription_id}"
    status, body = call(f"{sub}/resourcegroups/nope")
    assert status == 400 and body["error"]["code"] == "MissingApiVersionParameter"
    status, body = call(f"{sub}/resourcegroups/nope?api-version=2025-04-01")
    assert status == 404 and body["error"]["code"] == "ResourceGroupNotFound"
    status, body = call(f"{sub}/resourcegroups?api-version=2025-04-01", token="wrong")
    assert status == 401 and body["error"]["code"] == "AuthenticationFailed"


def test_from_environment_reads_settings():
    p = AzureProvider.from_environment(
        {
            "AZURE_SUBSCRIPTION_ID": "sub-1",
            "DRDRILL_AZURE_ARM_ENDPOINT": "https://management.usgovcloudapi.net/",
            "DRDRILL_AZURE_LOCATION": "usgovvirginia",
            "DRDRILL_AZURE_POLLING_INTERVAL": "3",
        },
        {},
    )
    assert (p.subscription_id, p.endpoint, p.location, p.polling_interval) == ("sub-1", "https://management.usgovcloudapi.net", "usgovvirginia", 3.0)
    assert p.credential_scopes == ["https://management.usgovcloudapi.net/.default"]
    assert type(p.credential).__name__ == "DefaultAzureCredential"


def test_restore_is_idempotent_and_stays_in_the_snapshots_region(fake, provider, prod):
    c = ctx("unit-restore")
    spec = parse_spec(disk_drill(prod))
    target = spec.targets[0]
    target.source.disk_sku = "Premium_LRS"
    point = provider.find_recovery_point(c, target)
    env = provider.create_isolation(c, spec.isolation, spec.targets)

    first = provider.restore(c, target, point, env)
    again = provider.restore(c, target, point, env)  # a retried activity gets the same disk
    assert first.id == again.id
    (disk,) = fake.resources_in(env.details["resource_group"], "Microsoft.Compute/disks")
    assert disk["sku"] == {"name": "Premium_LRS"}
    assert disk["properties"]["networkAccessPolicy"] == "DenyAll"
    assert disk["tags"]["drdrill:target"] == "orders"

    elsewhere = env.model_copy(deep=True)
    elsewhere.details["location"] = "northeurope"
    with pytest.raises(ProviderError) as err:
        provider.restore(c, target, point, elsewhere)
    assert err.value.code == "AZURE_REGION_MISMATCH"

    provider.teardown(c, env)
    assert fake.drill_state() == []
