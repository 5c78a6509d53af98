"""Evidence: what happened in a drill, recorded so that tampering shows.

Every timeline event carries the sha256 of its predecessor's record (a hash chain); the run's final
record carries the chain head. `verify_chain` recomputes it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from activities.models import DrillResult

GENESIS = "0" * 64


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)


def chain(events: list[dict]) -> list[dict]:
    """Return events each with `prev_hash` and `hash` (sha256 over prev_hash + canonical event)."""
    prev = GENESIS
    out = []
    for i, ev in enumerate(events):
        body = {k: v for k, v in ev.items() if k not in ("prev_hash", "hash")}
        body["seq"] = i
        digest = hashlib.sha256((prev + canonical(body)).encode()).hexdigest()
        out.append({**body, "prev_hash": prev, "hash": digest})
        prev = digest
    return out


def verify_chain(events: list[dict]) -> tuple[bool, str]:
    """(ok, message naming the first bad event)."""
    prev = GENESIS
    for i, ev in enumerate(events):
        if ev.get("seq") != i:
            return False, f"event {i}: sequence is {ev.get('seq')!r}, expected {i} (an event was deleted or inserted)"
        if ev.get("prev_hash") != prev:
            return False, f"event {i}: does not follow event {i - 1} (an event was deleted, inserted or altered)"
        body = {k: v for k, v in ev.items() if k not in ("prev_hash", "hash")}
        if hashlib.sha256((prev + canonical(body)).encode()).hexdigest() != ev.get("hash"):
            return False, f"event {i} ({ev.get('phase')}): its content was altered"
        prev = ev["hash"]
    return True, f"{len(events)} events, chain head {prev}"


def evidence_document(result: DrillResult) -> dict:
    from drdrill.redact import redact_obj

    doc = redact_obj(result.model_dump(mode="json"))
    doc["timeline"] = chain(doc.get("timeline", []))
    doc["chain_head"] = doc["timeline"][-1]["hash"] if doc["timeline"] else GENESIS
    from drdrill import __version__

    doc["drdrill_version"] = __version__
    return doc


def write_evidence_file(state_dir: Path, result: DrillResult) -> str:
    """Write runs/<drill id>/evidence.json atomically (idempotent: same result, same file)."""
    run_dir = Path(state_dir) / "runs" / result.drill_id
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "evidence.json"
    tmp = run_dir / f".evidence.json.{os.getpid()}"
    tmp.write_text(json.dumps(evidence_document(result), indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)
    return str(path)
