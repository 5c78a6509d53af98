"""Cloud probes: a drdrill worker inside the drill's isolated AWS VPC, Azure VNet or GCP network
that runs the checks there, the network's one way out (to the Temporal frontend), the isolation
proof of it, its teardown, and the secret references it resolves.

The clouds are moto_server and the ARM and Compute fakes (tests/azure_fake.py, tests/gcp_fake.py),
through the real SDKs, the real workflow and worker and the session's Temporal dev server. One part
of the cloud is not emulated: an instance booting and running its boot script. `ProbeHost` stands
in for it. When moto (polled) or a fake (its hook) shows the probe's instance created, the harness
runs the instance's own boot script (the user data, custom data or startup script drdrill wrote)
as the instance would, with the instance's credentials: a real `drdrill probe` process polling the
drill's probe queue. When the instance is deleted, the harness stops that process.
"""

from __future__ import annotations

import asyncio
import base64
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Optional

import psycopg
import pytest
from google.auth.credentials import AnonymousCredentials
from psycopg import sql

from activities.validation import with_password
from drdrill.core.models import TAG_DRILL_ID, DrillContext, RestoredResource, ValidationResult
from drdrill.core.schema import SpecError
from drdrill.providers.spec import parse_spec
from drdrill.providers.azure.provider import AzureProvider
from drdrill.providers.base import ProviderError
from drdrill.providers.gcp.provider import GcpProvider
from drdrill.localpg.cluster import LocalCluster, run_user
from drdrill.providers.probes import PASSWORD_REFERENCE, resolve_secret
from drdrill.providers.activity_io import ValidateInput
from tests.azure_fake import AzureFake, make_certificate
from tests.gcp_fake import ComputeFake
from tests.moto_server import REGION, aws, moto_endpoint  # noqa: F401
from tests.pg_fixtures import cluster_root  # noqa: F401
from tests.test_azure import StaticToken, covered_by_role
from worker import connect

BIN = Path(sys.executable).parent
NOW = datetime.now(timezone.utc)


# ---------------------------------------------------------------------- the stand-in for booting


class ProbeHost:
    """Runs probe instances' boot scripts as the booted instances would (see the module docstring)."""

    def __init__(self, logs: Path, instance_env: dict[str, str]):
        self.logs = logs
        self.env = {
            "PATH": f"{BIN}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(logs),
            "DRDRILL_PROBE_FOREGROUND": "1",  # no systemd-run: the harness supervises the process
            **instance_env,
        }
        self.processes: dict[str, subprocess.Popen] = {}
        self.scripts: dict[str, str] = {}
        self.halted: list[str] = []
        self.lock = threading.Lock()

    def boot(self, instance: str, script: str) -> None:
        with self.lock:
            if instance in self.processes:
                return
            self.scripts[instance] = script
            log = open(self.logs / f"probe-{len(self.processes)}.log", "wb")
            self.processes[instance] = subprocess.Popen(
                ["sh", "-c", script], env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            log.close()

    def halt(self, instance: str) -> None:
        """The instance is gone: so is everything that ran on it."""
        with self.lock:
            proc = self.processes.get(instance)
            if proc is None or instance in self.halted:
                return
            self.halted.append(instance)
        _signal(proc, signal.SIGTERM)

    def ended(self, instance: str, timeout: float = 30) -> bool:
        """Whether the instance's probe process has exited (waiting up to `timeout` for it)."""
        try:
            self.processes[instance].wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def close(self) -> None:
        for proc in self.processes.values():
            _signal(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                _signal(proc, signal.SIGKILL)
                proc.wait()

    def log(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.logs.glob("probe-*.log")))


def _signal(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


class MotoBoots(threading.Thread):
    """Watches moto for drdrill probe instances: boots each launched one, halts each terminated one."""

    def __init__(self, ec2, host: ProbeHost):
        super().__init__(daemon=True)
        self.ec2, self.host = ec2, host
        self.done = threading.Event()

    def run(self) -> None:
        flt = [{"Name": "tag:drdrill:role", "Values": ["probe"]}]
        while not self.done.wait(0.1):  # allowed: moto has no hook for a launched instance, so the harness polls it
            for r in self.ec2.describe_instances(Filters=flt)["Reservations"]:
                for inst in r["Instances"]:
                    iid, state = inst["InstanceId"], inst["State"]["Name"]
                    if state in ("pending", "running") and iid not in self.host.processes:
                        data = self.ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData")["UserData"]["Value"]
                        self.host.boot(iid, base64.b64decode(data).decode())
                    elif state in ("shutting-down", "terminated"):
                        self.host.halt(iid)

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=10)


@pytest.fixture
def local_service():
    """An HTTP service the probe can reach (on this machine's loopback), and its port."""

    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"restored service says hello " + self.path.encode())

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


# ---------------------------------------------------------------------- what the drill's history shows


async def _validate_activities(address: str, drill_id: str) -> list[tuple[str, str]]:
    """(task queue, worker identity) of every `validate` activity the drill scheduled and that started."""
    client = await connect(address)
    scheduled: dict[int, str] = {}
    out = []
    async for event in client.get_workflow_handle(drill_id).fetch_history_events():
        if event.HasField("activity_task_scheduled_event_attributes"):
            attrs = event.activity_task_scheduled_event_attributes
            if attrs.activity_type.name == "validate":
                scheduled[event.event_id] = attrs.task_queue.name
        elif event.HasField("activity_task_started_event_attributes"):
            attrs = event.activity_task_started_event_attributes
            if attrs.scheduled_event_id in scheduled:
                out.append((scheduled[attrs.scheduled_event_id], attrs.identity))
    return out


async def _history_text(address: str, drill_id: str) -> str:
    """Every payload in the drill's workflow history (inputs, results, heartbeats), decoded."""
    client = await connect(address)
    history = await client.get_workflow_handle(drill_id).fetch_history()
    texts: list[str] = []

    def walk(node) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("data"), str) and "metadata" in node:
                texts.append(base64.b64decode(node["data"]).decode(errors="replace"))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(history.to_json_dict())
    return "\n".join(texts)


def validate_activities(address: str, drill_id: str) -> list[tuple[str, str]]:
    return asyncio.run(_validate_activities(address, drill_id))


def proof(result) -> dict:
    return {c.name: c for p in result.isolation for c in p.checks}


# ---------------------------------------------------------------------- AWS

RESTORED_ADDRESS = "127.0.0.73"  # the restored DB instance's address in the drill's VPC, as moto's DNS name cannot say


@pytest.fixture
def restored_database(cluster_root, tmp_path):  # noqa: F811
    """The database RDS would have restored from the snapshot (moto restores none): PostgreSQL on
    127.0.0.73:5432 over TLS, where the snapshot's master user logs in with its password only.
    Yields that password."""
    password = f"pw-{uuid.uuid4().hex}"
    cluster = LocalCluster(cluster_root / "rds", port=5432)
    cluster.create({"test": "restored RDS stand-in"}, {"listen_addresses": f"'{RESTORED_ADDRESS}'"})
    cert, key = make_certificate(tmp_path)
    owner = run_user()
    for src, name in ((cert, "server.crt"), (key, "server.key")):
        dest = cluster.data / name
        shutil.copy(src, dest)
        os.chmod(dest, 0o600)
        if owner is not None:
            os.chown(dest, owner.pw_uid, owner.pw_gid)
    hba = cluster.data / "pg_hba.conf"
    hba.write_text("local all all trust\nhostssl all all 127.0.0.0/8 scram-sha-256\n")
    if owner is not None:
        os.chown(hba, owner.pw_uid, owner.pw_gid)
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET ssl = on")
        conn.execute(sql.SQL("CREATE ROLE admin_user LOGIN PASSWORD {}").format(sql.Literal(password)))
        conn.execute("CREATE DATABASE shop OWNER admin_user")
        conn.execute("SELECT pg_reload_conf()")
    with psycopg.connect(cluster.dsn("shop"), autocommit=True) as conn:
        conn.execute("SET ROLE admin_user")
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, amount numeric)")
        conn.execute("INSERT INTO orders VALUES (1, 10), (2, 20), (3, 30)")
    yield password
    cluster.destroy()


def aws_drill(ami: str, temporal: str, secret: Optional[str], validations: str, probe: bool = True) -> str:
    secrets = f", secrets: {{shop: '{secret}'}}" if secret else ""
    isolation = (
        f"  probe:\n    aws: {{ami: {ami}, instance_profile: drdrill-probe, temporal_address: '{temporal}', start_timeout: 90s{secrets}}}"
        if probe else ""
    )
    return f"""
version: 1
name: aws-probe
objectives: {{rto: 30m, rpo: 1d}}
max_duration: 20m
isolation:
  network_cidr: 10.77.0.0/16
{isolation}
targets:
  - {{name: shop, provider: aws.rds, source: {{db_instance_identifier: shop-prod, snapshot_type: manual}}, restore: {{timeout: 5m}}}}
validations:
{validations}
"""


def _probe_profile(world) -> None:
    iam = world.client("iam")
    iam.create_role(RoleName="drdrill-probe-shop", AssumeRolePolicyDocument=(Path(__file__).parent.parent / "deploy/aws/probe-trust.json").read_text())
    iam.create_instance_profile(InstanceProfileName="drdrill-probe")
    iam.add_role_to_instance_profile(InstanceProfileName="drdrill-probe", RoleName="drdrill-probe-shop")


def test_aws_probe_runs_the_sql_check_inside_the_vpc_with_its_password_from_secrets_manager(
    drill_harness, temporal_server, aws, moto_endpoint, restored_database, tmp_path  # noqa: F811
):
    aws.db_with_snapshot()
    _probe_profile(aws)
    secret = aws.client("secretsmanager").create_secret(
        Name="shop-db-master", SecretString=json.dumps({"username": "admin_user", "password": restored_database})
    )["ARN"]
    ami = aws.ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    validations = f"""  - {{name: orders, type: sql, target: shop, query: "SELECT count(*) FROM orders", expect: "== 3", timeout: 1m}}
  - {{name: db-private, type: command, target: shop, argv: ["{BIN / 'drdrill'}", check, aws-db], timeout: 1m}}"""
    host = ProbeHost(tmp_path, {
        # The instance profile's credentials and the region's endpoints, as the instance would have them.
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION,
        "DRDRILL_AWS_ENDPOINT_URL": moto_endpoint,
        # The VPC's DNS would give the restored instance's address; moto's name resolves nowhere.
        "PGHOSTADDR": RESTORED_ADDRESS,
    })
    watcher = MotoBoots(aws.client("ec2"), host)
    watcher.start()
    try:
        result = drill_harness.run(aws_drill(ami, temporal_server.address, secret, validations), providers={"aws": aws.provider})
        (probe_instance,) = host.processes
        assert host.ended(probe_instance), host.log()
    finally:
        watcher.stop()
        host.close()

    assert result.verdict == "PASSED", (result.findings, result.validations, host.log())
    checks = {v.name: v for v in result.validations}
    assert (checks["orders"].outcome, checks["orders"].detail) == ("PASSED", "SELECT count(*) FROM orders = 3 (expected == 3)")
    assert checks["db-private"].outcome == "PASSED"
    env = result.environments[0]
    queue = env.details["probe_queue"]
    assert queue == f"drdrill-{result.drill_id}-aws-probe" and env.details["reachable_from_worker"] is False
    # The sql check ran in the probe, on its queue; the command (the RDS API) on the worker.
    ran = validate_activities(temporal_server.address, result.drill_id)
    in_probe = [identity for q, identity in ran if q == queue]
    on_worker = [identity for q, identity in ran if q != queue]
    assert len(in_probe) == 1 and in_probe[0].startswith("drdrill-probe ")
    assert len(on_worker) == 1 and not on_worker[0].startswith("drdrill-probe ")
    probe_event = next(e for e in result.timeline if e.phase == "probe")
    assert probe_event.outcome == "PASSED" and queue in probe_event.detail
    # The proof records the one way out, and the probe inside the VPC.
    checks_ = proof(result)
    way_out = checks_["one way out: the Temporal frontend"]
    assert way_out.outcome == "PASSED", way_out.detail
    assert f"the one way out: tcp {temporal_server.address.split(':')[1]} to {temporal_server.address.split(':')[0]}/32" in way_out.detail
    assert "other egress rules: none" in way_out.detail
    assert checks_["probe inside the network"].outcome == "PASSED" and "public address: none" in checks_["probe inside the network"].detail
    # The probe booted from the script drdrill wrote, which holds no secret.
    script = host.scripts[probe_instance]
    assert f"drdrill probe --task-queue {queue}" in script and f"TEMPORAL_ADDRESS={temporal_server.address}" in script
    assert restored_database not in script
    # Torn down with the environment: the instance is terminated, and its process is gone.
    report = result.teardown[0]
    assert f"ec2-instance {probe_instance}" in report.deleted and any(d.startswith("vpc ") for d in report.deleted)
    state = aws.ec2.describe_instances(InstanceIds=[probe_instance])["Reservations"][0]["Instances"][0]["State"]["Name"]
    assert state == "terminated" and probe_instance in host.halted
    # The reference travels; the password does not (history, evidence).
    shop = result.restored[0]
    assert shop.details[PASSWORD_REFERENCE] == secret
    history = asyncio.run(_history_text(temporal_server.address, result.drill_id))
    evidence = (drill_harness.state_dir / "runs" / result.drill_id / "evidence.json").read_text()
    assert secret in history and restored_database not in history and restored_database not in evidence


def test_aws_isolation_proof_fails_when_a_second_egress_rule_is_added(aws):  # noqa: F811
    """The drill's security group: exactly the one egress rule out (tcp to Temporal), plus within
    itself; a second way out fails the proof and names it. Teardown terminates the probe first."""
    aws.db_with_snapshot()
    ami = aws.ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    spec = parse_spec(aws_drill(ami, "10.20.0.5:7233", None, "  - {type: sql, target: shop, query: 'SELECT 1', expect: '== 1'}"))
    spec.isolation.probe.aws.instance_profile = None
    ctx = DrillContext(drill_id="egress-1", drill_name="t", declared=NOW, expires_at=NOW + timedelta(hours=1))
    p = aws.provider
    env = p.create_isolation(ctx, spec.isolation, spec.targets)
    assert p.create_isolation(ctx, spec.isolation, spec.targets).details == env.details  # a retried activity: one probe
    sg_id = env.details["security_group_id"]
    sg = aws.ec2.describe_security_groups(GroupIds=[sg_id])["SecurityGroups"][0]
    egress = sorted(
        (perm["IpProtocol"], perm.get("FromPort"), tuple(r["CidrIp"] for r in perm["IpRanges"]), tuple(g["GroupId"] for g in perm["UserIdGroupPairs"]))
        for perm in sg["IpPermissionsEgress"]
    )
    assert egress == [("-1", None, (), (sg_id,)), ("tcp", 7233, ("10.20.0.5/32",), ())]
    probes = aws.ec2.describe_instances(Filters=[{"Name": "tag:drdrill:role", "Values": ["probe"]}])["Reservations"]
    (inst,) = [i for r in probes for i in r["Instances"]]
    assert inst["InstanceId"] == env.details["probe_instance_id"] and inst["SubnetId"] == env.details["subnets"][0]["id"]
    first = p.verify_isolation(ctx, env)
    assert first.outcome == "PASSED", [(c.name, c.detail) for c in first.checks]
    assert "tcp 7233 to 10.20.0.5/32" in proof_of(first)["one way out: the Temporal frontend"].detail

    aws.ec2.authorize_security_group_egress(GroupId=sg_id, IpPermissions=[{"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    second = p.verify_isolation(ctx, env)
    failed = {c.name: c.detail for c in second.checks if c.outcome == "FAILED"}
    assert second.outcome == "FAILED" and list(failed) == ["one way out: the Temporal frontend"]
    assert "other egress rules: ['tcp 443 to 0.0.0.0/0']" in failed["one way out: the Temporal frontend"]

    report = p.teardown(ctx, env)
    assert report.deleted[0] == f"ec2-instance {inst['InstanceId']}" and not report.refused


def proof_of(p) -> dict:
    return {c.name: c for c in p.checks}


def test_aws_network_checks_without_a_probe_could_not_verify_at_once(drill_harness, aws):  # noqa: F811
    aws.db_with_snapshot()
    validations = """  - {name: orders, type: sql, target: shop, query: "SELECT count(*) FROM orders", expect: "> 0"}
  - {name: port, type: tcp, target: shop}"""
    result = drill_harness.run(aws_drill("", "", None, validations, probe=False), providers={"aws": aws.provider})

    assert result.verdict == "COULD_NOT_VERIFY"
    for check in result.validations:
        assert (check.outcome, check.attempts) == ("COULD_NOT_VERIFY", 0), check
        assert "the worker cannot reach" in check.detail and "set isolation.probe.aws" in check.detail
        assert check.finished == check.started  # nothing was attempted, nothing waited
    assert not any(e.phase == "probe" for e in result.timeline)


# ---------------------------------------------------------------------- Azure

IDENTITY = "/subscriptions/00000000-0000-0000-0000-0000000000aa/resourceGroups/identities/providers/Microsoft.ManagedIdentity/userAssignedIdentities/drdrill-probe"


@pytest.fixture
def arm():
    f = AzureFake().start()
    yield f
    f.stop()
    assert f.drill_state() == [], "the test left drill resources behind"
    missing = sorted(a for a in f.actions if not covered_by_role(a))
    assert not missing, f"deploy/azure/role.json lacks {missing}"


@pytest.fixture
def azure(arm):
    p = AzureProvider(
        StaticToken(), subscription_id=arm.subscription_id, endpoint=arm.url, location=arm.location,
        connection_verify=arm.ca_path, polling_interval=0.02, ready_poll_initial=0.02, ready_poll_max=0.2,
    )
    yield p
    p.close()


def azure_drill(arm: AzureFake, temporal: str, validations: str, probe: bool = True) -> str:
    arm.add_group("prod")
    os_disk = arm.add_disk("prod", "app-os", 30, os_type="Linux")
    vm = arm.add_vm("prod", "app", os_disk, [])
    arm.add_snapshot("prod", "app-os-nightly", os_disk, NOW - timedelta(hours=2))
    probe_yaml = (
        f"\n  probe:\n    azure: {{image: 'Canonical:ubuntu-24_04-lts:server:latest', managed_identity: '{IDENTITY}', "
        f"temporal_address: '{temporal}', start_timeout: 90s}}"
        if probe else ""
    )
    return f"""
name: azure-probe
objectives: {{rto: 1h, rpo: 1d}}
isolation:
  azure_location: westeurope{probe_yaml}
targets:
  - {{name: app, provider: azure.vm, source: {{vm_id: "{vm}", vm_size: Standard_B2s}}}}
validations:
{validations}
"""


def test_azure_probe_runs_the_http_check_inside_the_vnet(drill_harness, temporal_server, arm, azure, local_service, tmp_path):
    host = ProbeHost(tmp_path, {"AZURE_POD_IDENTITY_AUTHORITY_HOST": arm.imds_url, "DRDRILL_AZURE_CA_BUNDLE": arm.ca_path})

    def booted(event: str, vm: dict) -> None:
        if (vm.get("tags") or {}).get("drdrill:role") != "probe":
            return
        if event == "created":
            host.boot(vm["id"], base64.b64decode(vm["properties"]["osProfile"]["customData"]).decode())
        else:
            host.halt(vm["id"])

    arm.vm_hooks.append(booted)
    validations = f'  - {{name: app-health, type: http, target: app, url: "http://127.0.0.1:{local_service}/health", contains: hello, timeout: 1m}}'
    try:
        result = drill_harness.run(azure_drill(arm, temporal_server.address, validations), providers={"azure": azure})
        (probe_vm,) = host.processes
        assert host.ended(probe_vm), host.log()
    finally:
        host.close()

    assert result.verdict == "PASSED", (result.findings, result.validations, host.log())
    assert result.validations[0].detail == f"http://127.0.0.1:{local_service}/health answered 200 containing 'hello'"
    env = result.environments[0]
    ran = validate_activities(temporal_server.address, result.drill_id)
    assert [q for q, _ in ran] == [env.details["probe_queue"]] and ran[0][1].startswith("drdrill-probe ")
    checks = proof(result)
    assert checks["one way out: the Temporal frontend"].outcome == "PASSED"
    host_ip, port = temporal_server.address.split(":")
    assert f"tcp {host_ip}:{port} by rule allow-temporal-outbound" in checks["one way out: the Temporal frontend"].detail
    assert checks["outbound denied"].outcome == "PASSED" and checks["probe inside the network"].outcome == "PASSED"
    script = host.scripts[probe_vm]
    assert f"DRDRILL_AZURE_MANAGED_IDENTITY={IDENTITY}" in script.replace("'", "")
    # The probe VM, its NIC and its OS disk (tagged after ARM made it untagged) went with the environment.
    report = result.teardown[0]
    deleted = " ".join(report.deleted)
    assert f"vm {probe_vm}" in report.deleted and "networkInterfaces/drdrill-probe-nic" in deleted and not report.refused
    assert any(o.id.endswith("/disks/drdrill-probe-osdisk") for o in report.outcomes), report.outcomes
    assert probe_vm in host.halted and arm.drill_state() == []
    assert "Microsoft.ManagedIdentity/userAssignedIdentities/assign/action" in arm.actions


def test_azure_isolation_proof_fails_when_a_second_outbound_rule_is_added(arm, azure):
    spec = parse_spec(azure_drill(arm, "10.20.0.5:7233", "  - {type: http, target: app, url: 'http://{host}/'}"))
    ctx = DrillContext(drill_id="egress-2", drill_name="t", declared=NOW, expires_at=NOW + timedelta(hours=1))
    env = azure.create_isolation(ctx, spec.isolation, spec.targets)
    nsg = arm.get(env.details["nsg_id"])
    outbound = sorted(
        (r["properties"]["priority"], r["properties"]["access"], r["properties"]["protocol"], r["properties"]["destinationAddressPrefix"], r["properties"]["destinationPortRange"])
        for r in nsg["properties"]["securityRules"] if r["properties"]["direction"] == "Outbound"
    )
    assert outbound == [(300, "Allow", "*", "10.213.0.0/24", "*"), (310, "Allow", "Tcp", "10.20.0.5", "7233"), (4096, "Deny", "*", "*", "*")]
    os_disk = arm.get(f"{arm.rg_id(env.id)}/providers/Microsoft.Compute/disks/drdrill-probe-osdisk")
    assert os_disk["tags"][TAG_DRILL_ID] == "egress-2"  # tagged by drdrill after ARM created it
    first = azure.verify_isolation(ctx, env)
    assert first.outcome == "PASSED", [(c.name, c.detail) for c in first.checks]

    arm.add_security_rule(env.details["nsg_id"], "allow-https-out", {
        "priority": 200, "direction": "Outbound", "access": "Allow", "protocol": "Tcp", "sourceAddressPrefix": "*",
        "sourcePortRange": "*", "destinationAddressPrefix": "Internet", "destinationPortRange": "443",
    })
    second = azure.verify_isolation(ctx, env)
    failed = {c.name: c.detail for c in second.checks if c.outcome == "FAILED"}
    assert set(failed) == {"outbound denied", "one way out: the Temporal frontend"}
    assert "other ways out: allow-https-out (Tcp to Internet:443)" in failed["one way out: the Temporal frontend"]

    report = azure.teardown(ctx, env)
    assert report.deleted[0].startswith("vm ") and report.deleted[0].endswith("/virtualMachines/drdrill-probe") and not report.refused


# ---------------------------------------------------------------------- GCP

PROJECT, ZONE = "acme-prod", "us-central1-a"
SERVICE_ACCOUNT = "drdrill-probe@acme-prod.iam.gserviceaccount.com"


@pytest.fixture
def compute():
    f = ComputeFake().start()
    boot = f.seed_disk(PROJECT, ZONE, "web-1", size_gb=10)
    f.seed_instance(PROJECT, ZONE, "web-1", ["web-1"])
    f.seed_snapshot(PROJECT, "web-1-nightly", boot, NOW - timedelta(hours=3))
    yield f
    f.stop()
    assert f.leftovers() == [], "the drill left resources behind"


@pytest.fixture
def gcp(compute):
    p = GcpProvider(credentials=AnonymousCredentials(), api_endpoint=compute.endpoint, project=PROJECT,
                    poll_initial=0.01, poll_max=0.05, backoff_initial=0.01, backoff_max=0.05)
    yield p
    p.close()


def gcp_drill(temporal: str, validations: str) -> str:
    return f"""
name: gcp-probe
objectives: {{rto: 30m, rpo: 2d}}
targets:
  - {{name: web, provider: gcp.instance, source: {{project: {PROJECT}, zone: {ZONE}, instance: web-1}}, restore: {{timeout: 2m}}}}
isolation:
  gcp_project: {PROJECT}
  gcp_region: us-central1
  network_cidr: 10.77.0.0/24
  probe:
    gcp: {{image: projects/debian-cloud/global/images/family/debian-12, service_account: {SERVICE_ACCOUNT}, temporal_address: '{temporal}', start_timeout: 90s}}
validations:
{validations}
"""


def test_gcp_probe_runs_the_http_check_inside_the_network(drill_harness, temporal_server, compute, gcp, local_service, tmp_path):
    host = ProbeHost(tmp_path, {"DRDRILL_GCP_ANONYMOUS": "1", "DRDRILL_GCP_SECRETMANAGER_ENDPOINT": compute.endpoint})
    accounts: list[str] = []

    def booted(event: str, inst: dict) -> None:
        if (inst.get("labels") or {}).get("drdrill-role") != "probe":
            return
        if event == "created":
            accounts.extend(a["email"] for a in inst["serviceAccounts"])
            items = {i["key"]: i["value"] for i in inst["metadata"]["items"]}
            host.boot(inst["selfLink"], items["startup-script"])
        else:
            host.halt(inst["selfLink"])

    compute.instance_hooks.append(booted)
    validations = f'  - {{name: web-health, type: http, target: web, url: "http://127.0.0.1:{local_service}/health", contains: hello, timeout: 1m}}'
    try:
        result = drill_harness.run(gcp_drill(temporal_server.address, validations), providers={"gcp": gcp})
        (probe_instance,) = host.processes
        assert host.ended(probe_instance), host.log()
    finally:
        host.close()

    assert result.verdict == "PASSED", (result.findings, result.validations, host.log())
    env = result.environments[0]
    ran = validate_activities(temporal_server.address, result.drill_id)
    assert [q for q, _ in ran] == [env.details["probe_queue"]] and ran[0][1].startswith("drdrill-probe ")
    checks = proof(result)
    way_out = checks["one way out: the Temporal frontend"]
    assert way_out.outcome == "PASSED" and f"tcp {temporal_server.address} by rule drdrill-" in way_out.detail
    assert checks["egress denied"].outcome == "PASSED" and checks["probe inside the network"].outcome == "PASSED"
    # Deleted with the environment: the instance (its boot disk with it) before the firewall and network.
    kinds = [o.kind for o in result.teardown[0].outcomes if o.result == "deleted"]
    assert kinds.index("instance") < kinds.index("firewall") < kinds.index("network")
    assert probe_instance in host.halted
    assert accounts == [SERVICE_ACCOUNT]  # it ran as the account that may read the drill's secrets


def test_gcp_isolation_proof_fails_when_a_second_egress_rule_is_added(compute, gcp):
    spec = parse_spec(gcp_drill("10.20.0.5:7233", "  - {type: http, target: web, url: 'http://{host}/'}"))
    ctx = DrillContext(drill_id="egress-3", drill_name="t", declared=NOW, expires_at=NOW + timedelta(hours=1))
    env = gcp.create_isolation(ctx, spec.isolation, spec.targets)
    egress = sorted(
        (f["priority"], "allowed" if f.get("allowed") else "denied", json.dumps(f.get("allowed") or f.get("denied"), sort_keys=True), tuple(f["destinationRanges"]))
        for f in compute.resources("firewalls") if f["direction"] == "EGRESS"
    )
    assert egress == [
        (90, "allowed", '[{"IPProtocol": "all"}]', ("10.77.0.0/24",)),
        (90, "allowed", '[{"IPProtocol": "tcp", "ports": ["7233"]}]', ("10.20.0.5/32",)),
        (100, "denied", '[{"IPProtocol": "all"}]', ("0.0.0.0/0",)),
    ]
    (probe,) = [i for i in compute.resources("instances") if (i.get("labels") or {}).get("drdrill-role") == "probe"]
    assert not any(n.get("accessConfigs") for n in probe["networkInterfaces"]) and probe["serviceAccounts"][0]["email"] == SERVICE_ACCOUNT
    first = gcp.verify_isolation(ctx, env)
    assert first.outcome == "PASSED", [(c.name, c.detail) for c in first.checks]

    compute.add_firewall(PROJECT, {
        "name": "allow-https-out", "network": env.details["network_self_link"], "direction": "EGRESS", "priority": 50,
        "allowed": [{"IPProtocol": "tcp", "ports": ["443"]}], "destinationRanges": ["0.0.0.0/0"],
    })
    second = gcp.verify_isolation(ctx, env)
    failed = {c.name: c.detail for c in second.checks if c.outcome == "FAILED"}
    assert set(failed) == {"one way out: the Temporal frontend", "egress denied"}
    assert "other ways out: allow-https-out (tcp:443 to 0.0.0.0/0)" in failed["one way out: the Temporal frontend"]

    compute.store.items.pop((PROJECT, "firewalls", "global", "allow-https-out"))  # someone removes it again
    report = gcp.teardown(ctx, env)
    assert report.deleted[0].startswith("instance ") and report.deleted[0].endswith("-probe") and not report.refused


# ---------------------------------------------------------------------- secret references, on the probe side


def _database_check(reference: str, provider: str = "aws.rds") -> ValidateInput:
    spec = parse_spec("name: s\nobjectives: {rto: 1h, rpo: 1d}\ntargets:\n  - {name: shop, provider: sim}\n"
                      "validations:\n  - {name: orders, type: sql, target: shop, query: 'SELECT 1', expect: '== 1'}\n")
    resource = RestoredResource(target="shop", provider=provider, id="db", ready=True,
                                endpoint={"dsn": "host=db.internal port=5432 dbname=shop user=admin_user"},
                                details={PASSWORD_REFERENCE: reference})
    return ValidateInput(validation=spec.validations[0], name="orders", resource=resource, declared=NOW, rpo_objective_seconds=3600)


def test_aws_references_resolve_from_secrets_manager_and_ssm(aws, monkeypatch):  # noqa: F811
    monkeypatch.setenv("DRDRILL_AWS_ENDPOINT_URL", aws.url)
    json_secret = aws.client("secretsmanager").create_secret(Name="shop-master", SecretString='{"username": "u", "password": "s3cret-json"}')["ARN"]
    plain = aws.client("secretsmanager").create_secret(Name="shop-plain", SecretString="s3cret-plain")["ARN"]
    aws.client("ssm").put_parameter(Name="/shop/db-password", Value="s3cret-ssm", Type="SecureString")
    param = aws.client("ssm").get_parameter(Name="/shop/db-password")["Parameter"]["ARN"]
    assert [resolve_secret("aws", r) for r in (json_secret, plain, param)] == ["s3cret-json", "s3cret-plain", "s3cret-ssm"]

    resolved = with_password(_database_check(json_secret))
    assert isinstance(resolved, ValidateInput)
    assert psycopg.conninfo.conninfo_to_dict(resolved.resource.endpoint["dsn"])["password"] == "s3cret-json"
    missing = json_secret.rsplit(":", 1)[0] + ":gone-AbCdEf"
    result = with_password(_database_check(missing))
    assert isinstance(result, ValidationResult) and (result.outcome, result.attempts) == ("COULD_NOT_VERIFY", 1)
    assert result.detail.startswith(f"the password of target shop could not be read: {missing}: ResourceNotFoundException")


def test_azure_references_resolve_from_key_vault_with_the_probes_managed_identity(arm, azure, monkeypatch):
    spec = parse_spec(azure_drill(arm, "10.20.0.5:7233", "  - {type: http, target: app, url: 'http://{host}/'}"))
    ctx = DrillContext(drill_id="kv-1", drill_name="t", declared=NOW, expires_at=NOW + timedelta(hours=1))
    env = azure.create_isolation(ctx, spec.isolation, spec.targets)  # the probe VM, with the identity
    url = arm.add_secret("shop-db-password", "s3cret-kv")
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", arm.imds_url)
    monkeypatch.setenv("DRDRILL_AZURE_CA_BUNDLE", arm.ca_path)
    monkeypatch.setenv("DRDRILL_AZURE_MANAGED_IDENTITY", IDENTITY)
    try:
        assert resolve_secret("azure", url) == "s3cret-kv"
        assert arm.imds_requests[-1] == {"resource": "https://vault.azure.net", "identity": IDENTITY}
        with pytest.raises(ProviderError) as err:
            resolve_secret("azure", f"{arm.url}/secrets/no-such-secret")
        assert err.value.code == "SECRET_UNAVAILABLE" and "Key Vault answered 404 SecretNotFound" in err.value.message
        monkeypatch.setenv("DRDRILL_AZURE_MANAGED_IDENTITY", IDENTITY.replace("drdrill-probe", "someone-else"))
        with pytest.raises(ProviderError) as err:
            resolve_secret("azure", url)
        assert "no token from the VM's managed identity" in err.value.message
    finally:
        azure.teardown(ctx, env)


def test_gcp_references_resolve_from_secret_manager(compute, monkeypatch):
    reference = compute.add_secret(PROJECT, "shop-db-password", "s3cret-sm")
    monkeypatch.setenv("DRDRILL_GCP_ANONYMOUS", "1")
    monkeypatch.setenv("DRDRILL_GCP_SECRETMANAGER_ENDPOINT", compute.endpoint)
    assert resolve_secret("gcp", reference) == "s3cret-sm"
    assert compute.secret_calls == [reference] and compute.calls == []  # the probe's call, not the worker's
    with pytest.raises(ProviderError) as err:
        resolve_secret("gcp", f"projects/{PROJECT}/secrets/gone/versions/latest")
    assert "Secret Manager answered 404 NOT_FOUND" in err.value.message


# ---------------------------------------------------------------------- the drill file


def test_lint_names_a_probes_bad_settings():
    base = """
name: t
objectives: {rto: 1h, rpo: 1d}
targets:
  - {name: shop, provider: aws.rds, source: {db_instance_identifier: shop-prod}}
isolation:
  probe:
    aws: %s
"""
    problems = {
        "{ami: ami-0123456789abcdef0, temporal_address: 'temporal.internal:7233'}":
            ("isolation.probe.aws.temporal_address", "'temporal.internal:7233': write the Temporal frontend as IPv4:port (e.g. 10.20.0.5:7233)"),
        "{temporal_address: '10.0.0.5:7233'}":
            ("isolation.probe.aws", "probe.aws names its image with either 'ami' or 'launch_template', exactly one"),
        "{ami: ami-0123456789abcdef0, temporal_address: '10.0.0.5:7233', secrets: {web: 'arn:aws:ssm:eu-west-1:123456789012:parameter/x'}}":
            ("isolation.probe.aws.secrets.web", "no aws target named 'web'; the aws probe reads secrets for: shop"),
        "{ami: ami-0123456789abcdef0, temporal_address: '10.0.0.5:7233', secrets: {shop: hunter2}}":
            ("isolation.probe.aws.secrets", "secrets.shop: 'hunter2' is not a secret reference of this cloud; write it like arn:aws:secretsmanager:"),
    }
    for probe, (where, message) in problems.items():
        with pytest.raises(SpecError) as err:
            parse_spec(base % probe, "drills/x.yaml")
        assert any(loc == where and msg.startswith(message) for loc, msg in err.value.problems), err.value.problems
