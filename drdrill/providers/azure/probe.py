"""The drill's probe on Azure: a VM in the drill's subnet that runs the checks there.

`isolation.probe.azure` boots it from an image with drdrill installed; its custom data (the script
in drdrill/providers/probes.py, run by cloud-init) starts `drdrill probe --task-queue <the drill's
probe queue>`. It has a NIC in the isolated subnet (no public IP), an OS disk deleted with it, no
password and no usable SSH key (a public key whose private half is never kept), and, with
`managed_identity`, the user-assigned identity that may read the drill's secrets and nothing else
(deploy/azure/probe.md). VM, NIC and OS disk carry the drill's tags, so teardown and the sweep
delete them before the network. Azure does not tag the OS disk it creates from an image: the probe
tags it right after, in the same idempotent step (a retried activity tags it then).

The drill's NSG gains, with a probe: traffic within the subnet both ways (the probe reaching the
restored resources: inside the network), and exactly one outbound rule out of it, TCP to the
Temporal frontend, ahead of the deny-all rule. The isolation proof reads the rules back and passes
only if that is the only way out; it records the rule.
"""

from __future__ import annotations

import base64
import ipaddress
from typing import Any, Optional

from drdrill.core.models import DrillContext, Environment, IsolationCheck
from drdrill.providers.azure.primitives import AzurePrimitives, Clients, parse_id, props, wire
from drdrill.providers.base import heartbeat
from drdrill.providers.probes import ROLE_PROBE, TAG_ROLE, TemporalEgress, bootstrap_script, probe_queue

VM_NAME = "drdrill-probe"
NIC_NAME = "drdrill-probe-nic"
OS_DISK_NAME = "drdrill-probe-osdisk"
INSIDE_PRIORITY = 300
TEMPORAL_PRIORITY = 310


def probe_rules(subnet_prefix: str, egress: TemporalEgress) -> list[dict]:
    """The NSG rules a probe needs: within the subnet both ways, and TCP out to Temporal only."""

    def rule(name: str, priority: int, direction: str, protocol: str, destination: str, port: str, description: str) -> dict:
        return {
            "name": name,
            "properties": {
                "priority": priority, "direction": direction, "access": "Allow", "protocol": protocol,
                "sourceAddressPrefix": subnet_prefix, "sourcePortRange": "*",
                "destinationAddressPrefix": destination, "destinationPortRange": port, "description": description,
            },
        }

    return [
        rule("allow-probe-inside-inbound", INSIDE_PRIORITY, "Inbound", "*", subnet_prefix, "*", "drdrill probe: inside the drill's network"),
        rule("allow-probe-inside-outbound", INSIDE_PRIORITY, "Outbound", "*", subnet_prefix, "*", "drdrill probe: inside the drill's network"),
        rule("allow-temporal-outbound", TEMPORAL_PRIORITY, "Outbound", "Tcp", egress.address, str(egress.port),
             "drdrill probe: the Temporal frontend, the one way out"),
    ]


def _prefixes(rule: dict, key: str) -> list[str]:
    single = rule.get(f"{key}AddressPrefix")
    return ([single] if single else []) + list(rule.get(f"{key}AddressPrefixes") or [])


def _within(prefix: str, network: Any) -> bool:
    try:
        net = ipaddress.ip_network(prefix, strict=False)
    except ValueError:
        return False  # a service tag (Internet, VirtualNetwork, AzureCloud) or '*': not inside
    return net.version == network.version and net.subnet_of(network)


def classify_outbound(allows: list[dict], inside: str, egress: Optional[TemporalEgress]) -> tuple[list[str], list[str], list[str]]:
    """Outbound allow rules ahead of the deny-all rule, as (inside the network, to Temporal, other)."""
    network = ipaddress.ip_network(inside, strict=False)
    within, temporal, other = [], [], []
    for r in allows:
        destinations = _prefixes(r, "destination")
        ports = [r.get("destinationPortRange")] if r.get("destinationPortRange") else list(r.get("destinationPortRanges") or [])
        if destinations and all(_within(d, network) for d in destinations):
            within.append(r["name"])
        elif (
            egress is not None and (r.get("protocol") or "").lower() == "tcp" and ports == [str(egress.port)]
            and destinations and all(d in (egress.address, egress.cidr) for d in destinations)
        ):
            temporal.append(r["name"])
        else:
            other.append(f"{r['name']} ({r.get('protocol')} to {', '.join(destinations) or '?'}:{', '.join(p for p in ports if p) or '*'})")
    return within, temporal, other


def _image_reference(image: str) -> dict:
    if image.startswith("/"):
        return {"id": image}
    publisher, offer, sku, version = image.split(":")
    return {"publisher": publisher, "offer": offer, "sku": sku, "version": version}


def _unusable_ssh_key() -> str:
    """An OpenSSH public key whose private half is discarded at once: Azure wants a key (or a
    password) for a Linux VM from an image; with this one nobody can log in."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode() + " drdrill-probe-no-login"


def launch_probe(az: AzurePrimitives, c: Clients, ctx: DrillContext, rg: str, location: str, details: dict, probe: Any) -> str:
    """The probe's NIC and VM (the existing ones on a retry), then the drill's tags on its OS disk."""
    tags = {**ctx.tags(), TAG_ROLE: ROLE_PROBE}
    what = "creating the probe's NIC"
    nic_body = {
        "location": location,
        "tags": tags,
        "properties": {
            "ipConfigurations": [
                {"name": "ipconfig1", "properties": {"subnet": {"id": details["subnet_id"]}, "privateIPAllocationMethod": "Dynamic", "primary": True}}
            ],
            "enableIPForwarding": False,
        },
    }
    nic = az.wait(az.sdk(what, c.network.network_interfaces.begin_create_or_update, rg, NIC_NAME, nic_body), what)
    vm = az.read("reading the probe VM", c.compute.virtual_machines.get, rg, VM_NAME)
    if vm is None or (props(vm).get("provisioningState") or "").lower() != "succeeded":
        script = bootstrap_script(
            ctx=ctx, family="azure", how="custom data (cloud-init)", queue=probe_queue(ctx, "azure"), probe=probe,
            namespace=probe.temporal_namespace or "default",
            env={"DRDRILL_AZURE_MANAGED_IDENTITY": probe.managed_identity} if probe.managed_identity else None,
        )
        body: dict[str, Any] = {
            "location": location,
            "tags": tags,
            "properties": {
                "hardwareProfile": {"vmSize": probe.size},
                "storageProfile": {
                    "imageReference": _image_reference(probe.image),
                    "osDisk": {"name": OS_DISK_NAME, "createOption": "FromImage", "deleteOption": "Delete", "managedDisk": {"storageAccountType": "Standard_LRS"}},
                },
                "osProfile": {
                    "computerName": VM_NAME,
                    "adminUsername": "drdrill",
                    "customData": base64.b64encode(script.encode()).decode(),
                    "linuxConfiguration": {
                        "disablePasswordAuthentication": True,
                        "ssh": {"publicKeys": [{"path": "/home/drdrill/.ssh/authorized_keys", "keyData": _unusable_ssh_key()}]},
                    },
                },
                "networkProfile": {"networkInterfaces": [{"id": nic["id"], "properties": {"primary": True}}]},
            },
        }
        if probe.managed_identity:
            body["identity"] = {"type": "UserAssigned", "userAssignedIdentities": {probe.managed_identity: {}}}
        what = "creating the probe VM"
        vm = az.wait(az.sdk(what, c.compute.virtual_machines.begin_create_or_update, rg, VM_NAME, body), what)
    heartbeat({"probe": vm["id"]})
    _tag_os_disk(az, c, rg, vm, tags)
    return vm["id"]


def _tag_os_disk(az: AzurePrimitives, c: Clients, rg: str, vm: dict, tags: dict) -> None:
    disk_id = ((props(vm).get("storageProfile") or {}).get("osDisk") or {}).get("managedDisk", {}).get("id")
    if not disk_id:
        return
    disk = az.read("reading the probe's OS disk", c.compute.disks.get, rg, parse_id(disk_id)["name"])
    if disk is None or all((disk.get("tags") or {}).get(k) == v for k, v in tags.items()):
        return
    what = "tagging the probe's OS disk"
    az.wait(az.sdk(what, c.compute.disks.begin_update, rg, parse_id(disk_id)["name"], {"tags": {**(disk.get("tags") or {}), **tags}}), what)


def probe_check(az: AzurePrimitives, c: Clients, rg: str, env: Environment) -> IsolationCheck:
    """The probe VM's one NIC is in the drill's subnet and has no public IP."""
    name = "probe inside the network"
    vm = az.read("reading the probe VM", c.compute.virtual_machines.get, rg, VM_NAME)
    if vm is None:
        return IsolationCheck(name=name, outcome="FAILED", detail=f"the probe VM {VM_NAME} is missing")
    nics = [n["id"] for n in (props(vm).get("networkProfile") or {}).get("networkInterfaces") or []]
    problems, where = [], []
    for nic_id in nics:
        nic = wire(az.sdk("reading the probe's NIC", c.network.network_interfaces.get, rg, parse_id(nic_id)["name"]))
        for ipc in props(nic).get("ipConfigurations") or []:
            p = ipc.get("properties") or {}
            subnet = (p.get("subnet") or {}).get("id", "")
            where.append(f"{p.get('privateIPAddress') or '?'} in {subnet.rsplit('/', 1)[-1]}")
            if subnet.lower() != env.details["subnet_id"].lower():
                problems.append(f"{nic_id} is in {subnet}")
            if p.get("publicIPAddress"):
                problems.append(f"{nic_id} has a public IP")
    if len(nics) != 1:
        problems.append(f"{len(nics)} NICs")
    detail = f"probe VM {VM_NAME}: {', '.join(where) or 'no address'}; " + ("; ".join(problems) or "one NIC in the drill's subnet, no public IP")
    return IsolationCheck(name=name, outcome="FAILED" if problems else "PASSED", detail=detail)
