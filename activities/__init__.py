"""Temporal activities: thin adapters over providers, validations and evidence.

Importing this package connects drdrill's progress reports (drdrill.core.progress.heartbeat, called
by providers and validations on every poll) to Temporal: inside an activity each one heartbeats, and
a cancelled drill raises CancelledError there, which stops the wait.
"""

from __future__ import annotations

from typing import Any

from temporalio import activity
from temporalio.exceptions import CancelledError

from drdrill.core import progress


def _heartbeat(*details: Any, stop_if_cancelled: bool = True) -> None:
    if not activity.in_activity():
        return
    activity.heartbeat(*details)
    if stop_if_cancelled and activity.is_cancelled():
        raise CancelledError("the drill was cancelled")


progress.set_listener(_heartbeat)
