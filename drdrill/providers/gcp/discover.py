"""Selections and coverage on GCP: a project's persistent disks and instances (by label and zone),
each with the times of its READY snapshots (an instance's: its boot disk's).

Read-only: disks.aggregatedList, instances.aggregatedList and snapshots.list, all in
deploy/gcp/role.yaml. Whatever carries drdrill's label was restored by a drill, not backed up, and
is never listed.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from drdrill.core.selection import ProtectedResource, tags_match
from drdrill.core.schema import Selection
from drdrill.core.times import parse_time
from drdrill.providers.base import ProviderError
from drdrill.providers.gcp.disk import _snapshots
from drdrill.providers.gcp.labels import link_tail, owned_by, region_of
from drdrill.providers.gcp.primitives import GcpPrimitives

KINDS = {"gcp.disk": "disks", "gcp.instance": "instances"}


def label_filter(selection: Selection) -> str:
    """The list filter for the selection's labels (checked again client-side)."""
    return " AND ".join(f"(labels.{k}:*)" if v == "*" else f'(labels.{k} = "{v}")' for k, v in sorted(selection.tags.items()))


def discover(gcp: GcpPrimitives, kind: str, selection: Selection) -> list[ProtectedResource]:
    if kind not in KINDS:
        raise ProviderError("SELECTION_NOT_SUPPORTED", f"the gcp provider does not select {kind} resources")
    zones = set(selection.zones)

    def keep(zone: str, labels: dict[str, str]) -> bool:
        return (not zones or zone in zones) and tags_match(labels, selection)

    return _resources(gcp, kind, _project(gcp, selection.project), label_filter(selection), keep)


def protected_inventory(gcp: GcpPrimitives, protected_tag: Optional[str]) -> list[ProtectedResource]:
    found = []
    for project in gcp.sweep_projects or [_project(gcp, None)]:
        for kind in KINDS:
            for r in _resources(gcp, kind, project, "", lambda zone, labels: True):
                found.append(r.note_protection(protected_tag, tag_word="label", points_word="snapshot(s)"))
    return found


def _project(gcp: GcpPrimitives, project: Optional[str]) -> str:
    if project or gcp.project:
        return project or gcp.project  # type: ignore[return-value]
    raise ProviderError("GCP_NO_PROJECT", "no GCP project to search: set select.project, DRDRILL_GCP_PROJECT or GOOGLE_CLOUD_PROJECT")


def _resources(gcp: GcpPrimitives, kind: str, project: str, flt: str, keep: Callable[[str, dict], bool]) -> list[ProtectedResource]:
    service = KINDS[kind]
    request: dict[str, Any] = {"project": project, "max_results": 500}
    if flt:
        request["filter"] = flt
    pairs = gcp.filtered_list(service, "aggregated_list", request, what=f"{service} in {project}")
    listed = [
        (scope.split("/", 1)[-1], r)
        for scope, scoped in pairs
        for r in getattr(scoped, service)
        if not owned_by(r, None) and keep(scope.split("/", 1)[-1], dict(r.labels))
    ]
    times: dict[str, list] = {}
    if listed:
        for s in _snapshots(gcp, project, {}, what=f"snapshots in {project}"):
            times.setdefault(link_tail(s.source_disk), []).append(parse_time(s.creation_timestamp))
    out = []
    for zone, r in listed:
        disk = link_tail(r.self_link) if kind == "gcp.disk" else _boot_disk(r)
        found = times.get(disk or "", [])
        out.append(
            ProtectedResource(
                kind=kind,
                id=f"{project}/{zone}/{r.name}",
                name=r.name,
                scope=region_of(zone),
                source={"project": project, "zone": zone, "disk" if kind == "gcp.disk" else "instance": r.name},
                tags=dict(r.labels),
                newest_point=max(found) if found else None,
                oldest_point=min(found) if found else None,
                points=len(found),
            )
        )
    return out


def _boot_disk(instance: Any) -> Optional[str]:
    for d in instance.disks:
        if d.boot and d.source:
            return link_tail(d.source)
    return None
