"""`drdrill run --simulate`: dry-run a drill plan against the `sim` provider.

`simulated(spec)` keeps the plan's shape (names, objectives, max_duration, recovery-point rules,
restore timeouts, hold, notifications) and swaps every target for a SimTarget of the same name, so
the whole lifecycle runs (recovery point, isolation and its proof, restore, readiness, checks,
teardown, evidence) without touching a cloud.

Validations: every check that names a target (sql, row_count, checksum, freshness, and a command
with `target:`) becomes a simulated check of the same name that proves the simulated target was
restored and is ready (`python -m app.simulate check`, reading the sim state). Checks that
need real hosts (tcp, http, a command without a target) are dropped, and the drill's description
says which. A recovery plan keeps its groups, their order and objectives, and its checks become
simulated ones too; its pre- and post-actions and its approval gates are left out. A simulated
verdict says the plan runs end to end; it proves nothing about real data.

The simulated recovery points end at the drill's "now": the declared time, or the moment given as
`DrillInput.as_of` (`drdrill run --simulate --as-of 2028-01-03T00:00:00Z`), so a plan can be
dry-run as of any date, including a future one.

    python -m app.simulate check     exit 0 when $DRDRILL_RESOURCE_ID exists and is ready
                                         in $DRDRILL_SIM_STATE
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import timedelta
from typing import Any

from drdrill.core.schema import RestoreOptions
from drdrill.providers.spec import DrillSpec
from drdrill.providers.sim.provider import SimState


def simulated(spec: DrillSpec) -> DrillSpec:
    """A copy of `spec` whose targets are simulated (see the module docstring)."""
    data: dict[str, Any] = spec.model_dump(mode="json", exclude={"source_path", "source_sha256", "source_text"})
    rpo = spec.objectives.rpo
    interval = min(timedelta(hours=1), max(rpo / 2, timedelta(seconds=1)))
    targets = []
    for t in spec.targets:
        targets.append(
            {
                "name": t.name,
                "provider": "sim",
                "recovery_point": t.recovery_point.model_dump(mode="json"),
                # Only what every target's restore has (timeout, jobs): a postgres application or a
                # restored instance's environment has nothing to start in a simulation.
                "restore": t.restore.model_dump(mode="json", include=set(RestoreOptions.model_fields)),
                "source": {
                    "resource": f"{t.provider}:{t.name}",
                    "points": 48,
                    "point_interval": interval.total_seconds(),
                    "restore_time": 2,
                },
            }
        )
    dropped: list[str] = []
    data["targets"] = targets
    data["validations"] = _simulated_checks([(spec.validation_name(i), v) for i, v in enumerate(spec.validations)], dropped)
    # A recovery plan keeps its order and its objectives; its checks become simulated ones like the
    # drill's. Its pre- and post-actions (commands on real hosts) are left out, and so are its
    # approval gates: a dry run never waits for a person.
    for group, source in zip(data.get("plan") or [], spec.plan or []):
        group["checks"] = _simulated_checks([(source.check_name(i), v) for i, v in enumerate(source.checks)], dropped)
        dropped += [a.label(when, i) for when in ("pre", "post") for i, a in enumerate(getattr(source, when))]
        group["pre"], group["post"] = [], []
    if spec.approve:
        dropped += [f"approval before {gate.before}" for gate in spec.approve]
        data["approve"] = []
    note = "[simulated dry run]"
    if dropped:
        note += f" checks needing real hosts were left out: {', '.join(dropped)}."
    data["description"] = (note + " " + (spec.description or "")).strip()
    # Isolation settings name cloud regions and projects: irrelevant to the simulation.
    data["isolation"] = {"network_cidr": spec.isolation.network_cidr}
    out = DrillSpec.model_validate(data)
    out.source_path = spec.source_path
    out.source_sha256 = spec.source_sha256
    out.source_text = spec.source_text
    return out


def _simulated_checks(checks: list[tuple[str, Any]], dropped: list[str]) -> list[dict]:
    """Each check that names a target as a simulated check of the same name; the others into `dropped`."""
    out = []
    for name, v in checks:
        target = getattr(v, "target", None)
        if target is None:
            dropped.append(name)
            continue
        out.append(
            {
                "type": "command",
                "name": name,
                "target": target,
                "required": v.required,
                "timeout": v.timeout.total_seconds(),
                "argv": [sys.executable, "-m", "app.simulate", "check"],
            }
        )
    return out


def check(env: dict) -> int:
    """The simulated check: the restored resource exists, is tagged and is ready."""
    rid, path = env.get("DRDRILL_RESOURCE_ID"), env.get("DRDRILL_SIM_STATE")
    if not rid or not path:
        print("no simulated resource to check (DRDRILL_RESOURCE_ID / DRDRILL_SIM_STATE unset)")
        return 2
    rec = SimState(path).resources().get(rid)
    if rec is None:
        print(f"{rid} does not exist")
        return 1
    if rec.get("never_ready") or time.time() < float(rec.get("ready_at") or 0):
        print(f"{rid} is not ready")
        return 1
    print(f"{rid} restored from {rec.get('point')} and ready")
    return 0


if __name__ == "__main__":  # pragma: no cover - exercised through the command validation
    if sys.argv[1:] == ["check"]:
        sys.exit(check(dict(os.environ)))
    print(json.dumps({"usage": "python -m app.simulate check"}))
    sys.exit(2)
