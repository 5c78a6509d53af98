"""A small in-process HTTP fake of the Compute Engine REST API (v1), for the GCP provider's tests.

No Compute Engine emulator exists, so this speaks just the REST methods the provider calls, with
the real JSON shapes: `kind`, `selfLink` (canonical https://www.googleapis.com/compute/v1/... links),
`id` as a string, `creationTimestamp` RFC 3339, Operation objects that go PENDING -> RUNNING -> DONE
as they are polled, list pages with `nextPageToken`, aggregated lists keyed by `zones/<zone>`, and
error bodies `{"error": {"code": 404, "message": ..., "errors": [{"reason": "notFound", ...}]}}`.

It also keeps the rules the provider must respect: names and labels are validated, a disk attached
to an instance cannot be deleted, a subnetwork used by an instance cannot be deleted, a network with
subnetworks, firewall rules or custom routes cannot be deleted, a resource is gone only when its
delete operation is DONE.

Fault injection:
    fake.inject("compute.snapshots.list", status=429, times=2)     # rateLimitExceeded, then normal
    fake.inject("compute.disks.insert", status=403, reason="quotaExceeded")
    fake.fail_operation("compute.instances.insert", code="ZONE_RESOURCE_POOL_EXHAUSTED")

`fake.calls` records every method id served (e.g. "compute.disks.insert"); `fake.leftovers()` lists
every resource the tests did not seed: it must be empty after a drill.

For drill probes: an instance may boot from an image (`initializeParams`: the boot disk is created
with the instance, labelled as asked, and deleted with it when `autoDelete`), carry `metadata`
(its startup script) and a service account; `instance_hooks` are called `(event, instance)` when
an instance is created ("created") or deleted ("deleted"): a test stands in there for Compute
Engine booting it (the fake runs no startup script). Secret Manager's `versions.access`
(GET /v1/projects/{p}/secrets/{s}/versions/{v}:access) is served too, from `add_secret`; its calls
are in `secret_calls`, not `calls` (the probe reads secrets, not the worker).
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional
from urllib.parse import parse_qs, urlsplit

BASE = "https://www.googleapis.com/compute/v1/"
NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
LABEL_KEY_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
LABEL_VALUE_RE = re.compile(r"^[a-z0-9_-]{0,63}$")

# (HTTP method, path regex under /compute/v1/, method id)
ROUTES: list[tuple[str, str, str]] = [
    ("GET", r"projects/(?P<project>[^/]+)/global/snapshots", "compute.snapshots.list"),
    ("GET", r"projects/(?P<project>[^/]+)/global/snapshots/(?P<name>[^/]+)", "compute.snapshots.get"),
    ("GET", r"projects/(?P<project>[^/]+)/aggregated/disks", "compute.disks.aggregatedList"),
    ("GET", r"projects/(?P<project>[^/]+)/zones/(?P<zone>[^/]+)/disks", "compute.disks.list"),
    ("POST", r"projects/(?P<project>[^/]+)/zones/(?P<zone>[^/]+)/disks", "compute.disks.insert"),
    ("GET", r"projects/(?P<project>[^/]+)/zones/(?P<zone>[^/]+)/disks/(?P<name>[^/]+)", "compute.disks.get"),
    ("DELETE", r"projects/(?P<project>[^/]+)/zones/(?P<zone>[^/]+)/disks/(?P<name>[^/]+)", "compute.disks.delete"),
    ("GET", r"projects/(?P<project>[^/]+)/aggregated/instances", "compute.instances.aggregatedList"),
    ("GET", r"projects/(?P<project>[^/]+)/zones/(?P<zone>[^/]+)/instances", "compute.instances.list"),
    ("POST", r"projects/(?P<project>[^/]+)/zones/(?P<zone>[^/]+)/instances", "compute.instances.insert"),
    ("GET", r"projects/(?P<project>[^/]+)/zones/(?P<zone>[^/]+)/instances/(?P<name>[^/]+)", "compute.instances.get"),
    ("DELETE", r"projects/(?P<project>[^/]+)/zones/(?P<zone>[^/]+)/instances/(?P<name>[^/]+)", "compute.instances.delete"),
    ("GET", r"projects/(?P<project>[^/]+)/global/networks", "compute.networks.list"),
    ("POST", r"projects/(?P<project>[^/]+)/global/networks", "compute.networks.insert"),
    ("GET", r"projects/(?P<project>[^/]+)/global/networks/(?P<name>[^/]+)", "compute.networks.get"),
    ("DELETE", r"projects/(?P<project>[^/]+)/global/networks/(?P<name>[^/]+)", "compute.networks.delete"),
    ("GET", r"projects/(?P<project>[^/]+)/regions/(?P<region>[^/]+)/subnetworks", "compute.subnetworks.list"),
    ("POST", r"projects/(?P<project>[^/]+)/regions/(?P<region>[^/]+)/subnetworks", "compute.subnetworks.insert"),
    ("GET", r"projects/(?P<project>[^/]+)/regions/(?P<region>[^/]+)/subnetworks/(?P<name>[^/]+)", "compute.subnetworks.get"),
    ("DELETE", r"projects/(?P<project>[^/]+)/regions/(?P<region>[^/]+)/subnetworks/(?P<name>[^/]+)", "compute.subnetworks.delete"),
    ("GET", r"projects/(?P<project>[^/]+)/global/firewalls", "compute.firewalls.list"),
    ("POST", r"projects/(?P<project>[^/]+)/global/firewalls", "compute.firewalls.insert"),
    ("GET", r"projects/(?P<project>[^/]+)/global/firewalls/(?P<name>[^/]+)", "compute.firewalls.get"),
    ("DELETE", r"projects/(?P<project>[^/]+)/global/firewalls/(?P<name>[^/]+)", "compute.firewalls.delete"),
    ("GET", r"projects/(?P<project>[^/]+)/global/routes", "compute.routes.list"),
    ("GET", r"projects/(?P<project>[^/]+)/global/routes/(?P<name>[^/]+)", "compute.routes.get"),
    ("DELETE", r"projects/(?P<project>[^/]+)/global/routes/(?P<name>[^/]+)", "compute.routes.delete"),
    ("GET", r"projects/(?P<project>[^/]+)/zones/(?P<zone>[^/]+)/operations/(?P<name>[^/]+)", "compute.zoneOperations.get"),
    ("POST", r"projects/(?P<project>[^/]+)/zones/(?P<zone>[^/]+)/operations/(?P<name>[^/]+)/wait", "compute.zoneOperations.wait"),
    ("GET", r"projects/(?P<project>[^/]+)/regions/(?P<region>[^/]+)/operations/(?P<name>[^/]+)", "compute.regionOperations.get"),
    ("POST", r"projects/(?P<project>[^/]+)/regions/(?P<region>[^/]+)/operations/(?P<name>[^/]+)/wait", "compute.regionOperations.wait"),
    ("GET", r"projects/(?P<project>[^/]+)/global/operations/(?P<name>[^/]+)", "compute.globalOperations.get"),
    ("POST", r"projects/(?P<project>[^/]+)/global/operations/(?P<name>[^/]+)/wait", "compute.globalOperations.wait"),
]
_COMPILED = [(m, re.compile("^" + p + "$"), mid) for m, p, mid in ROUTES]
# The REST path of each method id, for the provider's note and the role test.
REST_PATHS = {mid: f"{m} /compute/v1/" + re.sub(r"\(\?P<(\w+)>\[\^/\]\+\)", r"{\1}", p) for m, p, mid in ROUTES}

# Every method any fake served in this test session (the role test checks them against the role).
ALL_CALLS: set[str] = set()

COLLECTIONS = ("snapshots", "disks", "instances", "networks", "subnetworks", "firewalls", "routes")
KINDS = {
    "snapshots": "compute#snapshot",
    "disks": "compute#disk",
    "instances": "compute#instance",
    "networks": "compute#network",
    "subnetworks": "compute#subnetwork",
    "firewalls": "compute#firewall",
    "routes": "compute#route",
}


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def body(self) -> dict:
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "errors": [{"message": self.message, "domain": "global" if self.code != 429 else "usageLimits", "reason": self.reason}],
            }
        }


def _now() -> datetime:
    return datetime.now(timezone(timedelta(hours=-8)))  # Compute Engine reports Pacific time


def rfc3339(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds")


def _scope_key(scope: str) -> tuple[str, str]:
    """'zones/us-central1-a' -> ('zone', 'us-central1-a'); 'global' -> ('global', '')."""
    if scope == "global":
        return ("global", "")
    kind, name = scope.split("/")
    return (kind[:-1], name)


@dataclass
class Injection:
    method: str
    status: int
    reason: str
    message: str
    times: Optional[int]  # None: every time


@dataclass
class OpFailure:
    method: str
    code: str
    message: str
    http_status: int
    times: Optional[int]


@dataclass
class Operation:
    body: dict
    steps_left: int
    on_done: Any = None  # callable run when the operation completes successfully
    error: Optional[dict] = None


@dataclass
class Store:
    # (project, collection, scope, name) -> resource dict
    items: dict = field(default_factory=dict)
    seeded: set = field(default_factory=set)


class ComputeFake:
    """Start with `with ComputeFake() as fake:`; point the provider at `fake.endpoint`."""

    def __init__(self, *, op_steps: int = 2, page_size: int = 2):
        self.op_steps = op_steps
        self.page_size = page_size
        self.store = Store()
        self.ops: dict[tuple[str, str, str], Operation] = {}
        self.calls: list[str] = []
        self.injections: list[Injection] = []
        self.op_failures: list[OpFailure] = []
        self.lock = threading.RLock()
        self._ids = itertools.count(1_000_000_000_000_000_000)
        self._ips: dict[str, int] = {}
        self.subnet_routes: dict[str, str] = {}
        self.server: Optional[ThreadingHTTPServer] = None
        self.thread: Optional[threading.Thread] = None
        self.instance_hooks: list[Any] = []  # callables (event, instance JSON): "created", "deleted"
        self.secrets: dict[tuple[str, str], list[str]] = {}  # (project, secret) -> versions' payloads
        self.secret_calls: list[str] = []

    # ------------------------------------------------------------ lifecycle

    def start(self) -> "ComputeFake":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def setup(self):
                super().setup()
                # Headers and body go out in two writes: without this, Nagle plus delayed ACKs
                # add ~40 ms to every request.
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def _serve(self, method: str):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                status, body = fake.handle(method, self.path, raw)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=UTF-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._serve("GET")

            def do_POST(self):
                self._serve("POST")

            def do_DELETE(self):
                self._serve("DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="compute-fake", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        with self.lock:
            ALL_CALLS.update(self.calls)
        if self.server:
            self.server.shutdown()
            self.server.server_close()

    def __enter__(self) -> "ComputeFake":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    # ------------------------------------------------------------ test controls

    def inject(self, method: str, *, status: int = 429, reason: Optional[str] = None, message: str = "", times: Optional[int] = 1) -> None:
        """Answer the next `times` calls of `method` with an HTTP error (None: every call)."""
        reason = reason or {429: "rateLimitExceeded", 403: "forbidden", 400: "badRequest", 404: "notFound", 500: "backendError", 503: "backendError"}.get(status, "error")
        message = message or {
            "rateLimitExceeded": "Rate Limit Exceeded",
            "quotaExceeded": "Quota exceeded for quota metric 'Queries' and limit 'Queries per minute'",
        }.get(reason, f"injected {status} {reason}")
        with self.lock:
            self.injections.append(Injection(method, status, reason, message, times))

    def fail_operation(self, method: str, *, code: str = "ZONE_RESOURCE_POOL_EXHAUSTED", message: str = "", http_status: int = 503, times: Optional[int] = None) -> None:
        """Let `method` start its operation, then finish it DONE with an error (nothing is created)."""
        message = message or "The zone does not have enough resources available to fulfill the request."
        with self.lock:
            self.op_failures.append(OpFailure(method, code, message, http_status, times))

    def seed_disk(self, project: str, zone: str, name: str, size_gb: int = 10) -> dict:
        with self.lock:
            disk = self._new("disks", project, f"zones/{zone}", name, {"sizeGb": str(size_gb), "status": "READY", "type": f"{BASE}projects/{project}/zones/{zone}/diskTypes/pd-balanced"})
            self.store.seeded.add((project, "disks", f"zones/{zone}", name))
            return disk

    def seed_instance(self, project: str, zone: str, name: str, disks: list[str]) -> dict:
        with self.lock:
            attached = [
                {"kind": "compute#attachedDisk", "source": f"{BASE}projects/{project}/zones/{zone}/disks/{d}", "deviceName": d, "boot": i == 0, "index": i, "autoDelete": False, "mode": "READ_WRITE", "type": "PERSISTENT"}
                for i, d in enumerate(disks)
            ]
            inst = self._new("instances", project, f"zones/{zone}", name, {
                "status": "RUNNING",
                "machineType": f"{BASE}projects/{project}/zones/{zone}/machineTypes/e2-small",
                "disks": attached,
                "networkInterfaces": [{"kind": "compute#networkInterface", "name": "nic0", "network": f"{BASE}projects/{project}/global/networks/default", "networkIP": "10.128.0.7",
                                       "accessConfigs": [{"kind": "compute#accessConfig", "type": "ONE_TO_ONE_NAT", "name": "External NAT", "natIP": "34.1.2.3"}]}],
            })
            self.store.seeded.add((project, "instances", f"zones/{zone}", name))
            return inst

    def seed_snapshot(self, project: str, name: str, source_disk: dict, created: datetime, labels: Optional[dict] = None, status: str = "READY") -> dict:
        with self.lock:
            snap = self._new("snapshots", project, "global", name, {
                "status": status,
                "sourceDisk": source_disk["selfLink"],
                "sourceDiskId": source_disk["id"],
                "diskSizeGb": source_disk.get("sizeGb", "10"),
                "storageBytes": str(int(source_disk.get("sizeGb", "10")) * 1024**3 // 7),
                "storageBytesStatus": "UP_TO_DATE",
                "labels": dict(labels or {}),
                "storageLocations": ["us"],
            }, created=created)
            self.store.seeded.add((project, "snapshots", "global", name))
            return snap

    def add_secret(self, project: str, name: str, value: str) -> str:
        """A Secret Manager secret with one version; returns its reference (versions/latest)."""
        with self.lock:
            self.secrets.setdefault((project, name), []).append(value)
        return f"projects/{project}/secrets/{name}/versions/latest"

    def add_firewall(self, project: str, body: dict) -> dict:
        """Someone adds a firewall rule behind drdrill's back (created at once, no operation)."""
        with self.lock:
            nkey = self._resolve(project, body["network"], "networks")
            extra = {k: v for k, v in body.items() if k != "name"}
            return self._new("firewalls", project, "global", body["name"], {**extra, "network": self.store.items[nkey]["selfLink"], "disabled": False})

    def leftovers(self) -> list[str]:
        """Every resource the tests did not seed (and routes GCP made for them)."""
        with self.lock:
            return sorted(f"{c}/{s}/{n}" for (p, c, s, n) in self.store.items if (p, c, s, n) not in self.store.seeded)

    def resources(self, collection: str) -> list[dict]:
        with self.lock:
            return [json.loads(json.dumps(v)) for (p, c, s, n), v in self.store.items.items() if c == collection]

    def methods_called(self) -> set[str]:
        with self.lock:
            return set(self.calls)

    # ------------------------------------------------------------ plumbing

    def _id(self) -> str:
        return str(next(self._ids))

    def _link(self, project: str, collection: str, scope: str, name: str) -> str:
        return f"{BASE}projects/{project}/{scope}/{collection}/{name}"

    def _new(self, collection: str, project: str, scope: str, name: str, extra: dict, created: Optional[datetime] = None) -> dict:
        res = {
            "kind": KINDS[collection],
            "id": self._id(),
            "creationTimestamp": rfc3339(created or _now()),
            "name": name,
            "selfLink": self._link(project, collection, scope, name),
        }
        kind, where = _scope_key(scope)
        if kind == "zone":
            res["zone"] = f"{BASE}projects/{project}/zones/{where}"
        elif kind == "region":
            res["region"] = f"{BASE}projects/{project}/regions/{where}"
        res.update(extra)
        self.store.items[(project, collection, scope, name)] = res
        return res

    def handle(self, method: str, raw_path: str, raw_body: bytes) -> tuple[int, dict]:
        url = urlsplit(raw_path)
        path = url.path
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        secret = re.match(r"^/v1/projects/([^/]+)/secrets/([^/]+)/versions/([^/:]+):access$", path)
        if secret and method == "GET":
            return self._access_secret(*secret.groups())
        if not path.startswith("/compute/v1/"):
            return 404, ApiError(404, "notFound", f"unknown path {path}").body()
        rel = path[len("/compute/v1/"):]
        for m, rx, mid in _COMPILED:
            match = rx.match(rel)
            if m == method and match:
                break
        else:
            return 404, ApiError(404, "notFound", f"The requested URL {method} {path} was not found on this server.").body()
        with self.lock:
            self.calls.append(mid)
            for inj in self.injections:
                if inj.method == mid and (inj.times is None or inj.times > 0):
                    if inj.times is not None:
                        inj.times -= 1
                    return inj.status, ApiError(inj.status, inj.reason, inj.message).body()
            try:
                body = json.loads(raw_body) if raw_body else {}
                return 200, self._dispatch(mid, match.groupdict(), query, body)
            except ApiError as exc:
                return exc.code, exc.body()

    def _dispatch(self, mid: str, p: dict, q: dict, body: dict) -> dict:
        _, collection, verb = mid.split(".")
        project = p["project"]
        if collection.endswith("Operations"):
            return self._operation(collection, p, wait=verb == "wait")
        scope = f"zones/{p['zone']}" if "zone" in p else f"regions/{p['region']}" if "region" in p else "global"
        if verb == "list":
            return self._list(project, collection, scope, q)
        if verb == "aggregatedList":
            return self._aggregated(project, collection, q)
        key = (project, collection, scope, p.get("name", ""))
        if verb == "get":
            if key not in self.store.items:
                raise self._not_found(project, collection, scope, p["name"])
            res = self.store.items[key]
            out = json.loads(json.dumps(res))
            if collection == "instances" and res.get("status") == "STAGING":
                res["status"] = "RUNNING"  # booted by the next look
            return out
        if verb == "insert":
            return getattr(self, f"_insert_{collection}")(mid, project, scope, body)
        if verb == "delete":
            return self._delete(mid, project, collection, scope, p["name"])
        raise ApiError(400, "badRequest", f"unsupported {mid}")  # pragma: no cover

    def _access_secret(self, project: str, name: str, version: str) -> tuple[int, dict]:
        with self.lock:
            self.secret_calls.append(f"projects/{project}/secrets/{name}/versions/{version}")
            versions = self.secrets.get((project, name))
            index = len(versions) if versions and version == "latest" else int(version) if version.isdigit() else 0
            if not versions or not 1 <= index <= len(versions):
                body = {"error": {"code": 404, "message": f"Secret [projects/{project}/secrets/{name}] not found or has no versions.", "status": "NOT_FOUND"}}
                return 404, body
            payload = base64.b64encode(versions[index - 1].encode()).decode()
            return 200, {"name": f"projects/{project}/secrets/{name}/versions/{index}", "payload": {"data": payload}}

    def _not_found(self, project: str, collection: str, scope: str, name: str) -> ApiError:
        return ApiError(404, "notFound", f"The resource 'projects/{project}/{scope}/{collection}/{name}' was not found")

    # ------------------------------------------------------------ lists

    def _matches(self, res: dict, flt: str) -> bool:
        if not flt:
            return True
        for term in re.findall(r'\(?\s*([\w.-]+)\s*(=|!=|:)\s*("[^"]*"|\*|[^\s)]+)\s*\)?', flt):
            fieldname, op, value = term
            value = value.strip('"')
            actual: Any = res
            for part in fieldname.split("."):
                actual = actual.get(part) if isinstance(actual, dict) else None
            if isinstance(actual, bool):
                actual = str(actual).lower()
            if op == ":" and value == "*":
                ok = actual is not None
            elif op == "=":
                ok = actual is not None and str(actual) == value
            else:
                ok = actual is None or str(actual) != value
            if not ok:
                return False
        return True

    def _page(self, items: list, q: dict) -> tuple[list, Optional[str]]:
        size = min(int(q.get("maxResults") or 500), self.page_size)
        start = int(q.get("pageToken") or 0)
        page = items[start : start + size]
        token = str(start + size) if start + size < len(items) else None
        return page, token

    def _list(self, project: str, collection: str, scope: str, q: dict) -> dict:
        items = [v for (p, c, s, n), v in sorted(self.store.items.items()) if p == project and c == collection and s == scope and self._matches(v, q.get("filter", ""))]
        page, token = self._page(items, q)
        out = {"kind": KINDS[collection] + "List", "id": f"projects/{project}/{scope}/{collection}", "items": page, "selfLink": f"{BASE}projects/{project}/{scope}/{collection}"}
        if not page:
            del out["items"]
        if token:
            out["nextPageToken"] = token
        return out

    def _aggregated(self, project: str, collection: str, q: dict) -> dict:
        entries = [(s, v) for (p, c, s, n), v in sorted(self.store.items.items()) if p == project and c == collection and self._matches(v, q.get("filter", ""))]
        page, token = self._page(entries, q)
        items: dict = {}
        for s, v in page:
            items.setdefault(s, {collection: []})[collection].append(v)
        items.setdefault("zones/us-east1-b", {"warning": {"code": "NO_RESULTS_ON_PAGE", "message": "There are no results for scope 'zones/us-east1-b' on this page.", "data": [{"key": "scope", "value": "zones/us-east1-b"}]}})
        out = {"kind": KINDS[collection] + "AggregatedList", "id": f"projects/{project}/aggregated/{collection}", "items": items, "selfLink": f"{BASE}projects/{project}/aggregated/{collection}"}
        if token:
            out["nextPageToken"] = token
        return out

    # ------------------------------------------------------------ operations

    def _start_op(self, mid: str, project: str, scope: str, target_link: str, on_done) -> dict:
        kind, where = _scope_key(scope)
        name = f"operation-{self._id()}-{self._id()[-8:]}"
        op = {
            "kind": "compute#operation",
            "id": self._id(),
            "name": name,
            "operationType": mid.split(".")[-1],
            "targetLink": target_link,
            "targetId": self._id(),
            "status": "PENDING",
            "user": "drdrill@example.iam.gserviceaccount.com",
            "progress": 0,
            "insertTime": rfc3339(_now()),
            "selfLink": f"{BASE}projects/{project}/{scope}/operations/{name}",
        }
        if kind == "zone":
            op["zone"] = f"{BASE}projects/{project}/zones/{where}"
        elif kind == "region":
            op["region"] = f"{BASE}projects/{project}/regions/{where}"
        error = None
        for f in self.op_failures:
            if f.method == mid and (f.times is None or f.times > 0):
                if f.times is not None:
                    f.times -= 1
                error = f
                break
        record = Operation(op, self.op_steps, on_done)
        if error is not None:
            record.on_done = None
            record.error = {
                "error": {"errors": [{"code": error.code, "message": error.message}]},
                "httpErrorStatusCode": error.http_status,
                "httpErrorMessage": "SERVICE UNAVAILABLE" if error.http_status == 503 else "BAD REQUEST",
            }
        self.ops[(project, scope, name)] = record
        return dict(op)

    def _operation(self, collection: str, p: dict, wait: bool) -> dict:
        scope = f"zones/{p['zone']}" if "zone" in p else f"regions/{p['region']}" if "region" in p else "global"
        key = (p["project"], scope, p["name"])
        record = self.ops.get(key)
        if record is None:
            raise ApiError(404, "notFound", f"The resource 'projects/{p['project']}/{scope}/operations/{p['name']}' was not found")
        if record.body["status"] != "DONE":
            record.steps_left = 0 if wait else record.steps_left - 1
            if record.steps_left <= 0:
                self._complete(record)
            else:
                record.body["status"] = "RUNNING"
                record.body.setdefault("startTime", rfc3339(_now()))
                record.body["progress"] = 50
        return dict(record.body)

    def _complete(self, record: Operation) -> None:
        record.body.setdefault("startTime", rfc3339(_now()))
        record.body["status"] = "DONE"
        record.body["progress"] = 100
        record.body["endTime"] = rfc3339(_now())
        if record.error:
            record.body.update(record.error)
        elif record.on_done:
            try:
                record.on_done()
            except ApiError as exc:
                record.body.update({"error": {"errors": [{"code": exc.reason.upper(), "message": exc.message}]}, "httpErrorStatusCode": exc.code, "httpErrorMessage": "BAD REQUEST"})

    # ------------------------------------------------------------ validation helpers

    def _check_name(self, name: Any) -> str:
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise ApiError(400, "invalid", f"Invalid value for field 'resource.name': '{name}'. Must be a match of regex '(?:[a-z](?:[-a-z0-9]{{0,61}}[a-z0-9])?)'")
        return name

    def _check_labels(self, labels: Any) -> dict:
        labels = labels or {}
        for k, v in labels.items():
            if not LABEL_KEY_RE.match(k) or not LABEL_VALUE_RE.match(str(v)):
                raise ApiError(400, "invalid", f"Invalid value for field 'resource.labels': '{k}={v}'. Label keys and values can only contain lowercase letters, numeric characters, underscores and dashes.")
        return dict(labels)

    def _resolve(self, project: str, link: str, collection: str) -> tuple:
        """A full or partial link -> store key (raises 404 when absent)."""
        rel = link[len(BASE):] if link.startswith(BASE) else link
        m = re.match(r"^(?:projects/(?P<project>[^/]+)/)?(?P<scope>global|zones/[^/]+|regions/[^/]+)/(?P<coll>[^/]+)/(?P<name>[^/]+)$", rel)
        if not m or m["coll"] != collection:
            raise ApiError(400, "invalid", f"Invalid value for field '{collection}': '{link}'")
        key = (m["project"] or project, collection, m["scope"], m["name"])
        if key not in self.store.items:
            raise self._not_found(key[0], collection, key[2], key[3])
        return key

    def _exists(self, project: str, collection: str, scope: str, name: str) -> None:
        if (project, collection, scope, name) in self.store.items:
            raise ApiError(409, "alreadyExists", f"The resource 'projects/{project}/{scope}/{collection}/{name}' already exists")

    # ------------------------------------------------------------ inserts

    def _insert_disks(self, mid: str, project: str, scope: str, body: dict) -> dict:
        name = self._check_name(body.get("name"))
        labels = self._check_labels(body.get("labels"))
        self._exists(project, "disks", scope, name)
        size = body.get("sizeGb")
        extra: dict = {"status": "CREATING", "labels": labels, "type": f"{BASE}projects/{project}/{scope}/diskTypes/pd-standard"}
        if body.get("description"):
            extra["description"] = body["description"]
        if body.get("sourceSnapshot"):
            skey = self._resolve(project, body["sourceSnapshot"], "snapshots")
            snap = self.store.items[skey]
            if snap["status"] != "READY":
                raise ApiError(400, "resourceNotReady", f"The resource '{snap['selfLink']}' is not ready")
            extra.update({"sourceSnapshot": snap["selfLink"], "sourceSnapshotId": snap["id"]})
            size = size or snap["diskSizeGb"]
            if int(size) < int(snap["diskSizeGb"]):
                raise ApiError(400, "invalid", f"Requested disk size cannot be smaller than the snapshot size ({snap['diskSizeGb']} GB)")
        extra["sizeGb"] = str(size or 10)
        disk = self._new("disks", project, scope, name, extra)
        key = (project, "disks", scope, name)

        def done():
            disk["status"] = "READY"

        def failed_cleanup():
            self.store.items.pop(key, None)

        op = self._start_op(mid, project, scope, disk["selfLink"], done)
        if self.ops[(project, scope, op["name"])].error:
            failed_cleanup()
        return op

    def _insert_instances(self, mid: str, project: str, scope: str, body: dict) -> dict:
        name = self._check_name(body.get("name"))
        labels = self._check_labels(body.get("labels"))
        self._exists(project, "instances", scope, name)
        zone = scope.split("/")[1]
        mt = body.get("machineType") or ""
        if not re.search(r"machineTypes/[a-z0-9-]+$", mt):
            raise ApiError(400, "invalid", f"Invalid value for field 'resource.machineType': '{mt}'")
        disks = []
        created: list[tuple] = []  # boot disks made from an image with the instance
        for i, d in enumerate(body.get("disks") or []):
            if d.get("initializeParams") and not d.get("source"):
                d = dict(d, source=self._disk_from_image(project, scope, name, i, d["initializeParams"], created)["selfLink"])
            if not d.get("source"):
                raise ApiError(400, "invalid", "Invalid value for field 'resource.disks[%d].source': ''" % i)
            dkey = self._resolve(project, d["source"], "disks")
            if dkey[2] != scope:
                raise ApiError(400, "invalid", f"Disk must be in the same zone as the instance: {d['source']}")
            if self.store.items[dkey]["status"] != "READY":
                raise ApiError(400, "resourceNotReady", f"The resource '{self.store.items[dkey]['selfLink']}' is not ready")
            for other in self._instances_using_disk(self.store.items[dkey]["selfLink"]):
                raise ApiError(400, "resourceInUseByAnotherResource", f"The disk resource '{self.store.items[dkey]['selfLink']}' is already being used by '{other}'")
            disks.append({"kind": "compute#attachedDisk", "type": "PERSISTENT", "mode": "READ_WRITE", "source": self.store.items[dkey]["selfLink"],
                          "deviceName": d.get("deviceName") or dkey[3], "index": i, "boot": bool(d.get("boot")), "autoDelete": bool(d.get("autoDelete"))})
        if not disks or not disks[0]["boot"]:
            raise ApiError(400, "invalid", "Invalid value for field 'resource.disks': the first disk must be a boot disk")
        nics = []
        for i, n in enumerate(body.get("networkInterfaces") or []):
            skey = self._resolve(project, n.get("subnetwork", ""), "subnetworks")
            subnet = self.store.items[skey]
            if skey[2] != "regions/" + zone.rsplit("-", 1)[0]:
                raise ApiError(400, "invalid", f"Subnetwork {subnet['selfLink']} is not in the instance's region")
            nic = {"kind": "compute#networkInterface", "name": f"nic{i}", "network": subnet["network"], "subnetwork": subnet["selfLink"], "networkIP": self._next_ip(subnet), "stackType": "IPV4_ONLY"}
            if n.get("accessConfigs"):
                nic["accessConfigs"] = [{"kind": "compute#accessConfig", "type": "ONE_TO_ONE_NAT", "name": "External NAT", "natIP": "35.9.9.9", "networkTier": "PREMIUM"}]
            nics.append(nic)
        if not nics:
            raise ApiError(400, "invalid", "Invalid value for field 'resource.networkInterfaces': at least one is required")
        metadata = body.get("metadata") or {}
        for item in metadata.get("items") or []:
            if not isinstance(item.get("key"), str) or not isinstance(item.get("value"), str) or len(item["value"]) > 256 * 1024:
                raise ApiError(400, "invalid", f"Invalid value for field 'resource.metadata.items': {item.get('key')!r}")
        for account in body.get("serviceAccounts") or []:
            if not re.fullmatch(r"[^@\s]+@[a-z0-9-]+\.iam\.gserviceaccount\.com|default", account.get("email", "")):
                raise ApiError(400, "invalid", f"Invalid value for field 'resource.serviceAccounts[0].email': {account.get('email')!r}")
        inst = self._new("instances", project, scope, name, {
            "status": "PROVISIONING", "labels": labels, "machineType": f"{BASE}projects/{project}/{scope}/machineTypes/{mt.rsplit('/', 1)[-1]}",
            "disks": disks, "networkInterfaces": nics, "canIpForward": False, "serviceAccounts": body.get("serviceAccounts") or [],
            "description": body.get("description", ""), "metadata": {"kind": "compute#metadata", "items": list(metadata.get("items") or [])},
        })
        key = (project, "instances", scope, name)

        def done():
            inst["status"] = "STAGING"  # then RUNNING on a later get: readiness is polled
            for hook in self.instance_hooks:
                hook("created", json.loads(json.dumps(inst)))

        op = self._start_op(mid, project, scope, inst["selfLink"], done)
        if self.ops[(project, scope, op["name"])].error:
            self.store.items.pop(key, None)
            for k in created:
                self.store.items.pop(k, None)
        return op

    def _disk_from_image(self, project: str, scope: str, instance: str, index: int, params: dict, created: list) -> dict:
        """The boot disk Compute Engine creates from `initializeParams` with the instance."""
        image = params.get("sourceImage") or ""
        if not re.fullmatch(r"(https://www\.googleapis\.com/compute/v1/)?projects/[a-z0-9-]+/global/images/(family/)?[a-z0-9-]+", image):
            raise ApiError(400, "invalid", f"Invalid value for field 'resource.disks[{index}].initializeParams.sourceImage': '{image}'")
        name = self._check_name(params.get("diskName") or instance)
        self._exists(project, "disks", scope, name)
        disk = self._new("disks", project, scope, name, {
            "status": "READY", "labels": self._check_labels(params.get("labels")), "sizeGb": str(params.get("diskSizeGb") or 10),
            "sourceImage": image if image.startswith(BASE) else BASE + image, "type": f"{BASE}projects/{project}/{scope}/diskTypes/pd-balanced",
        })
        created.append((project, "disks", scope, name))
        return disk

    def _next_ip(self, subnet: dict) -> str:
        import ipaddress

        net = ipaddress.ip_network(subnet["ipCidrRange"])
        n = self._ips.get(subnet["selfLink"], 2)
        self._ips[subnet["selfLink"]] = n + 1
        return str(net.network_address + n)

    def _insert_networks(self, mid: str, project: str, scope: str, body: dict) -> dict:
        name = self._check_name(body.get("name"))
        self._exists(project, "networks", scope, name)
        if body.get("autoCreateSubnetworks") is None:
            auto = True  # the API's default is auto mode
        else:
            auto = bool(body["autoCreateSubnetworks"])
        net = self._new("networks", project, scope, name, {
            "autoCreateSubnetworks": auto, "description": body.get("description", ""), "subnetworks": [],
            "routingConfig": {"routingMode": (body.get("routingConfig") or {}).get("routingMode", "REGIONAL")},
            "mtu": body.get("mtu", 1460), "networkFirewallPolicyEnforcementOrder": "AFTER_CLASSIC_FIREWALL",
        })

        def done():
            # GCP adds the default route to the internet gateway to every new network.
            rname = f"default-route-{self._id()[-16:]}"
            self._new("routes", project, "global", rname, {
                "description": "Default route to the Internet.", "network": net["selfLink"], "destRange": "0.0.0.0/0",
                "priority": 1000, "nextHopGateway": f"{BASE}projects/{project}/global/gateways/default-internet-gateway", "routeType": "STATIC",
            })

        return self._start_op(mid, project, scope, net["selfLink"], done)

    def _insert_subnetworks(self, mid: str, project: str, scope: str, body: dict) -> dict:
        import ipaddress

        name = self._check_name(body.get("name"))
        self._exists(project, "subnetworks", scope, name)
        nkey = self._resolve(project, body.get("network", ""), "networks")
        net = self.store.items[nkey]
        try:
            cidr = str(ipaddress.ip_network(body.get("ipCidrRange", "")))
        except ValueError:
            raise ApiError(400, "invalid", f"Invalid value for field 'resource.ipCidrRange': '{body.get('ipCidrRange')}'") from None
        sub = self._new("subnetworks", project, scope, name, {
            "network": net["selfLink"], "ipCidrRange": cidr, "gatewayAddress": str(ipaddress.ip_network(cidr).network_address + 1),
            "privateIpGoogleAccess": bool(body.get("privateIpGoogleAccess", False)), "description": body.get("description", ""),
            "purpose": "PRIVATE", "stackType": "IPV4_ONLY", "fingerprint": "abc=",
        })
        net["subnetworks"].append(sub["selfLink"])
        # The subnet route GCP maintains (not deletable, goes away with the subnetwork).
        route = self._new("routes", project, "global", f"default-route-{self._id()[-16:]}", {
            "description": f"Default local route to the subnetwork {cidr}.", "network": net["selfLink"], "destRange": cidr,
            "priority": 0, "nextHopNetwork": net["selfLink"], "routeType": "SUBNET",
        })
        self.subnet_routes[route["selfLink"]] = sub["selfLink"]
        return self._start_op(mid, project, scope, sub["selfLink"], None)

    def _insert_firewalls(self, mid: str, project: str, scope: str, body: dict) -> dict:
        name = self._check_name(body.get("name"))
        self._exists(project, "firewalls", scope, name)
        nkey = self._resolve(project, body.get("network", ""), "networks")
        direction = body.get("direction", "INGRESS")
        if not body.get("allowed") and not body.get("denied"):
            raise ApiError(400, "invalid", "Invalid value for field 'resource': one of 'allowed' or 'denied' is required")
        extra = {"network": self.store.items[nkey]["selfLink"], "direction": direction, "priority": body.get("priority", 1000),
                 "description": body.get("description", ""), "disabled": bool(body.get("disabled", False)),
                 "logConfig": {"enable": False}}
        for k in ("allowed", "denied", "sourceRanges", "destinationRanges", "targetTags", "sourceTags"):
            if body.get(k):
                extra[k] = body[k]
        if direction == "INGRESS" and not any(body.get(k) for k in ("sourceRanges", "sourceTags", "sourceServiceAccounts")):
            extra["sourceRanges"] = ["0.0.0.0/0"]
        if direction == "EGRESS" and not body.get("destinationRanges"):
            extra["destinationRanges"] = ["0.0.0.0/0"]
        fw = self._new("firewalls", project, scope, name, extra)
        return self._start_op(mid, project, scope, fw["selfLink"], None)

    # ------------------------------------------------------------ deletes

    def _instances_using_disk(self, disk_link: str) -> list[str]:
        return [v["selfLink"] for (p, c, s, n), v in self.store.items.items() if c == "instances" and any(d["source"] == disk_link for d in v.get("disks", []))]

    def _delete(self, mid: str, project: str, collection: str, scope: str, name: str) -> dict:
        key = (project, collection, scope, name)
        res = self.store.items.get(key)
        if res is None:
            raise self._not_found(project, collection, scope, name)
        link = res["selfLink"]
        if collection == "disks":
            users = self._instances_using_disk(link)
            if users:
                raise ApiError(400, "resourceInUseByAnotherResource", f"The disk resource '{link}' is already being used by '{users[0]}'")
        if collection == "subnetworks":
            users = [v["selfLink"] for (p, c, s, n), v in self.store.items.items() if c == "instances" and any(i.get("subnetwork") == link for i in v.get("networkInterfaces", []))]
            if users:
                raise ApiError(400, "resourceInUseByAnotherResource", f"The subnetwork resource '{link}' is already being used by '{users[0]}'")
        if collection == "networks":
            users = [v["selfLink"] for (p, c, s, n), v in self.store.items.items()
                     if (c in ("subnetworks", "firewalls") or (c == "routes" and "nextHopGateway" not in v and v.get("routeType") != "SUBNET")) and v.get("network") == link]
            if users:
                raise ApiError(400, "resourceInUseByAnotherResource", f"The network resource '{link}' is already being used by '{users[0]}'")
        if collection == "routes" and res.get("routeType") == "SUBNET":
            raise ApiError(400, "badRequest", f"The local route '{link}' cannot be deleted")
        if collection == "instances":
            res["status"] = "STOPPING"

        def done():
            self.store.items.pop(key, None)
            if collection == "instances":
                for d in res.get("disks", []):  # disks that go with the instance
                    if d.get("autoDelete"):
                        for k in [k for k, v in self.store.items.items() if k[1] == "disks" and v["selfLink"] == d["source"]]:
                            self.store.items.pop(k)
                for hook in self.instance_hooks:
                    hook("deleted", json.loads(json.dumps(res)))
            if collection == "subnetworks":
                for k, v in list(self.store.items.items()):
                    if k[1] == "routes" and self.subnet_routes.get(v["selfLink"]) == link:
                        self.store.items.pop(k)
                for k, v in self.store.items.items():
                    if k[1] == "networks" and link in v.get("subnetworks", []):
                        v["subnetworks"].remove(link)
            if collection == "networks":
                for k, v in list(self.store.items.items()):
                    if k[1] == "routes" and v.get("network") == link:
                        self.store.items.pop(k)

        return self._start_op(mid, project, scope, link, done)
