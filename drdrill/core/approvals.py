"""Signed answers at approval gates: what is signed, and the rules an answer must pass (pure).

`drdrill approve` / `drdrill reject` sign the JSON text of an ApprovalPayload with the approver's SSH
key (`ssh-keygen -Y sign -n drdrill-approval`). DrillWorkflow hands the text, the signature and the
gate to `check`, which runs inside the workflow: it reads no clock but the one it is given
(`workflow.now()`), no file and no network, so a replay decides the same way. An answer that fails a
rule is refused with a stable code, and the workflow records the refusal (who claimed, why).

A web console signs with its own key on behalf of a person it authenticated: its key is listed as
an approver with `role: console`, and its payload names the person in `on_behalf_of`, who must be
one of the gate's approvers (see docs/security.md, "Approvals and the sweep").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Iterable, Literal, Optional

from pydantic import BaseModel, Field, ValidationError

from drdrill.core import sshsig
from drdrill.core.planspec import Approver

NAMESPACE = "drdrill-approval"
# A signed answer is taken only this long after it was signed (and this far ahead of the workflow's
# clock, for clocks that disagree): an answer kept back and replayed later is refused.
MAX_AGE = timedelta(minutes=10)
CLOCK_SKEW = timedelta(minutes=2)
Decision = Literal["approve", "reject"]


class ApprovalPayload(BaseModel):
    """What an approver signs. `time` is when it was signed (UTC), `nonce` a random string used once."""

    drill_id: str
    group: str
    decision: Decision
    note: str = ""
    time: datetime
    nonce: str = Field(min_length=16, max_length=128)
    on_behalf_of: Optional[str] = None  # set by a console (role: console) only

    def text(self) -> str:
        """The canonical JSON text that is signed and sent (sorted keys, no spaces, UTC with Z)."""
        data = self.model_dump(mode="json", exclude_none=True)
        return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class Refused(Exception):
    """An answer the gate does not take: `code` (UPPER_SNAKE) and a message naming what to do."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class Accepted:
    payload: ApprovalPayload
    signer: Approver  # whose key signed
    by: str  # the approver: the signer, or the person a console signed for
    fingerprint: str


def check(
    payload_text: str,
    signature: str,
    *,
    drill_id: str,
    group: str,
    decision: Decision,
    approvers: Iterable[Approver],
    asked: datetime,
    until: datetime,
    now: datetime,
    used_nonces: Iterable[str],
) -> Accepted:
    """The accepted answer, or Refused: unsigned, a bad signature, a key not on the gate's list,
    another drill, group or decision, outside the gate's window or too old, a nonce used before."""
    if not signature or not payload_text:
        raise Refused("APPROVAL_UNSIGNED", "the answer is not signed: answer with `drdrill approve` / `drdrill reject`, which sign it with your SSH key")
    try:
        key = sshsig.verify(signature, payload_text.encode("utf-8"), NAMESPACE)
    except sshsig.SignatureError as exc:
        raise Refused("APPROVAL_BAD_SIGNATURE", f"the signature does not verify: {exc}") from None
    signer = next((a for a in approvers if a.key and sshsig.parse_public_key(a.key) == key), None)
    if signer is None:
        raise Refused("APPROVAL_UNKNOWN_KEY", f"key {key.fingerprint} is not one of the gate's approvers' keys")
    try:
        payload = ApprovalPayload.model_validate_json(payload_text)
    except ValidationError as exc:
        raise Refused("APPROVAL_BAD_PAYLOAD", f"the signed payload is not an approval: {exc.errors()[0]['msg']}") from None
    if payload.nonce in set(used_nonces):
        raise Refused("APPROVAL_REPLAYED", f"nonce {payload.nonce} was used before: a signed answer counts once")
    _matches(payload, drill_id, group, decision)
    _in_time(payload.time, asked, until, now)
    return Accepted(payload, signer, _person(payload, signer, approvers), key.fingerprint)


def _matches(payload: ApprovalPayload, drill_id: str, group: str, decision: Decision) -> None:
    if payload.drill_id != drill_id:
        raise Refused("APPROVAL_OTHER_DRILL", f"the answer was signed for drill {payload.drill_id}, not {drill_id}")
    if payload.group != group:
        raise Refused("APPROVAL_OTHER_GROUP", f"the answer was signed for group {payload.group}; the drill waits before group {group}")
    if payload.decision != decision:
        raise Refused("APPROVAL_OTHER_DECISION", f"the answer was signed to {payload.decision}, and sent to {decision}")


def _in_time(signed: datetime, asked: datetime, until: datetime, now: datetime) -> None:
    if signed.tzinfo is None:
        raise Refused("APPROVAL_BAD_PAYLOAD", "the signed time has no time zone: sign a UTC time")
    if signed < asked - CLOCK_SKEW or signed > until:
        raise Refused("APPROVAL_OUT_OF_WINDOW", f"the answer was signed at {signed:%Y-%m-%d %H:%M:%S}Z, outside the gate's window")
    if signed > now + CLOCK_SKEW:
        raise Refused("APPROVAL_OUT_OF_WINDOW", f"the answer was signed at {signed:%Y-%m-%d %H:%M:%S}Z, in the future: check the signer's clock")
    if now - signed > MAX_AGE:
        raise Refused("APPROVAL_STALE", f"the answer was signed at {signed:%Y-%m-%d %H:%M:%S}Z, more than {int(MAX_AGE.total_seconds() // 60)} minutes ago: sign a new one")


def _person(payload: ApprovalPayload, signer: Approver, approvers: Iterable[Approver]) -> str:
    """Who decided: the signer, or, for a console, the approver it signed for (who must be listed)."""
    if signer.role != "console":
        if payload.on_behalf_of:
            raise Refused("APPROVAL_NOT_A_CONSOLE", f"{signer.name} signs for themselves: only a key listed with role: console may sign on_behalf_of")
        return signer.name
    if not payload.on_behalf_of:
        raise Refused("APPROVAL_CONSOLE_FOR_NOBODY", f"console {signer.name} must name the approver it signs for (on_behalf_of)")
    people = [a.name for a in approvers if a.role != "console"]
    if payload.on_behalf_of not in people:
        raise Refused("APPROVAL_NOT_AN_APPROVER", f"console {signer.name} signed for {payload.on_behalf_of}, who is not an approver of this gate")
    return payload.on_behalf_of
