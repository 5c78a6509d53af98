"""drdrill's tags as GCP labels and description markers, GCP-valid names, and self links.

GCP label keys and values allow only lowercase letters, digits, '_' and '-' (63 characters), so
the drdrill tags are stored mapped:

    drdrill:drill-id    -> label drdrill-drill-id    value: the drill id, lowercased, other
                                                     characters -> '-', cut to 63 with a hash
    drdrill:target      -> label drdrill-target      value: the target name (same mapping)
    drdrill:expires-at  -> label drdrill-expires-at  value: Unix epoch seconds, e.g. "1767225600"
    (and drdrill-managed = "true")

Disks and instances carry them as labels. Networks, subnetworks and firewall rules have no labels
in the Compute API, so they carry the same mapping in their `description`:
`drdrill-labels:{"drdrill-drill-id":"…","drdrill-expires-at":"…",…}`.

`drdrill_tags` reads either back into drdrill's own form, so the provider template's checks
(teardown, orphans) read GCP resources like any other provider's.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timezone
from typing import Any, Optional

from drdrill.core.models import TAG_DRILL_ID, TAG_EXPIRES_AT, TAG_TARGET, DrillContext
from drdrill.core.times import format_time

LABEL_DRILL_ID = "drdrill-drill-id"
LABEL_TARGET = "drdrill-target"
LABEL_EXPIRES_AT = "drdrill-expires-at"
LABEL_MANAGED = "drdrill-managed"
DESCRIPTION_MARKER = "drdrill-labels:"


def label_value(value: str) -> str:
    """A drdrill tag value as a GCP label value: [a-z0-9_-]{0,63}, stable and unique."""
    v = re.sub(r"[^a-z0-9_-]", "-", value.lower())
    if len(v) <= 63:
        return v
    digest = hashlib.sha256(value.encode()).hexdigest()[:8]
    return v[:54] + "-" + digest


def gcp_labels(ctx: DrillContext, target: Optional[str] = None) -> dict[str, str]:
    """ctx.tags(target) mapped to valid GCP labels (see the module docstring)."""
    labels = {
        LABEL_DRILL_ID: label_value(ctx.drill_id),
        LABEL_EXPIRES_AT: str(int(ctx.expires_at.timestamp())),
        LABEL_MANAGED: "true",
    }
    if target:
        labels[LABEL_TARGET] = label_value(target)
    return labels


def gcp_name(ctx: DrillContext, target: Optional[str] = None, suffix: str = "") -> str:
    """ctx.resource_name made GCP-valid: [a-z]([-a-z0-9]{0,61}[a-z0-9])?."""
    name = ctx.resource_name(target, suffix=suffix, max_len=63)
    name = re.sub(r"[^a-z0-9-]", "-", name.lower()).strip("-")
    if not name or not name[0].isalpha():
        name = "d" + name
    return name[:63].rstrip("-")


def names_of(drill_id: str) -> DrillContext:
    """A context that knows only its drill id: enough for `gcp_name` (teardown has no full context)."""
    return DrillContext.model_construct(drill_id=drill_id)


def description_with_labels(text: str, labels: dict[str, str]) -> str:
    return f"{text} {DESCRIPTION_MARKER}{json.dumps(labels, sort_keys=True, separators=(',', ':'))}"


def labels_of(resource: Any) -> dict[str, str]:
    """Labels of a disk/instance, or the marker in a network/subnetwork/firewall description."""
    labels = dict(getattr(resource, "labels", None) or {})
    if labels:
        return labels
    desc = getattr(resource, "description", "") or ""
    idx = desc.find(DESCRIPTION_MARKER)
    if idx < 0:
        return {}
    try:
        found = json.loads(desc[idx + len(DESCRIPTION_MARKER) :].strip())
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def owned_by(resource: Any, drill_id: Optional[str]) -> bool:
    """True when the resource carries drdrill's drill-id label (for `drill_id`, when given)."""
    value = labels_of(resource).get(LABEL_DRILL_ID)
    if not value:
        return False
    return drill_id is None or value == label_value(drill_id)


def drdrill_tags(labels: dict[str, str], drill_id: Optional[str] = None) -> dict[str, str]:
    """GCP labels read back as drdrill's tags.

    A label holds `label_value(drill id)`; when that is the label of `drill_id` (the drill asking),
    the tag is `drill_id` itself, so a drill whose id GCP cannot hold verbatim still recognises its
    own resources. The expiry label (epoch seconds) becomes drdrill's time form; a malformed one is
    passed on as it is, which the template reads as "no expiry"."""
    tags: dict[str, str] = {}
    drill = labels.get(LABEL_DRILL_ID)
    if drill:
        tags[TAG_DRILL_ID] = drill_id if drill_id and drill == label_value(drill_id) else drill
    expires = labels.get(LABEL_EXPIRES_AT)
    if expires is not None:
        try:
            tags[TAG_EXPIRES_AT] = format_time(datetime.fromtimestamp(int(expires), tz=timezone.utc))
        except (ValueError, OverflowError, OSError):
            tags[TAG_EXPIRES_AT] = expires
    if labels.get(LABEL_TARGET):
        tags[TAG_TARGET] = labels[LABEL_TARGET]
    return tags


def link_parts(link: str) -> dict[str, str]:
    """'https://…/projects/p/zones/z/disks/d' -> {'projects': 'p', 'zones': 'z', 'disks': 'd'}."""
    parts = [p for p in link.split("/compute/v1/", 1)[-1].strip("/").split("/") if p != "global"]
    out: dict[str, str] = {}
    for i in range(0, len(parts) - 1, 2):
        out[parts[i]] = parts[i + 1]
    return out


def link_tail(link: str) -> str:
    """The location-independent part of a self link: projects/p/zones/z/disks/d."""
    idx = link.find("projects/")
    return link[idx:] if idx >= 0 else link


def region_of(zone: str) -> str:
    return zone.rsplit("-", 1)[0]
