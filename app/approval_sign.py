"""Signing an answer at an approval gate with the approver's SSH key (`drdrill approve/reject`).

The payload (drdrill/core/approvals.py) is signed by `ssh-keygen -Y sign -n drdrill-approval`: with
a private key file (`--key`, default ~/.ssh/id_ed25519), or, given a `.pub` file and SSH_AUTH_SOCK,
by the ssh-agent holding its private half. The key never leaves ssh-keygen or the agent.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from drdrill.core.approvals import NAMESPACE, ApprovalPayload, Decision
from drdrill.core.models import ApprovalRequest

DEFAULT_KEY = "~/.ssh/id_ed25519"


class SigningError(Exception):
    """The answer could not be signed: the message says why and what to do."""


def sign(text: str, key: str) -> str:
    """The armored SSH signature of `text` by `key` (a private key file, or a .pub file held by the agent)."""
    path = Path(os.path.expanduser(key))
    if not path.is_file():
        raise SigningError(f"no SSH key at {path}: pass --key PATH (your private key, or its .pub with ssh-agent), or make one with ssh-keygen -t ed25519")
    if path.suffix == ".pub" and not os.environ.get("SSH_AUTH_SOCK"):
        raise SigningError(f"{path} is a public key: signing with it needs ssh-agent (SSH_AUTH_SOCK) holding its private half")
    tool = shutil.which("ssh-keygen")
    if tool is None:
        raise SigningError("ssh-keygen is not installed (package openssh-client): it signs the answer")
    try:
        proc = subprocess.run(
            [tool, "-q", "-Y", "sign", "-n", NAMESPACE, "-f", str(path)], input=text.encode("utf-8"), capture_output=True, timeout=120
        )
    except subprocess.TimeoutExpired:
        raise SigningError("ssh-keygen did not sign within 120s (waiting for a passphrase or a hardware key?)") from None
    signature = proc.stdout.decode("ascii", "replace").strip()
    if proc.returncode != 0 or not signature.startswith("-----BEGIN SSH SIGNATURE-----"):
        why = proc.stderr.decode("utf-8", "replace").strip() or f"exit status {proc.returncode}"
        raise SigningError(f"ssh-keygen could not sign with {path}: {why}")
    return signature


def signed_request(
    drill_id: str, group: str, decision: Decision, note: str, key: str, claimed_by: str, *, on_behalf_of: Optional[str] = None
) -> ApprovalRequest:
    """An answer for the approve/reject update: the payload's text, its signature, and who the sender says they are."""
    payload = ApprovalPayload(
        drill_id=drill_id, group=group, decision=decision, note=note, time=datetime.now(timezone.utc), nonce=secrets.token_hex(16),
        on_behalf_of=on_behalf_of,
    )
    text = payload.text()
    return ApprovalRequest(payload=text, signature=sign(text, key), by=claimed_by, note=note, group=group)
