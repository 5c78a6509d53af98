"""GCP provider: Compute Engine disk snapshots restored to disks (`gcp.disk`) and to instances
(`gcp.instance`), inside one isolated VPC network per drill.

Clients: the real google-cloud-compute clients, REST transport, synchronous (activities run in the
worker's thread pool). Credentials come from Application Default Credentials
(`google.auth.default()`); `DRDRILL_GCP_API_ENDPOINT` points the clients at another endpoint (a
private endpoint, or the test fake: an http:// endpoint is accepted by the REST transport), and
`DRDRILL_GCP_ANONYMOUS=1` uses anonymous credentials (fakes only).

Settings (environment): GOOGLE_CLOUD_PROJECT (or DRDRILL_GCP_PROJECT) the default project,
DRDRILL_GCP_REGION the default region, DRDRILL_GCP_SWEEP_PROJECTS (comma separated) the projects
`drdrill sweep` searches (default: the default project).

The modules, by concern:
    labels.py      drdrill's tags as GCP labels (and description markers), GCP-valid names
    primitives.py  clients, calls with retries, `wait_operation`, and the primitives of cleaning
                   up; teardown and the orphan sweep are the provider template's (base.Provider)
    isolation.py   the isolated network, its subnetwork and firewall rules, and their proof
    probe.py       the probe instance inside the network that runs the checks (isolation.probe.gcp)
    secrets.py     the probe's Secret Manager references, resolved on the probe
    disk.py        recovery points (snapshots), `gcp.disk` restore and readiness
    instance.py    `gcp.instance` restore (its disks, then the instance) and readiness
    discover.py    selections (`select:` by label and zone) and the protected inventory, for coverage

Names are `ctx.resource_name(...)` (deterministic, at most 63 characters), made GCP-valid
(`[a-z]([-a-z0-9]*[a-z0-9])?`). Creating is idempotent: a 409 alreadyExists means "get it and go on"
(after checking it carries this drill's label, otherwise NAME_TAKEN). Teardown and sweep delete
nothing that lacks the drill's label (or description marker); a network holding a subnetwork or
firewall rule without it is kept and reported as refused.

REST methods used (under https://compute.googleapis.com/compute/v1/; with IAM permissions in deploy/gcp/methods.yaml)
-------------------------------------------------------------------------------------------------------------------
    GET    projects/{p}/global/snapshots                    snapshots.list
    GET    projects/{p}/zones/{z}/instances/{name}          instances.get
    POST   projects/{p}/zones/{z}/instances                 instances.insert
    DELETE projects/{p}/zones/{z}/instances/{name}          instances.delete
    GET    projects/{p}/aggregated/instances                instances.aggregatedList
    GET    projects/{p}/zones/{z}/disks/{name}              disks.get
    POST   projects/{p}/zones/{z}/disks                     disks.insert
    DELETE projects/{p}/zones/{z}/disks/{name}              disks.delete
    GET    projects/{p}/aggregated/disks                    disks.aggregatedList
    GET    projects/{p}/global/networks[/{name}]            networks.list / networks.get
    POST   projects/{p}/global/networks                     networks.insert
    DELETE projects/{p}/global/networks/{name}              networks.delete
    GET    projects/{p}/regions/{r}/subnetworks/{name}      subnetworks.get
    POST   projects/{p}/regions/{r}/subnetworks             subnetworks.insert
    DELETE projects/{p}/regions/{r}/subnetworks/{name}      subnetworks.delete
    GET    projects/{p}/global/firewalls[/{name}]           firewalls.list / firewalls.get
    POST   projects/{p}/global/firewalls                    firewalls.insert
    DELETE projects/{p}/global/firewalls/{name}             firewalls.delete
    GET    projects/{p}/global/routes                       routes.list
    DELETE projects/{p}/global/routes/{name}                routes.delete
    GET    projects/{p}/zones/{z}/operations/{op}           zoneOperations.get
    GET    projects/{p}/regions/{r}/operations/{op}         regionOperations.get
    GET    projects/{p}/global/operations/{op}              globalOperations.get

The package's modules: schema.py (its part of the drill format, read without any SDK: see
drdrill/providers/registry.py) and provider.py (GcpProvider, imported only by a worker that drills gcp).
"""
