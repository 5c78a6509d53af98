"""The `validate` activity: runs one validation (drdrill/validation.py) against a restored target."""

from __future__ import annotations

from temporalio import activity

from drdrill.core.models import ValidationResult
from drdrill.validation import ValidateInput, run_validation


class ValidationActivities:
    """Stateless; grouped in a class, as the Temporal samples group activities."""

    def __init__(self, connect_timeout: float = 10.0):
        self.connect_timeout = connect_timeout

    @activity.defn(name="validate")
    def validate(self, inp: ValidateInput) -> ValidationResult:
        return run_validation(inp, self.connect_timeout)
