"""The `validate` activity: runs one validation (drdrill/validation/run.py) against a restored target.

It runs on the worker, or in a drill's probe inside the isolated network (`drdrill probe`). There
it also resolves the restored database's password from the secret reference a cloud probe was
given (`with_password`): the value never leaves the probe.

A `volume` check compares a target's row counts with the last PASSED run of the same drill. Only
the evidence knows earlier runs, and drdrill/validation/ reads no evidence (independent layers),
so this adapter has drdrill/evidence/baselines.py look the counts up and passes them in with the input.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Optional

from psycopg.conninfo import make_conninfo
from temporalio import activity

from drdrill.core.models import ValidationResult
from drdrill.core.redact import register_secret
from drdrill.providers import family_of
from drdrill.providers.base import ProviderError
from drdrill.providers.probes import PASSWORD_REFERENCE, resolve_secret
from drdrill.providers.activity_io import ValidateInput
from drdrill.evidence.baselines import with_volume_baseline
from drdrill.validation.run import run_validation


class ValidationActivities:
    """Stateless; grouped in a class, as the Temporal samples group activities."""

    def __init__(self, connect_timeout: float = 10.0, state_dir: Optional[str] = None):
        self.connect_timeout = connect_timeout
        self.state_dir = state_dir  # whose evidence store holds the earlier runs (None: the default)

    @activity.defn(name="validate")
    def validate(self, inp: ValidateInput) -> ValidationResult:
        if inp.validation.type == "volume" and inp.drill_name and inp.baseline is None and inp.baseline_problem is None:
            inp = with_volume_baseline(inp, self.state_dir)
        resolved = with_password(inp)
        if isinstance(resolved, ValidationResult):
            return resolved
        return run_validation(resolved, self.connect_timeout)


# Checks that log in to the restored database (and so need its password).
DATABASE_CHECKS = frozenset({"sql", "row_count", "checksum", "freshness", "volume"})


def with_password(inp: ValidateInput) -> ValidateInput | ValidationResult:
    """`inp` with the restored database's password in its DSN, when the restored resource carries a
    reference to it (a cloud probe's `secrets`): resolved here, where the check runs, inside the
    drill's network. Only this activity's own copy holds the value; the reference alone is in the
    history and the evidence. A reference that cannot be read is COULD_NOT_VERIFY, naming it."""
    resource = inp.resource
    reference = resource.details.get(PASSWORD_REFERENCE) if resource is not None else None
    if not reference or inp.validation.type not in DATABASE_CHECKS or not resource.endpoint.get("dsn"):
        return inp
    try:
        password = resolve_secret(family_of(resource.provider), reference)
    except ProviderError as exc:
        now = datetime.now(timezone.utc)
        return ValidationResult(
            name=inp.name, type=inp.validation.type, target=resource.target, required=inp.validation.required,
            outcome="COULD_NOT_VERIFY", detail=f"the password of target {resource.target} could not be read: {exc.message}",
            started=now, finished=now, attempts=1,
        )
    register_secret(password)  # masked wherever it could appear: logs, a check's detail
    dsn = make_conninfo(resource.endpoint["dsn"], password=password)
    return inp.model_copy(update={"resource": resource.model_copy(update={"endpoint": {**resource.endpoint, "dsn": dsn}})})
