"""What a signed approval costs: signing it (`ssh-keygen -Y sign`, what `drdrill approve` runs) and
verifying it (drdrill/core/approvals.py: what DrillWorkflow runs in the update, on the workflow
task), per key type. Keys are made by the real ssh-keygen in a throwaway directory.

    python -m bench.approvals --runs 200
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from app.approval_sign import sign
from bench.common import summary, time_limit, write_result
from drdrill.core import approvals
from drdrill.core.approvals import ApprovalPayload
from drdrill.core.planspec import Approver

KINDS = {"ed25519": ["-t", "ed25519"], "ecdsa-p256": ["-t", "ecdsa", "-b", "256"], "rsa-3072": ["-t", "rsa", "-b", "3072"]}


def one_kind(folder: Path, kind: str, runs: int) -> dict:
    key = folder / kind
    subprocess.run(["ssh-keygen", "-q", *KINDS[kind], "-N", "", "-f", str(key)], check=True)
    approver = Approver(name="alice", key=(folder / f"{kind}.pub").read_text())
    now = datetime.now(timezone.utc)
    payload = ApprovalPayload(drill_id="d-1", group="app", decision="approve", note="ok", time=now, nonce="n" * 32).text()
    signing, verifying = [], []
    signature = ""
    for _ in range(max(1, runs // 10)):  # a process per signature: fewer runs
        t0 = time.perf_counter()
        signature = sign(payload, str(key))
        signing.append(time.perf_counter() - t0)
    for _ in range(runs):
        t0 = time.perf_counter()
        approvals.check(
            payload, signature, drill_id="d-1", group="app", decision="approve", approvers=[approver],
            asked=now - timedelta(minutes=1), until=now + timedelta(hours=1), now=now, used_nonces=(),
        )
        verifying.append(time.perf_counter() - t0)
    return {"sign_seconds": summary(signing), "verify_seconds": summary(verifying)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--timeout", type=float, default=300)
    a = ap.parse_args()
    time_limit(a.timeout)
    with tempfile.TemporaryDirectory(prefix="drdrill-bench-keys-") as tmp:
        results = {kind: one_kind(Path(tmp), kind, a.runs) for kind in KINDS}
    path = write_result("approvals", {"runs": a.runs, "kinds": results})
    for kind, r in results.items():
        print(f"{kind:<11} sign median {r['sign_seconds']['median'] * 1000:7.2f} ms   verify median {r['verify_seconds']['median'] * 1000:6.3f} ms")
    print(f"results in {path}")


if __name__ == "__main__":
    main()
