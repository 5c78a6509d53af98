"""Notifications: POST a JSON message about a drill to a webhook (Slack-compatible, with a "text").

The workflow passes the *name* of the environment variable holding the URL (spec.notify.webhooks_env);
the URL is read here, on the worker, so it never enters the workflow history. The `notify` activity
(activities/notify.py) makes one call per webhook, retried by Temporal: a failing webhook neither
blocks nor repeats the others.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from datetime import timezone
from typing import Any

from drdrill.providers.activity_io import NotifyInput
from drdrill.core.redact import redact, redact_obj, register_secret

log = logging.getLogger("drdrill.notify")

ICON = {"APPROVAL": ":raising_hand:", "PASSED": ":white_check_mark:", "FAILED": ":x:", "COULD_NOT_VERIFY": ":warning:", "ERROR": ":rotating_light:", "TEARDOWN": ":broom:", "COVERAGE": ":calendar:"}


def message(inp: NotifyInput) -> dict[str, Any]:
    """The JSON body: machine-readable fields plus a Slack-compatible `text`."""
    if inp.event == "TEARDOWN":
        head = f"{ICON['TEARDOWN']} drdrill: teardown trouble in drill *{inp.drill_name}* ({inp.drill_id})"
    elif inp.event == "COVERAGE":  # the scheduled coverage check (workflows/coverage.py)
        head = f"{ICON['COVERAGE']} drdrill: *{inp.drill_name}*: protected resources not yet restored"
    elif inp.event == "APPROVAL" and inp.approval is not None:
        gate = inp.approval
        head = (
            f"{ICON['APPROVAL']} drdrill: drill *{inp.drill_name}* ({inp.drill_id}) waits for approval before group *{gate.group}*\n"
            f"who can approve: {', '.join(gate.approvers)}\n"
            f"approve: `{gate.approve}`\n"
            f"reject: `{gate.reject}`\n"
            f"unanswered at {gate.until.astimezone(timezone.utc):%Y-%m-%d %H:%M:%SZ}, the plan stops and the drill tears down"
        )
    else:
        head = f"{ICON.get(inp.verdict, '')} drdrill: drill *{inp.drill_name}* {inp.verdict} ({inp.drill_id})".strip()
    lines = [head]
    if inp.summary:
        lines.append(inp.summary)
    for f in inp.findings[:10]:
        lines.append(f"• {f.get('code')}: {f.get('message')}")
    if inp.evidence_path:
        lines.append(f"evidence: {inp.evidence_path}")
    body = {
        "text": redact("\n".join(lines)),
        "event": inp.event,
        "drill": {"id": inp.drill_id, "name": inp.drill_name, "run_id": inp.run_id, "started_by": inp.started_by},
        "verdict": inp.verdict,
        "objectives": inp.objectives,
        "findings": inp.findings,
        "evidence_path": inp.evidence_path,
        "source": "drdrill",
    }
    if inp.approval is not None:
        body["approval"] = inp.approval.model_dump(mode="json")
    return redact_obj(body)


class NotifyError(Exception):
    """A webhook could not be told. `code` is stable; `retryable` says whether trying again can help."""

    def __init__(self, message: str, code: str, retryable: bool):
        super().__init__(message)
        self.code = code
        self.retryable = retryable


ALERT_ATTEMPTS = (3, 10, 30, 100)


def alert_failing_teardown(webhooks_env: list[str], drill_id: str, drill_name: str, env_id: str, attempt: int, error: str) -> None:
    """Called by the teardown activity while it keeps failing (attempts 3, 10, 30, 100, then every
    100th): someone must know now, not when the teardown finally succeeds. Never raises."""
    if not webhooks_env or not (attempt in ALERT_ATTEMPTS or (attempt > 100 and attempt % 100 == 0)):
        return
    summary = f"teardown of {env_id} failed {attempt} times and is still being retried: {error}"
    for name in webhooks_env:
        try:
            send(NotifyInput(webhook_env=name, event="TEARDOWN", drill_id=drill_id, drill_name=drill_name, verdict="TEARDOWN_FAILING", summary=summary))
        except Exception as exc:  # noqa: BLE001 - an alert must not break the teardown's own retries
            log.warning("teardown alert to %s failed: %s", name, redact(str(exc)))


def send(inp: NotifyInput, timeout: float = 10.0) -> str:
    """POST the message to the URL held by `inp.webhook_env`; NotifyError on failure."""
    url = os.environ.get(inp.webhook_env, "").strip()
    if not url:
        raise NotifyError(f"webhook variable {inp.webhook_env} is not set on this worker", "WEBHOOK_NOT_CONFIGURED", retryable=False)
    register_secret(url)
    data = json.dumps(message(inp)).encode()
    req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json", "User-Agent": "drdrill"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status = resp.status
    except urllib.error.HTTPError as exc:
        status = exc.code
        if 400 <= status < 500 and status not in (408, 429):
            raise NotifyError(f"webhook {inp.webhook_env} refused the message: HTTP {status}", "WEBHOOK_REFUSED", retryable=False) from None
        raise NotifyError(f"webhook {inp.webhook_env}: HTTP {status}", "WEBHOOK_UNAVAILABLE", retryable=True) from None
    except (urllib.error.URLError, OSError) as exc:
        # Never echo the URL: it is a secret (it authorises posting to the channel).
        raise NotifyError(f"webhook {inp.webhook_env} unreachable: {redact(str(getattr(exc, 'reason', exc)))}", "WEBHOOK_UNAVAILABLE", retryable=True) from None
    log.info("notified %s of drill %s (%s): HTTP %s", inp.webhook_env, inp.drill_id, inp.event, status)
    return f"HTTP {status}"
