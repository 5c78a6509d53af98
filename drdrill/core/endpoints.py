"""Endpoint fields in a drill: the tcp and http checks and restore.environment references that name
a target, against the fields its kind publishes (each target model's `endpoint_fields`)."""

from __future__ import annotations

from typing import Any

from drdrill.core.planspec import environment_refs_of
from drdrill.core.schema import template_fields
from drdrill.core.validations import HttpValidation, TcpValidation


def endpoint_problems(spec: Any) -> list[tuple[str, str]]:
    """tcp and http checks that name a target, against the fields the target's kind publishes:
    a url template naming an unknown field, or a target without the `host` (or `port`) the check
    needs; and restore.environment references to an endpoint field the target does not publish.
    (field path, message naming the field and the known ones)."""
    problems = []
    checks = [(f"validations[{i}]", v) for i, v in enumerate(spec.validations)]
    checks += [(f"plan[{gi}].checks[{ci}]", v) for gi, g in enumerate(spec.plan or []) for ci, v in enumerate(g.checks)]
    for path, v in checks:
        if not isinstance(v, (TcpValidation, HttpValidation)) or v.target is None:
            continue
        target = spec.target(v.target)
        known = target.endpoint_fields(spec.isolation)
        who, fields = f"target {target.name} ({target.provider})", ", ".join(known) or "none"
        if isinstance(v, HttpValidation) and v.url is not None:
            needed, where = template_fields(v.url), "url"
        else:
            needed, where = ["host"], "target"
            if isinstance(v, TcpValidation) and v.port is None:
                needed.append("port")
        for name in needed:
            if name in known:
                continue
            if where == "url":
                problems.append((f"{path}.url", f"{{{name}}} is not an endpoint field of {who}; known fields: {fields}"))
            else:
                fix = "set 'port:'" if name == "port" else target.NO_HOST_FIX
                problems.append((f"{path}.target", f"{v.type} needs the target's {name}, but {who} publishes only: {fields}; {fix}"))
    return problems + _environment_problems(spec)


def _environment_problems(spec: Any) -> list[tuple[str, str]]:
    """restore.environment references to an endpoint field the referenced target does not publish."""
    problems = []
    for i, t in enumerate(spec.targets):
        for key, ref in environment_refs_of(t):
            if ref.kind != "targets" or ref.name not in {x.name for x in spec.targets}:
                continue
            source = spec.target(ref.name)
            known = source.endpoint_fields(spec.isolation)
            if ref.field not in known:
                problems.append(
                    (
                        f"targets[{i}].restore.environment.{key}",
                        f"{ref.text}: {ref.field} is not an endpoint field of target {source.name} ({source.provider}); "
                        f"known fields: {', '.join(known) or 'none'}",
                    )
                )
    return problems
