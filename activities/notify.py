"""The `notify` activity: one webhook message per call (drdrill/notify.py does the sending)."""

from __future__ import annotations

from temporalio import activity
from temporalio.exceptions import ApplicationError

from drdrill.providers.activity_io import NotifyInput
from drdrill.notify import NotifyError, send


class NotifyActivities:
    def __init__(self, timeout: float = 10.0):
        self.timeout = timeout

    @activity.defn(name="notify")
    def notify(self, inp: NotifyInput) -> str:
        try:
            return send(inp, self.timeout)
        except NotifyError as exc:
            raise ApplicationError(str(exc), type=exc.code, non_retryable=not exc.retryable) from None
