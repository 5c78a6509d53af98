"""The console's own SSH key: it signs answers at approval gates on behalf of the person it
authenticated (docs/security.md, "A web console"; drdrill/core/approvals.py checks them).

The key is an Ed25519 key made by ssh-keygen on first use in `<state dir>/console/console-key`
(0600, in a 0700 directory), or the file ConsoleSettings.console_key names (a `.pub` signs through
ssh-agent, SSH_AUTH_SOCK, as with `drdrill approve --key`). A gate takes the console's answers
only when its drill file lists that public key with `role: console`:

    approvers:
      - {name: alice, key: "ssh-ed25519 AAAA…"}
      - {name: drdrill-console, key: "<the console's public key>", role: console}
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Optional

from app.approval_sign import SigningError, signed_request
from drdrill.core.models import ApprovalRequest

KEY_NAME = "console-key"


def key_path(state_dir: Path, configured: Optional[Path] = None) -> Path:
    return Path(configured) if configured else Path(state_dir) / "console" / KEY_NAME


def ensure_key(state_dir: Path, configured: Optional[Path] = None) -> Path:
    """The console's key file, made now (ssh-keygen -t ed25519) when it is the default and missing."""
    path = key_path(state_dir, configured)
    if configured or path.exists():
        return path
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    tool = shutil.which("ssh-keygen")
    if tool is None:
        raise SigningError("ssh-keygen is not installed (package openssh-client): the console signs approvals with it")
    proc = subprocess.run([tool, "-q", "-t", "ed25519", "-N", "", "-C", "drdrill-console", "-f", str(path)], capture_output=True, timeout=60)
    if proc.returncode != 0 and not path.exists():  # another process may have made it meanwhile
        raise SigningError(f"ssh-keygen could not make the console's key {path}: {proc.stderr.decode(errors='replace').strip()}")
    os.chmod(path, 0o600)
    return path


def public_line(state_dir: Path, configured: Optional[Path] = None) -> str:
    """The console's public key, `ssh-ed25519 AAAA…`, for the drill files' approvers."""
    path = ensure_key(state_dir, configured)
    pub = path if path.suffix == ".pub" else path.with_name(path.name + ".pub")
    try:
        return " ".join(pub.read_text().split()[:2])
    except OSError:
        return ""


def sign_for(state_dir: Path, configured: Optional[Path], drill_id: str, group: str, verb: str, note: str, user: str) -> ApprovalRequest:
    """An answer signed with the console's key on behalf of `user` (who must be the gate's approver)."""
    key = ensure_key(state_dir, configured)
    return signed_request(drill_id, group, verb, note, str(key), f"console:{user}", on_behalf_of=user)  # type: ignore[arg-type]
