"""What the clouds' probes share: the probe's task queue, the script that starts it, its network's
one way out, and the secret references its checks resolve.

A cloud probe is an instance the provider boots inside the drill's isolated network (AWS user data,
Azure custom data, GCP startup script), from an image with drdrill installed. It runs
`drdrill probe --task-queue <queue>`: a worker with only the validation activity, which reaches the
Temporal frontend through the network's single egress rule and nothing else. Each cloud's package
(aws/probe.py, azure/probe.py, gcp/probe.py) launches it and proves the rule; this module holds
what they have in common, so that the three scripts and the three proofs say the same thing.
"""

from __future__ import annotations

import importlib
import ipaddress
import shlex
from dataclasses import dataclass
from typing import Any, Optional

from drdrill.core.models import DrillContext, Environment, RestoredResource

# Tag (GCP: label drdrill-role) on the probe's instance: which of the drill's instances is its probe.
TAG_ROLE = "drdrill:role"
ROLE_PROBE = "probe"
# Where a restored target's database password is found: RestoredResource.details[PASSWORD_REFERENCE]
# holds the reference; the validation activity resolves it where the check runs (the probe).
PASSWORD_REFERENCE = "password_reference"


@dataclass(frozen=True)
class TemporalEgress:
    """The drill network's one way out: TCP to the Temporal frontend's address and port."""

    address: str
    port: int

    @classmethod
    def of(cls, probe: Any) -> "TemporalEgress":
        host, _, port = probe.temporal_address.rpartition(":")
        return cls(str(ipaddress.IPv4Address(host)), int(port))

    @property
    def cidr(self) -> str:
        return f"{self.address}/32"

    def __str__(self) -> str:
        return f"tcp {self.address}:{self.port}"


def probe_queue(ctx: DrillContext, family: str) -> str:
    """The task queue of the drill's probe in `family`'s network (one per family: a probe runs only
    the checks of its own network)."""
    return ctx.resource_name(suffix=f"{family}-probe", max_len=200)


def probe_details(ctx: DrillContext, family: str, probe: Any, **extra: Any) -> dict[str, Any]:
    """What the environment records about its probe: the workflow routes checks by `probe_queue`,
    and `reachable_from_worker` False makes a network check without a probe COULD_NOT_VERIFY at once."""
    egress = TemporalEgress.of(probe)
    return {
        "probe_queue": probe_queue(ctx, family),
        "temporal_address": probe.temporal_address,
        "temporal_egress": {"address": egress.address, "port": egress.port},
        "probe_secrets": dict(probe.secrets),
        **extra,
    }


def egress_of(env: Environment) -> Optional[TemporalEgress]:
    """The environment's allowed way out to Temporal, when it runs a probe."""
    rule = env.details.get("temporal_egress")
    return TemporalEgress(rule["address"], int(rule["port"])) if rule else None


def bootstrap_script(
    *, ctx: DrillContext, family: str, how: str, queue: str, probe: Any, namespace: str, env: Optional[dict[str, str]] = None
) -> str:
    """The shell script the instance runs at boot (`how`: user data, custom data, startup script).

    The image has drdrill on its PATH (deploy/<cloud>/probe.md). Under systemd the probe runs as a
    transient service, restarted if it fails, so cloud-init (or the guest agent) finishes booting;
    elsewhere, or with DRDRILL_PROBE_FOREGROUND set (a container, a supervisor), in the foreground.
    The script holds addresses and references only, never a secret."""
    variables = {"TEMPORAL_ADDRESS": probe.temporal_address, "TEMPORAL_NAMESPACE": namespace, **(env or {})}
    exports = "\n".join(f"export {k}={shlex.quote(v)}" for k, v in variables.items())
    setenv = " ".join(f'--setenv={k}="${k}"' for k in variables)
    return f"""#!/bin/sh
# The drdrill probe of drill {ctx.drill_id} ({family}): runs the drill's checks inside its isolated
# network, whose one way out is {TemporalEgress.of(probe)} (the Temporal frontend). Written by drdrill as
# this instance's {how}; the image has drdrill installed (deploy/{family}/probe.md).
set -eu
{exports}
set -- drdrill probe --task-queue {shlex.quote(queue)}
if [ -z "${{DRDRILL_PROBE_FOREGROUND:-}}" ] && [ -d /run/systemd/system ]; then
  exec systemd-run --unit=drdrill-probe --property=Restart=on-failure {setenv} "$@"
fi
exec "$@"
"""


def with_password_reference(resource: RestoredResource, env: Environment) -> RestoredResource:
    """The restored resource with the reference to its database password, when the drill's probe
    has one for its target (the probe resolves it; only the reference travels)."""
    reference = (env.details.get("probe_secrets") or {}).get(resource.target)
    if reference:
        resource.details[PASSWORD_REFERENCE] = reference
    return resource


def resolve_secret(family: str, reference: str) -> str:
    """The value `reference` names, read by `family`'s resolver (drdrill.providers.<family>.secrets),
    with the credentials of the machine asking: the probe's instance profile, managed identity or
    service account. Raises ProviderError(SECRET_UNAVAILABLE) naming the reference."""
    from drdrill.providers.base import ProviderError

    try:
        module = importlib.import_module(f"drdrill.providers.{family}.secrets")
    except ImportError as exc:
        raise ProviderError("SECRET_UNAVAILABLE", f"{reference}: the {family} secret resolver cannot be loaded here: {exc}") from exc
    return module.resolve(reference)
