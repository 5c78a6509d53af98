"""A small fake of the Azure Resource Manager endpoints drdrill's Azure provider calls.

Test code only: product code never imports it. It speaks ARM's wire protocol so that the real
azure-mgmt-* clients accept it as they would accept Azure:

- HTTPS with a certificate generated at start (the SDK's bearer-token policy refuses plain http;
  the client is pointed at the certificate with `connection_verify`, as for any private CA);
- `api-version` is required on every request and must be one the fake knows (MissingApiVersionParameter
  / InvalidApiVersionParameter otherwise, in ARM's error format);
- long-running operations: disk PUT answers 202 with Azure-AsyncOperation and Location headers and
  no body; VM and network PUTs answer 201 with provisioningState Creating/Updating and an
  Azure-AsyncOperation header; resource-group DELETE answers 202 with a Location header whose
  monitor answers 202 until done, then 200; a resource DELETE answers 202 with Azure-AsyncOperation
  and Location headers (204 when there is nothing to delete), and is refused while another
  resource uses the one to delete (an attached disk, a NIC of a VM, a subnet with NICs, an NSG
  of a subnet), as ARM refuses it. Operations finish after `polls_to_finish` status polls
  (no clock involved);
- 404 bodies in ARM's error format ({"error": {"code": "ResourceNotFound", ...}});
- 429 with Retry-After, on demand (`throttle`); failed operations on demand (`fail`).

`actions` collects the ARM authorization actions the calls needed (including the linked
`join/action` checks ARM makes when a PUT references another resource, and the deletes a
resource-group deletion cascades to), so a test can check deploy/azure/role.json covers them.

For drill probes it also speaks, besides ARM: a VM created from an image (`imageReference`, an
`osProfile` with custom data and an SSH key, a user-assigned identity), whose OS disk ARM creates
untagged and deletes with the VM (`deleteOption: Delete`); a disk PATCH (tags); Key Vault's secret
GET (`/secrets/{name}[/{version}]`, api-version 7.4, on the same HTTPS endpoint); and, on a plain
HTTP endpoint of its own (`imds_url`), the instance metadata service's managed-identity token
(`/metadata/identity/oauth2/token`), for identities some VM was given. `vm_hooks` are called
`(event, vm)` when a VM is created ("created") or deleted ("deleted"): a test stands in there for
Azure booting the VM (its custom data is not run by the fake).
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import ipaddress
import json
import re
import ssl
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional
from urllib.parse import parse_qs, urlsplit

TOKEN = "drdrill-fake-token"

# The api-versions the fake implements, per resource provider / type (the SDK's defaults).
API_VERSIONS = {
    "Microsoft.Resources": {"2025-04-01"},
    "Microsoft.Compute/snapshots": {"2026-03-02"},
    "Microsoft.Compute/disks": {"2026-03-02"},
    "Microsoft.Compute/virtualMachines": {"2026-04-01"},
    "Microsoft.Compute/locations": {"2026-03-02", "2026-04-01"},
    "Microsoft.Network": {"2026-03-01"},
}

# Operation templates, for the contract (see calls).
RG_LIST = "GET /subscriptions/{s}/resourcegroups"
SUPPORTED_TYPES = {
    "microsoft.compute/disks": "Microsoft.Compute/disks",
    "microsoft.compute/snapshots": "Microsoft.Compute/snapshots",
    "microsoft.compute/virtualmachines": "Microsoft.Compute/virtualMachines",
    "microsoft.network/virtualnetworks": "Microsoft.Network/virtualNetworks",
    "microsoft.network/networksecuritygroups": "Microsoft.Network/networkSecurityGroups",
    "microsoft.network/networkinterfaces": "Microsoft.Network/networkInterfaces",
    "microsoft.network/publicipaddresses": "Microsoft.Network/publicIPAddresses",
}
PATH_PARAM = {
    "Microsoft.Compute/disks": "{diskName}",
    "Microsoft.Compute/snapshots": "{snapshotName}",
    "Microsoft.Compute/virtualMachines": "{vmName}",
    "Microsoft.Network/virtualNetworks": "{virtualNetworkName}",
    "Microsoft.Network/networkSecurityGroups": "{networkSecurityGroupName}",
    "Microsoft.Network/networkInterfaces": "{networkInterfaceName}",
    "Microsoft.Network/publicIPAddresses": "{publicIpAddressName}",
}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f0Z")


def _iso(t: _dt.datetime) -> str:
    return t.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f0Z")


class ArmError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


@dataclass
class Operation:
    id: str
    namespace: str  # Microsoft.Compute / Microsoft.Network / Microsoft.Resources
    polls_left: int
    on_done: Any  # callable() -> None, applied when it succeeds
    on_fail: Any = None
    error: Optional[dict] = None
    status: str = "InProgress"
    started: str = field(default_factory=_now)


@dataclass
class Fault:
    method: str
    type: str  # e.g. "Microsoft.Compute/virtualMachines"
    code: str
    message: str
    times: int  # -1: every time


@dataclass
class Throttle:
    method: Optional[str]
    path_contains: Optional[str]
    times: int
    retry_after: int


def make_certificate(directory: Path) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1/localhost (its own CA). Returns (cert, key) paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "drdrill azure fake")])
    now = _dt.datetime.now(_dt.timezone.utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=False, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(cert_path), str(key_path)


class AzureFake:
    """The fake ARM endpoint. Start it, seed production resources, point the provider at `url`."""

    def __init__(self, subscription_id: str = "00000000-0000-0000-0000-0000000000aa", location: str = "westeurope", polls_to_finish: int = 2, page_size: int = 3):
        self.subscription_id = subscription_id
        self.location = location
        self.polls_to_finish = polls_to_finish
        self.page_size = page_size
        self.lock = threading.RLock()
        self.groups: dict[str, dict] = {}  # lower name -> resource group JSON
        self.resources: dict[str, dict] = {}  # lower ARM id -> resource JSON
        self.operations: dict[str, Operation] = {}
        self.faults: list[Fault] = []
        self.throttles: list[Throttle] = []
        self.throttled = 0  # 429s served
        self.calls: list[tuple[str, str, str]] = []  # (method, path template, api-version)
        self.actions: set[str] = set()
        self._ip_next: dict[str, int] = {}
        self._local = threading.local()
        self._tmp = tempfile.TemporaryDirectory(prefix="azure-fake-")
        self.ca_path, self._key_path = make_certificate(Path(self._tmp.name))
        self._server: Optional[ThreadingHTTPServer] = None
        self.url = ""
        self.vm_hooks: list[Any] = []  # callables (event, vm JSON): "created", "deleted"
        self.secrets: dict[str, dict[str, str]] = {}  # Key Vault: name -> {version: value}
        self.imds_requests: list[dict] = []
        self._imds: Optional[ThreadingHTTPServer] = None
        self.imds_url = ""

    # ------------------------------------------------------------ lifecycle

    def start(self) -> "AzureFake":
        fake = self

        class Handler(_Handler):
            pass

        Handler.fake = fake
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.ca_path, self._key_path)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        self._server = server
        self.url = f"https://127.0.0.1:{server.server_address[1]}"
        threading.Thread(target=server.serve_forever, name="azure-fake", daemon=True).start()

        class Imds(_ImdsHandler):
            pass

        Imds.fake = fake
        self._imds = ThreadingHTTPServer(("127.0.0.1", 0), Imds)
        self._imds.daemon_threads = True
        self.imds_url = f"http://127.0.0.1:{self._imds.server_address[1]}"
        threading.Thread(target=self._imds.serve_forever, name="azure-fake-imds", daemon=True).start()
        return self

    def stop(self) -> None:
        for server in (self._server, self._imds):
            if server is not None:
                server.shutdown()
                server.server_close()
        self._tmp.cleanup()

    # ------------------------------------------------------------ test handles

    def rg_id(self, rg: str) -> str:
        return f"/subscriptions/{self.subscription_id}/resourceGroups/{rg}"

    def add_group(self, name: str, tags: Optional[dict] = None, location: Optional[str] = None) -> str:
        with self.lock:
            self.groups[name.lower()] = {
                "id": self.rg_id(name),
                "name": name,
                "type": "Microsoft.Resources/resourceGroups",
                "location": location or self.location,
                "tags": dict(tags or {}),
                "properties": {"provisioningState": "Succeeded"},
            }
        return self.rg_id(name)

    def _put_raw(self, rg: str, rtype: str, name: str, body: dict) -> dict:
        rid = f"{self.rg_id(rg)}/providers/{rtype}/{name}"
        body = {"id": rid, "name": name, "type": rtype, "location": self.location, **body}
        with self.lock:
            self.resources[rid.lower()] = body
        return body

    def add_disk(self, rg: str, name: str, size_gb: int = 32, os_type: Optional[str] = None) -> str:
        props = {"diskSizeGB": size_gb, "diskSizeBytes": size_gb << 30, "diskState": "Attached", "provisioningState": "Succeeded",
                 "creationData": {"createOption": "Empty"}, "timeCreated": _now()}
        if os_type:
            props.update(osType=os_type, hyperVGeneration="V2", creationData={"createOption": "FromImage"})
        return self._put_raw(rg, "Microsoft.Compute/disks", name, {"sku": {"name": "Premium_LRS"}, "properties": props})["id"]

    def add_snapshot(self, rg: str, name: str, disk_id: str, created: _dt.datetime, tags: Optional[dict] = None, size_gb: Optional[int] = None) -> str:
        disk = self.resources[disk_id.lower()]
        p = disk["properties"]
        props = {
            "creationData": {"createOption": "Copy", "sourceResourceId": disk_id, "sourceUniqueId": str(uuid.uuid4())},
            "diskSizeGB": size_gb or p["diskSizeGB"],
            "diskSizeBytes": (size_gb or p["diskSizeGB"]) << 30,
            "timeCreated": _iso(created),
            "provisioningState": "Succeeded",
            "incremental": True,
        }
        if p.get("osType"):
            props.update(osType=p["osType"], hyperVGeneration=p.get("hyperVGeneration", "V2"))
        return self._put_raw(rg, "Microsoft.Compute/snapshots", name, {"sku": {"name": "Standard_ZRS"}, "tags": dict(tags or {}), "properties": props})["id"]

    def add_vm(self, rg: str, name: str, os_disk_id: str, data_disk_ids: list[str]) -> str:
        props = {
            "hardwareProfile": {"vmSize": "Standard_D2s_v5"},
            "storageProfile": {
                "osDisk": {"osType": "Linux", "name": os_disk_id.rsplit("/", 1)[1], "createOption": "FromImage", "managedDisk": {"id": os_disk_id}},
                "dataDisks": [
                    {"lun": i, "name": d.rsplit("/", 1)[1], "createOption": "Empty", "managedDisk": {"id": d}} for i, d in enumerate(data_disk_ids)
                ],
            },
            "provisioningState": "Succeeded",
        }
        return self._put_raw(rg, "Microsoft.Compute/virtualMachines", name, {"properties": props})["id"]

    def add_secret(self, name: str, value: str) -> str:
        """A Key Vault secret on this endpoint; returns its URL (the reference a drill names)."""
        with self.lock:
            self.secrets.setdefault(name, {})[uuid.uuid4().hex] = value
        return f"{self.url}/secrets/{name}"

    def add_security_rule(self, nsg_id: str, name: str, properties: dict) -> None:
        """Someone adds a rule to an NSG behind drdrill's back."""
        with self.lock:
            nsg = self.resources[nsg_id.lower()]
            nsg["properties"]["securityRules"].append(
                {"id": f"{nsg['id']}/securityRules/{name}", "name": name, "properties": {**properties, "provisioningState": "Succeeded"}}
            )

    def assigned_identities(self) -> set[str]:
        with self.lock:
            return {i.lower() for r in self.resources.values() for i in ((r.get("identity") or {}).get("userAssignedIdentities") or {})}

    def fail(self, method: str, rtype: str, code: str = "InternalServerError", message: str = "injected failure", times: int = 1) -> None:
        """Make the next `times` (-1: every) long-running `method` on `rtype` end in status Failed."""
        with self.lock:
            self.faults.append(Fault(method.upper(), rtype.lower(), code, message, times))

    def throttle(self, times: int = 1, method: Optional[str] = None, path_contains: Optional[str] = None, retry_after: int = 1) -> None:
        """Answer the next `times` matching requests 429 Too Many Requests with Retry-After."""
        with self.lock:
            self.throttles.append(Throttle(method.upper() if method else None, path_contains.lower() if path_contains else None, times, retry_after))

    def drill_state(self) -> list[str]:
        """Everything drdrill created (resource groups tagged drdrill:drill-id and what is in them)."""
        with self.lock:
            groups = [g for g in self.groups.values() if "drdrill:drill-id" in (g.get("tags") or {})]
            out = [g["id"] for g in groups]
            for g in groups:
                prefix = g["id"].lower() + "/"
                out += [r["id"] for k, r in self.resources.items() if k.startswith(prefix)]
            return out

    def resources_in(self, rg: str, rtype: Optional[str] = None) -> list[dict]:
        prefix = self.rg_id(rg).lower() + "/"
        with self.lock:
            return [json.loads(json.dumps(r)) for k, r in self.resources.items() if k.startswith(prefix) and (rtype is None or r["type"].lower() == rtype.lower())]

    def get(self, rid: str) -> Optional[dict]:
        with self.lock:
            r = self.resources.get(rid.lower())
            return json.loads(json.dumps(r)) if r else None

    # ------------------------------------------------------------ request handling

    def handle(self, method: str, raw_path: str, headers: dict, body: Optional[dict]) -> tuple[int, dict, Optional[dict]]:
        parts = urlsplit(raw_path)
        path = parts.path.rstrip("/")
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        with self.lock:
            for t in self.throttles:
                if t.times != 0 and (t.method in (None, method)) and (t.path_contains is None or t.path_contains in path.lower()):
                    t.times -= 1
                    self.throttled += 1
                    raise ArmError(429, "TooManyRequests", "The request is being throttled.", {"Retry-After": str(t.retry_after)})
        if headers.get("authorization") != f"Bearer {TOKEN}":
            raise ArmError(401, "AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing or invalid.")
        if path.startswith("/secrets/"):
            return self._key_vault(method, path, query)
        segs = path.split("/")[1:]
        low = [s.lower() for s in segs]
        if len(segs) < 2 or low[0] != "subscriptions":
            raise ArmError(404, "NotFound", f"No route for {path}")
        if segs[1] != self.subscription_id:
            raise ArmError(404, "SubscriptionNotFound", f"The subscription '{segs[1]}' could not be found.")
        rest, lrest = segs[2:], low[2:]
        with self.lock:
            # /subscriptions/{s}/operationresults/{id}  (resource group delete monitor)
            if lrest[:1] == ["operationresults"] and len(rest) == 2:
                return self._operation_result(method, rest[1], query)
            # /subscriptions/{s}/providers/{ns}/locations/{loc}/operations/{id}
            if lrest[:1] == ["providers"] and len(rest) == 6 and lrest[2] == "locations" and lrest[4] == "operations":
                return self._async_operation(method, rest[1], rest[5], query)
            # /subscriptions/{s}/providers/Microsoft.Compute/snapshots
            if lrest[:1] == ["providers"] and len(rest) == 3:
                rtype = SUPPORTED_TYPES.get(f"{lrest[1]}/{lrest[2]}")
                if rtype is None or method != "GET":
                    raise ArmError(400, "InvalidResourceType", f"The resource type '{rest[2]}' is not supported by the fake.")
                self._api(query, rtype, f"GET /subscriptions/{{subscriptionId}}/providers/{rtype}")
                self.actions.add(f"{rtype}/read")
                items = [r for r in self.resources.values() if r["type"] == rtype]
                return self._page(items, query)
            if lrest[:1] != ["resourcegroups"]:
                raise ArmError(404, "NotFound", f"No route for {path}")
            if len(rest) == 1:
                return self._rg_list(method, query)
            rg = rest[1]
            if len(rest) == 2:
                return self._rg(method, rg, query, body)
            if len(rest) == 3 and lrest[2] == "resources":
                self._api(query, "Microsoft.Resources", "GET /subscriptions/{subscriptionId}/resourcegroups/{resourceGroupName}/resources")
                self.actions.add("Microsoft.Resources/subscriptions/resourceGroups/resources/read")
                self._need_group(rg)
                prefix = self.rg_id(rg).lower() + "/"
                items = [
                    {k: r[k] for k in ("id", "name", "type", "location", "tags") if k in r}
                    for key, r in self.resources.items()
                    if key.startswith(prefix)
                ]
                return self._page(items, query)
            if len(rest) >= 6 and lrest[2] == "providers":
                return self._resource(method, rg, rest[3:], lrest[3:], query, body)
            raise ArmError(404, "NotFound", f"No route for {path}")

    def _api(self, query: dict, key: str, template: str) -> None:
        version = query.get("api-version")
        if not version:
            raise ArmError(400, "MissingApiVersionParameter", "The api-version query parameter (?api-version=) is required for all requests.")
        allowed = API_VERSIONS.get(key) or API_VERSIONS.get(key.split("/")[0], set())
        if version not in allowed:
            raise ArmError(
                400,
                "InvalidApiVersionParameter",
                f"The api-version '{version}' is invalid. The supported versions are '{', '.join(sorted(allowed))}'.",
            )
        self.calls.append((template.split(" ", 1)[0], template.split(" ", 1)[1], version))

    def _page(self, items: list, query: dict) -> tuple[int, dict, dict]:
        start = int(query.get("$skiptoken", "0"))
        page = items[start : start + self.page_size]
        body: dict = {"value": json.loads(json.dumps(page))}
        if start + self.page_size < len(items):
            body["nextLink"] = f"{self._local.base}{self._local.path}?api-version={query['api-version']}&$skiptoken={start + self.page_size}"
        return 200, {}, body

    def _need_group(self, rg: str) -> dict:
        g = self.groups.get(rg.lower())
        if g is None:
            raise ArmError(404, "ResourceGroupNotFound", f"Resource group '{rg}' could not be found.")
        return g

    def _fault(self, method: str, rtype: str) -> Optional[Fault]:
        for f in self.faults:
            if f.times != 0 and f.method == method and f.type == rtype.lower():
                if f.times > 0:
                    f.times -= 1
                return f
        return None

    # ---- resource groups

    def _rg_list(self, method: str, query: dict):
        if method != "GET":
            raise ArmError(405, "MethodNotAllowed", "The requested method is not allowed.")
        self._api(query, "Microsoft.Resources", "GET /subscriptions/{subscriptionId}/resourcegroups")
        self.actions.add("Microsoft.Resources/subscriptions/resourceGroups/read")
        items = list(self.groups.values())
        flt = query.get("$filter")
        if flt:
            m = re.fullmatch(r"\s*tagName eq '([^']*)'(?:\s+and\s+tagValue eq '([^']*)')?\s*", flt)
            if not m:
                raise ArmError(400, "InvalidFilterInQueryString", f"Invalid $filter '{flt}'.")
            name, value = m.group(1), m.group(2)
            items = [g for g in items if name in (g.get("tags") or {}) and (value is None or g["tags"][name] == value)]
        return self._page(items, query)

    def _rg(self, method: str, rg: str, query: dict, body: Optional[dict]):
        template = "/subscriptions/{subscriptionId}/resourcegroups/{resourceGroupName}"
        self._api(query, "Microsoft.Resources", f"{method} {template}")
        key = rg.lower()
        if method == "GET":
            self.actions.add("Microsoft.Resources/subscriptions/resourceGroups/read")
            return 200, {}, self._need_group(rg)
        if method == "PUT":
            self.actions.add("Microsoft.Resources/subscriptions/resourceGroups/write")
            existing = self.groups.get(key)
            if existing and existing["properties"]["provisioningState"] == "Deleting":
                raise ArmError(409, "ResourceGroupBeingDeleted", f"The resource group '{rg}' is in deprovisioning state and cannot perform this operation.")
            if not body or not body.get("location"):
                raise ArmError(400, "LocationRequired", "The location property is required for this definition.")
            self.add_group(existing["name"] if existing else rg, body.get("tags"), body["location"])
            return (200 if existing else 201), {}, self.groups[key]
        if method == "DELETE":
            self.actions.add("Microsoft.Resources/subscriptions/resourceGroups/delete")
            g = self._need_group(rg)
            g["properties"]["provisioningState"] = "Deleting"
            prefix = g["id"].lower() + "/"
            fault = self._fault("DELETE", "Microsoft.Resources/resourceGroups")

            def done() -> None:
                for k in [k for k in self.resources if k.startswith(prefix)]:
                    self.actions.add(f"{self.resources[k]['type']}/delete")
                    del self.resources[k]
                self.groups.pop(key, None)

            def failed() -> None:
                g["properties"]["provisioningState"] = "Succeeded"

            op = self._operation("Microsoft.Resources", done, failed, fault)
            loc = f"{self._local.base}/subscriptions/{self.subscription_id}/operationresults/{op.id}?api-version={query['api-version']}"
            return 202, {"Location": loc}, None
        raise ArmError(405, "MethodNotAllowed", "The requested method is not allowed.")

    # ---- operations

    def _operation(self, namespace: str, done, failed=None, fault: Optional[Fault] = None) -> Operation:
        op = Operation(id=str(uuid.uuid4()), namespace=namespace, polls_left=self.polls_to_finish, on_done=done, on_fail=failed)
        if fault is not None:
            op.error = {"code": fault.code, "message": fault.message}
        self.operations[op.id] = op
        return op

    def _advance(self, op: Operation) -> None:
        if op.status != "InProgress":
            return
        op.polls_left -= 1
        if op.polls_left > 0:
            return
        if op.error:
            op.status = "Failed"
            if op.on_fail:
                op.on_fail()
        else:
            op.status = "Succeeded"
            op.on_done()

    def _async_operation(self, method: str, namespace: str, opid: str, query: dict):
        ns = {"microsoft.compute": "Microsoft.Compute", "microsoft.network": "Microsoft.Network"}.get(namespace.lower())
        if ns is None or method != "GET":
            raise ArmError(404, "NotFound", "No such operation endpoint.")
        self._api(query, f"{ns}/locations", f"GET /subscriptions/{{subscriptionId}}/providers/{ns}/locations/{{location}}/operations/{{operationId}}")
        self.actions.add(f"{ns}/locations/operations/read")
        op = self.operations.get(opid)
        if op is None or op.namespace != ns:
            raise ArmError(404, "OperationNotFound", f"The operation '{opid}' was not found.")
        self._advance(op)
        body: dict = {"name": op.id, "status": op.status, "startTime": op.started}
        if op.status != "InProgress":
            body["endTime"] = _now()
        if op.status == "Failed":
            body["error"] = op.error
        return 200, {}, body

    def _operation_result(self, method: str, opid: str, query: dict):
        self._api(query, "Microsoft.Resources", "GET /subscriptions/{subscriptionId}/operationresults/{operationId}")
        self.actions.add("Microsoft.Resources/subscriptions/operationresults/read")
        op = self.operations.get(opid)
        if op is None or op.namespace != "Microsoft.Resources":
            raise ArmError(404, "OperationNotFound", f"The operation '{opid}' was not found.")
        self._advance(op)
        if op.status == "InProgress":
            return 202, {"Location": f"{self._local.base}{self._local.path}?api-version={query['api-version']}"}, None
        if op.status == "Failed":
            raise ArmError(500, op.error["code"], op.error["message"])
        return 200, {}, None

    # ---- resources

    def _resource(self, method: str, rg: str, rest: list[str], lrest: list[str], query: dict, body: Optional[dict]):
        rtype = SUPPORTED_TYPES.get(f"{lrest[0]}/{lrest[1]}")
        if rtype is None:
            raise ArmError(400, "InvalidResourceType", f"The resource type '{rest[1]}' could not be found in the namespace '{rest[0]}'.")
        name = rest[2]
        base_tpl = f"/subscriptions/{{subscriptionId}}/resourceGroups/{{resourceGroupName}}/providers/{rtype}/{PATH_PARAM[rtype]}"
        rid = f"{self.rg_id(rg)}/providers/{rtype}/{name}"
        # child: subnets / instanceView
        if len(rest) > 3:
            child = "/".join(lrest[3:])
            if rtype == "Microsoft.Network/virtualNetworks" and lrest[3] == "subnets" and len(rest) == 5 and method == "GET":
                self._api(query, rtype, f"GET {base_tpl}/subnets/{{subnetName}}")
                self.actions.add("Microsoft.Network/virtualNetworks/subnets/read")
                vnet = self._get(rg, rtype, name)
                for s in vnet["properties"].get("subnets", []):
                    if s["name"].lower() == lrest[4]:
                        return 200, {}, s
                raise ArmError(404, "NotFound", f"Resource {rid}/subnets/{rest[4]} not found.")
            if rtype == "Microsoft.Compute/virtualMachines" and child == "instanceview" and method == "GET":
                self._api(query, rtype, f"GET {base_tpl}/instanceView")
                self.actions.add("Microsoft.Compute/virtualMachines/instanceView/read")
                vm = self._get(rg, rtype, name)
                state = vm["properties"]["provisioningState"].lower()
                statuses = [{"code": f"ProvisioningState/{state}", "level": "Info" if state != "failed" else "Error"}]
                if state == "succeeded":
                    statuses.append({"code": "PowerState/running", "level": "Info", "displayStatus": "VM running"})
                return 200, {}, {"computerName": name, "statuses": statuses}
            raise ArmError(404, "NotFound", f"No route for {rid}/{'/'.join(rest[3:])}")
        self._api(query, rtype, f"{method} {base_tpl}")
        if method == "GET":
            self.actions.add(f"{rtype}/read")
            return 200, {}, self._get(rg, rtype, name)
        if method == "PUT":
            self.actions.add(f"{rtype}/write")
            return self._put(rg, rtype, name, rid, body or {}, query)
        if method == "DELETE":
            self.actions.add(f"{rtype}/delete")
            return self._delete(rg, rtype, rid, query)
        if method == "PATCH" and rtype == "Microsoft.Compute/disks":
            self.actions.add(f"{rtype}/write")
            disk = self._get(rg, rtype, name)
            if "tags" in (body or {}):
                disk["tags"] = dict(body["tags"] or {})
            return 200, {}, disk
        raise ArmError(405, "MethodNotAllowed", f"The fake does not implement {method} on {rtype}.")

    def _key_vault(self, method: str, path: str, query: dict):
        """Key Vault's GET {vault}/secrets/{name}[/{version}] (api-version 7.4)."""
        if query.get("api-version") != "7.4":
            raise ArmError(400, "BadParameter", f"The api-version '{query.get('api-version')}' is not supported by the fake vault (7.4).")
        parts = path.split("/")[2:]
        if method != "GET" or len(parts) not in (1, 2):
            raise ArmError(405, "MethodNotAllowed", "The fake vault only reads secrets.")
        versions = self.secrets.get(parts[0])
        version = parts[1] if len(parts) == 2 else (list(versions)[-1] if versions else "")
        if not versions or version not in versions:
            raise ArmError(404, "SecretNotFound", f"A secret with (name/id) {'/'.join(parts)} was not found in this key vault.")
        self.calls.append(("GET", "/secrets/{secret-name}/{secret-version}", "7.4"))
        return 200, {}, {"value": versions[version], "id": f"{self._local.base}/secrets/{parts[0]}/{version}", "attributes": {"enabled": True}}

    def _delete(self, rg: str, rtype: str, rid: str, query: dict):
        """DELETE a resource as ARM does: 204 when there is nothing to delete, a refusal while another
        resource uses it, otherwise 202 and a long-running operation (Azure-AsyncOperation, Location)."""
        self._need_group(rg)
        resource = self.resources.get(rid.lower())
        if resource is None:
            return 204, {}, None
        self._refuse_if_in_use(resource)
        resource["properties"]["provisioningState"] = "Deleting"

        def done() -> None:
            self.resources.pop(rid.lower(), None)
            os_disk = (resource["properties"].get("storageProfile") or {}).get("osDisk") or {}
            for key, d in list(self.resources.items()):  # a VM's disks are detached (deleteOption Detach), not deleted
                if d["type"] == "Microsoft.Compute/disks" and d["properties"].get("managedBy", "").lower() == rid.lower():
                    if os_disk.get("deleteOption") == "Delete" and key == ((os_disk.get("managedDisk") or {}).get("id") or "").lower():
                        del self.resources[key]  # deleted with the VM
                        continue
                    d["properties"]["diskState"] = "Unattached"
                    d["properties"].pop("managedBy")
            if rtype == "Microsoft.Compute/virtualMachines":
                for hook in self.vm_hooks:
                    hook("deleted", json.loads(json.dumps(resource)))

        def failed() -> None:
            resource["properties"]["provisioningState"] = "Failed"

        ns = rtype.split("/")[0]
        op = self._operation(ns, done, failed, self._fault("DELETE", rtype))
        status_url = f"{self._local.base}/subscriptions/{self.subscription_id}/providers/{ns}/locations/{resource['location']}/operations/{op.id}?api-version={query['api-version']}"
        return 202, {"Azure-AsyncOperation": status_url, "Location": status_url + "&monitor=true"}, None

    def _refuse_if_in_use(self, resource: dict) -> None:
        """ARM's refusals to delete what another resource still uses (so the deletion order matters)."""
        rid, rtype, p = resource["id"].lower(), resource["type"], resource["properties"]
        others = list(self.resources.values())
        if rtype == "Microsoft.Compute/disks" and p.get("managedBy"):
            raise ArmError(409, "OperationNotAllowed", f"Disk {resource['name']} is attached to VM {p['managedBy']}.")
        if rtype == "Microsoft.Network/networkInterfaces":
            users = [o["id"] for o in others if any(n.get("id", "").lower() == rid for n in ((o["properties"].get("networkProfile") or {}).get("networkInterfaces") or []))]
            if users:
                raise ArmError(400, "NicInUse", f"Network Interface {resource['id']} is used by existing resource {users[0]}. "
                                                "In order to delete the network interface, it must be dissociated from the resource.")
        if rtype == "Microsoft.Network/virtualNetworks":
            users = [o["id"] for o in others for ipc in o["properties"].get("ipConfigurations") or []
                     if ((ipc.get("properties") or {}).get("subnet") or {}).get("id", "").lower().startswith(rid + "/subnets/")]
            if users:
                raise ArmError(400, "InUseSubnetCannotBeDeleted", f"Subnet of {resource['id']} is in use by {users[0]} and cannot be deleted.")
        if rtype == "Microsoft.Network/networkSecurityGroups":
            users = [s["id"] for o in others for s in o["properties"].get("subnets") or []
                     if ((s.get("properties") or {}).get("networkSecurityGroup") or {}).get("id", "").lower() == rid]
            if users:
                raise ArmError(400, "InUseNetworkSecurityGroupCannotBeDeleted",
                               f"Network security group {resource['id']} cannot be deleted because it is in use by {users[0]}.")

    def _check_from_image(self, rg: str, name: str, rid: str, props: dict, body: dict, final: dict) -> None:
        """A VM from an image, as ARM takes it: an image, an osProfile (computer name, admin user,
        an SSH key or a password; custom data base64, at most 64 KB), an OS disk ARM creates (without
        the VM's tags) when the VM is created; with a user-assigned identity, `assign/action` on it."""
        sp = props["storageProfile"]
        image = sp.get("imageReference") or {}
        if not (image.get("id") or all(image.get(k) for k in ("publisher", "offer", "sku", "version"))):
            raise ArmError(400, "InvalidParameter", "Required parameter 'imageReference' is missing (null).")
        if image.get("id"):
            self.actions.add("Microsoft.Compute/images/read")
        osp = props.get("osProfile") or {}
        linux = osp.get("linuxConfiguration") or {}
        keys = ((linux.get("ssh") or {}).get("publicKeys")) or []
        if not osp.get("computerName") or not osp.get("adminUsername"):
            raise ArmError(400, "InvalidParameter", "Required parameter 'osProfile' is missing (null).")
        if linux.get("disablePasswordAuthentication") and not keys:
            raise ArmError(400, "InvalidParameter", "Destination path for SSH public keys is required when password authentication is disabled.")
        if "adminPassword" in osp:
            raise ArmError(400, "InvalidParameter", "The fake refuses passwords on drill VMs.")
        if osp.get("customData"):
            try:
                data = base64.b64decode(osp["customData"], validate=True)
            except (binascii.Error, ValueError):
                raise ArmError(400, "InvalidParameter", "Custom data in OSProfile must be in Base64 encoding.") from None
            if len(data) > 65535:
                raise ArmError(400, "InvalidParameter", "Custom data in OSProfile must be at most 64 KB.")
        disk_name = sp["osDisk"].get("name") or f"{name}_OsDisk_1_{uuid.uuid4().hex}"
        disk_id = f"{self.rg_id(rg)}/providers/Microsoft.Compute/disks/{disk_name}"
        sp["osDisk"]["managedDisk"] = {**(sp["osDisk"].get("managedDisk") or {}), "id": disk_id}
        sp["osDisk"].setdefault("osType", "Linux")
        self.actions.add("Microsoft.Compute/disks/write")

        def os_disk() -> None:
            self._put_raw(rg, "Microsoft.Compute/disks", disk_name, {
                "location": body["location"],
                "tags": {},  # ARM does not give the OS disk the VM's tags
                "properties": {"osType": "Linux", "diskSizeGB": 30, "diskState": "Attached", "managedBy": rid, "provisioningState": "Succeeded",
                               "creationData": {"createOption": "FromImage", "imageReference": image}, "timeCreated": _now()},
            })

        final["os_disk"] = os_disk
        identity = body.get("identity") or {}
        if identity:
            assigned = identity.get("userAssignedIdentities") or {}
            if identity.get("type") not in ("UserAssigned", "SystemAssigned, UserAssigned", "SystemAssigned") or (
                "UserAssigned" in identity.get("type", "") and not assigned
            ):
                raise ArmError(400, "InvalidParameter", "The identity of the VM is invalid.")
            for identity_id in assigned:
                if not re.fullmatch(r"/subscriptions/[^/]+/resource[gG]roups/[^/]+/providers/Microsoft\.ManagedIdentity/userAssignedIdentities/[^/]+", identity_id):
                    raise ArmError(400, "InvalidParameter", f"Resource id '{identity_id}' is not a user-assigned identity.")
                self.actions.add("Microsoft.ManagedIdentity/userAssignedIdentities/assign/action")
            final["identity"] = {
                "type": identity["type"],
                "userAssignedIdentities": {i: {"principalId": str(uuid.uuid4()), "clientId": str(uuid.uuid4())} for i in assigned},
            }

    def token_for(self, resource: str, identity: Optional[str]) -> dict:
        """IMDS: a managed-identity token, for an identity some VM was given (the one VM's, if none is named)."""
        self.imds_requests.append({"resource": resource, "identity": identity})
        if identity is not None and identity.lower() not in self.assigned_identities():
            raise ArmError(400, "invalid_request", "Identity not found")
        expires = int(_dt.datetime.now(_dt.timezone.utc).timestamp()) + 3599
        return {"access_token": TOKEN, "expires_in": "3599", "expires_on": str(expires), "resource": resource, "token_type": "Bearer"}

    def _get(self, rg: str, rtype: str, name: str) -> dict:
        self._need_group(rg)
        r = self.resources.get(f"{self.rg_id(rg)}/providers/{rtype}/{name}".lower())
        if r is None:
            raise ArmError(
                404,
                "ResourceNotFound",
                f"The Resource '{rtype}/{name}' under resource group '{rg}' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix",
            )
        return r

    def _ref(self, rid: Optional[str], what: str) -> dict:
        r = self.resources.get((rid or "").lower())
        if r is None:
            raise ArmError(400, "InvalidResourceReference", f"Resource {rid} referenced by {what} was not found.")
        return r

    def _put(self, rg: str, rtype: str, name: str, rid: str, body: dict, query: dict):
        # Long (about 120 lines) on purpose: one branch per resource type, each holding the checks
        # ARM makes on that type's PUT (references, join actions, attachments), read side by side.
        g = self._need_group(rg)
        if g["properties"]["provisioningState"] == "Deleting":
            raise ArmError(409, "ResourceGroupBeingDeleted", f"The resource group '{rg}' is being deleted.")
        if not body.get("location"):
            raise ArmError(400, "LocationRequired", "The location property is required for this definition.")
        props = json.loads(json.dumps(body.get("properties") or {}))
        existing = self.resources.get(rid.lower())
        final: dict[str, Any] = {}
        if rtype == "Microsoft.Compute/disks":
            cd = props.get("creationData") or {}
            if cd.get("createOption") != "Copy":
                raise ArmError(400, "InvalidParameter", "The fake only creates disks by copying a snapshot (createOption Copy).")
            snap = self.resources.get((cd.get("sourceResourceId") or "").lower())
            if snap is None or snap["type"] != "Microsoft.Compute/snapshots":
                raise ArmError(404, "NotFound", f"Source {cd.get('sourceResourceId')} was not found.")
            if snap["location"] != body["location"]:
                raise ArmError(400, "BadRequest", "A disk must be in the same region as its source snapshot.")
            sp = snap["properties"]
            props.setdefault("diskSizeGB", sp["diskSizeGB"])
            props["diskSizeBytes"] = props["diskSizeGB"] << 30
            for k in ("osType", "hyperVGeneration"):
                if sp.get(k):
                    props.setdefault(k, sp[k])
            props["timeCreated"] = existing["properties"]["timeCreated"] if existing else _now()
            props["diskState"] = existing["properties"].get("diskState", "Unattached") if existing else "Unattached"
            props["uniqueId"] = str(uuid.uuid4())
        elif rtype == "Microsoft.Network/virtualNetworks":
            if props.get("virtualNetworkPeerings"):
                self.actions.add("Microsoft.Network/virtualNetworks/peer/action")
            for s in props.get("subnets", []):
                s["id"] = f"{rid}/subnets/{s['name']}"
                s["type"] = "Microsoft.Network/virtualNetworks/subnets"
                nsg = (s.get("properties") or {}).get("networkSecurityGroup")
                if nsg:
                    self._ref(nsg.get("id"), f"subnet {s['name']}")
                    self.actions.add("Microsoft.Network/networkSecurityGroups/join/action")
                s.setdefault("properties", {})["provisioningState"] = "Succeeded"
            props.setdefault("virtualNetworkPeerings", [])
        elif rtype == "Microsoft.Network/networkSecurityGroups":
            for r in props.get("securityRules", []):
                r["id"] = f"{rid}/securityRules/{r['name']}"
                r.setdefault("properties", {})["provisioningState"] = "Succeeded"
        elif rtype == "Microsoft.Network/networkInterfaces":
            for i, ipc in enumerate(props.get("ipConfigurations", [])):
                ip = ipc.setdefault("properties", {})
                subnet_id = (ip.get("subnet") or {}).get("id", "")
                vnet_id, _, subnet_name = subnet_id.partition("/subnets/")
                vnet = self._ref(vnet_id, "the NIC's ip configuration")
                subnet = next((s for s in vnet["properties"]["subnets"] if s["name"].lower() == subnet_name.lower()), None)
                if subnet is None:
                    raise ArmError(400, "InvalidResourceReference", f"Subnet {subnet_id} was not found.")
                self.actions.add("Microsoft.Network/virtualNetworks/subnets/join/action")
                if ip.get("publicIPAddress"):
                    self._ref(ip["publicIPAddress"].get("id"), "the NIC")
                    self.actions.add("Microsoft.Network/publicIPAddresses/join/action")
                ipc["id"] = f"{rid}/ipConfigurations/{ipc['name']}"
                if existing:
                    ip["privateIPAddress"] = existing["properties"]["ipConfigurations"][i]["properties"]["privateIPAddress"]
                else:
                    net = ipaddress.ip_network(subnet["properties"]["addressPrefix"])
                    n = self._ip_next.get(subnet_id.lower(), 4)  # Azure reserves .0-.3
                    self._ip_next[subnet_id.lower()] = n + 1
                    ip["privateIPAddress"] = str(net.network_address + n)
                ip["privateIPAddressVersion"] = "IPv4"
                ip["provisioningState"] = "Succeeded"
        elif rtype == "Microsoft.Compute/virtualMachines":
            sp = props.get("storageProfile") or {}
            disks = [sp.get("osDisk") or {}] + list(sp.get("dataDisks") or [])
            from_image = (sp.get("osDisk") or {}).get("createOption") == "FromImage"
            if from_image:
                self._check_from_image(rg, name, rid, props, body, final)
                disks = disks[1:]
            for d in disks:
                ref = self._ref((d.get("managedDisk") or {}).get("id"), f"VM {name}")
                state = ref["properties"].get("diskState")
                if state != "Unattached" and ref["properties"].get("managedBy", "").lower() != rid.lower():
                    raise ArmError(409, "OperationNotAllowed", f"Disk {ref['name']} is already attached ({state}).")
            self.actions.add("Microsoft.Compute/disks/write")  # attaching a disk updates it
            for nic in (props.get("networkProfile") or {}).get("networkInterfaces", []):
                self._ref(nic.get("id"), f"VM {name}")
                self.actions.add("Microsoft.Network/networkInterfaces/join/action")
            if "osProfile" in props and not from_image:
                raise ArmError(400, "InvalidParameter", "Parameter 'osProfile' is not allowed when attaching an OS disk.")

            def attach() -> None:
                if "os_disk" in final:
                    final["os_disk"]()
                for d in disks:
                    ref = self.resources[d["managedDisk"]["id"].lower()]
                    ref["properties"]["diskState"] = "Attached"
                    ref["properties"]["managedBy"] = rid

            final["attach"] = attach
        else:
            raise ArmError(400, "InvalidResourceType", f"The fake does not create {rtype}.")

        resource = {"id": rid, "name": name, "type": rtype, "location": body["location"], "tags": dict(body.get("tags") or {}), "properties": props}
        if body.get("sku"):
            resource["sku"] = body["sku"]
        if "identity" in final:
            resource["identity"] = final["identity"]
        fault = self._fault("PUT", rtype)
        lro = rtype in ("Microsoft.Compute/disks", "Microsoft.Compute/virtualMachines", "Microsoft.Network/virtualNetworks",
                        "Microsoft.Network/networkSecurityGroups", "Microsoft.Network/networkInterfaces")
        resource["properties"]["provisioningState"] = ("Creating" if not existing else "Updating") if lro else "Succeeded"
        self.resources[rid.lower()] = resource

        def done() -> None:
            resource["properties"]["provisioningState"] = "Succeeded"
            if "attach" in final:
                final["attach"]()
            if rtype == "Microsoft.Compute/virtualMachines":
                for hook in self.vm_hooks:
                    hook("created", json.loads(json.dumps(resource)))

        def failed() -> None:
            resource["properties"]["provisioningState"] = "Failed"

        ns = rtype.split("/")[0]
        op = self._operation(ns, done, failed, fault)
        status_url = f"{self._local.base}/subscriptions/{self.subscription_id}/providers/{ns}/locations/{body['location']}/operations/{op.id}?api-version={query['api-version']}"
        headers = {"Azure-AsyncOperation": status_url}
        if rtype == "Microsoft.Compute/disks":
            # Compute's disk RP answers 202 with no body and both headers.
            headers["Location"] = status_url + "&monitor=true"
            return 202, headers, None
        return (200 if existing else 201), headers, resource


class _Handler(BaseHTTPRequestHandler):
    fake: AzureFake
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        request_id = str(uuid.uuid4())
        headers = {"x-ms-request-id": request_id, "x-ms-correlation-request-id": request_id}
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            status, extra, out = 400, {}, {"error": {"code": "InvalidRequestContent", "message": "The request content was invalid."}}
        else:
            fake = self.fake
            host = self.headers.get("Host") or ""
            fake._local.base = f"https://{host}" if host else fake.url
            fake._local.path = urlsplit(self.path).path
            try:
                status, extra, out = fake.handle(method, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            except ArmError as exc:
                status, extra, out = exc.status, exc.headers, {"error": {"code": exc.code, "message": exc.message}}
        headers.update(extra)
        payload = b"" if out is None else json.dumps(out).encode()
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if payload:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(payload)

    def do_GET(self) -> None:  # noqa: N802
        self._serve("GET")

    def do_PUT(self) -> None:  # noqa: N802
        self._serve("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._serve("DELETE")

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve("HEAD")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def do_PATCH(self) -> None:  # noqa: N802
        self._serve("PATCH")


class _ImdsHandler(BaseHTTPRequestHandler):
    """The instance metadata service's token endpoint (plain HTTP, like 169.254.169.254)."""

    fake: AzureFake

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def do_GET(self) -> None:  # noqa: N802
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if parts.path != "/metadata/identity/oauth2/token" or self.headers.get("Metadata") != "true" or not query.get("resource"):
            status, body = 400, {"error": "invalid_request", "error_description": "Required metadata header not specified or path not found"}
        else:
            try:
                with self.fake.lock:
                    status, body = 200, self.fake.token_for(query["resource"], query.get("msi_res_id") or query.get("mi_res_id"))
            except ArmError as exc:
                status, body = exc.status, {"error": exc.code, "error_description": exc.message}
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
