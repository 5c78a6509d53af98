"""Temporal activities: thin adapters over providers, validations and evidence.

Importing this package connects drdrill's progress reports (drdrill.core.progress.heartbeat, called
by providers and validations on every poll) to Temporal: inside an activity each one heartbeats, and
a cancelled drill raises CancelledError there, which stops the wait.
"""

from __future__ import annotations

from typing import Any, Optional

from temporalio import activity
from temporalio.exceptions import CancelledError

from drdrill.core import progress


def _heartbeat(*details: Any, stop_if_cancelled: bool = True) -> None:
    if not activity.in_activity():
        return
    activity.heartbeat(*details)
    if stop_if_cancelled and activity.is_cancelled():
        raise CancelledError("the drill was cancelled")


def _interval() -> Optional[float]:
    """A third of the running activity's heartbeat timeout: a long sleep heartbeats that often."""
    if not activity.in_activity() or not activity.info().heartbeat_timeout:
        return None
    return max(0.01, activity.info().heartbeat_timeout.total_seconds() / 3)


progress.set_listener(_heartbeat, _interval)
