"""The gcp part of the drill format: gcp.disk and gcp.instance targets and GcpProbe. Pure models,
no SDK (drdrill/providers/spec.py reads this module to assemble DrillSpec; registry.py lists it)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Optional

from pydantic import Field

from drdrill.core.schema import CloudProbe, Strict, TargetBase

FAMILY = "gcp"
PROVIDER = "drdrill.providers.gcp.provider:GcpProvider"

_GCP_SECRET_RE = r"^projects/[a-z0-9-]{1,63}/secrets/[A-Za-z0-9_-]{1,255}/versions/(latest|\d+)$"


class GcpTarget(TargetBase):
    """What every gcp target shares: selected by label and zone, counted against its project."""

    SELECT_BY: ClassVar[tuple[str, ...]] = ("tags", "exclude_tags", "project", "zones")
    SELECT_NEEDS: ClassVar[tuple[tuple[str, ...], str]] = (("tags", "zones"), "select needs something to select by: tags or zones")

    @classmethod
    def isolation_scope(cls, isolation: Any) -> Optional[tuple[str, str]]:
        value = getattr(isolation, "gcp_region", None)
        return (value, "isolation.gcp_region") if value else None

    def permit_key(self, isolation: Any) -> str:
        project = getattr(isolation, "gcp_project", None) or getattr(getattr(self, "source", None), "project", None) or "default"
        return f"gcp:{project}"


class GcpDiskSource(Strict):
    project: str
    zone: str
    disk: str = Field(description="source disk name")
    snapshot_labels: dict[str, str] = Field(default_factory=dict)


class GcpInstanceSource(Strict):
    project: str
    zone: str
    instance: str = Field(description="source instance name")
    machine_type: str = "e2-small"
    snapshot_labels: dict[str, str] = Field(default_factory=dict)


class GcpDiskTarget(GcpTarget):
    provider: Literal["gcp.disk"]
    source: GcpDiskSource

    ID_FIELDS: ClassVar[tuple[str, ...]] = ("project", "zone", "disk")
    ENDPOINT_FIELDS: ClassVar[tuple[str, ...]] = ("project", "zone", "disk", "self_link", "status", "size_gb", "source_snapshot")


class GcpInstanceTarget(GcpTarget):
    provider: Literal["gcp.instance"]
    source: GcpInstanceSource

    ID_FIELDS: ClassVar[tuple[str, ...]] = ("project", "zone", "instance")
    ENDPOINT_FIELDS: ClassVar[tuple[str, ...]] = (
        "host", "internal_ip", "external_ip", "project", "zone", "instance", "self_link", "status", "network",
        "subnetwork", "disks",
    )



class GcpProbe(CloudProbe):
    """`isolation.probe.gcp`: an instance in the drill's subnetwork, from `image`, started by its startup script."""

    image: str = Field(
        pattern=r"^(https://www\.googleapis\.com/compute/v1/)?projects/[a-z0-9-]+/global/images/(family/)?[a-z0-9-]+$",
        description="an image with drdrill installed: projects/P/global/images/NAME or .../images/family/F (deploy/gcp/probe.md)",
    )
    machine_type: str = Field("e2-small", pattern=r"^[a-z0-9-]+$")
    zone: Optional[str] = Field(None, pattern=r"^[a-z]+-[a-z]+\d+-[a-z]$", description="default: a zone of the drill's region")
    service_account: Optional[str] = Field(
        None, pattern=r"^[^@\s]+@[a-z0-9-]+\.iam\.gserviceaccount\.com$",
        description="the service account that may read the probe's secrets, and nothing else",
    )
    # secrets: per target, a Secret Manager secret version holding its database password
    SECRET_REFERENCE: ClassVar[tuple[str, str]] = (_GCP_SECRET_RE, "projects/shop-prod/secrets/shop-db-password/versions/latest")



TARGETS = (GcpDiskTarget, GcpInstanceTarget)
PROBE = GcpProbe
