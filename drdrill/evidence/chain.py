"""Evidence: what happened in a drill, recorded so that tampering shows.

One run's evidence is a *record* (the run as a whole: spec as run and its sha256, verdict,
objectives, recovery points, isolation facts, teardown proof, who started it, drdrill's version)
and a list of *events* (every timeline event, then every validation result, then every finding).
Events are hash-chained: each holds the sha256 of its predecessor, and
hash = sha256(prev_hash + canonical JSON of {run, seq, kind, content}). The record holds the chain
head and the number of events; record_hash = sha256(chain_head + canonical JSON of the record), so
the final record cannot be changed either without it showing.

The same document is written to <state>/runs/<drill id>/evidence.json (drdrill/evidence/record.py)
and stored in PostgreSQL (drdrill/evidence/store.py); `verify_rows` is the one verification both use.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable, Optional

from drdrill import __version__
from drdrill.core.models import DrillResult
from drdrill.core.redact import redact_obj

GENESIS = "0" * 64
EVIDENCE_FORMAT = 1
# Parts of the document that live in the event chain, in chain order; the rest is the run record.
EVENT_KINDS = (("timeline", "timeline"), ("validation", "validations"), ("finding", "findings"))
_NOT_RECORD = {"timeline", "validations", "findings", "events", "chain_head", "record_hash", "evidence_path", "log_entry"}


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# ------------------------------------------------------------------ the chain


def row_hash(run: str, seq: int, kind: str, content: Any, prev_hash: str) -> str:
    return sha256(prev_hash + canonical({"run": run, "seq": seq, "kind": kind, "content": content}))


def chain_rows(run: str, items: Iterable[tuple[str, Any]]) -> list[dict]:
    """[(kind, content)] -> rows {run, seq, kind, content, prev_hash, hash}."""
    prev = GENESIS
    rows = []
    for seq, (kind, content) in enumerate(items):
        digest = row_hash(run, seq, kind, content, prev)
        rows.append({"run": run, "seq": seq, "kind": kind, "content": content, "prev_hash": prev, "hash": digest})
        prev = digest
    return rows


def record_hash(chain_head: str, record: dict) -> str:
    return sha256(chain_head + canonical(record))


def describe_row(row: dict) -> str:
    content = row.get("content") or {}
    kind = row.get("kind")
    if not isinstance(content, dict):
        return str(kind)
    if kind == "timeline":
        return content.get("phase", "?") + (f" {content['target']}" if content.get("target") else "")
    if kind == "validation":
        return f"validation {content.get('name', '?')}"
    if kind == "finding":
        return f"finding {content.get('code', '?')}"
    return str(kind)


def verify_rows(run: str, rows: list[dict], head: Optional[str] = None, count: Optional[int] = None) -> tuple[bool, str]:
    """Recompute a run's chain. (ok, message); when not ok the message names the first bad row:
    "run X event 4 (restore): content altered", "run X event 3 missing", "run X event inserted after 2".

    `rows` are in storage order (seq, then insertion); `head` and `count` come from the run's final
    record, so a row appended or removed at the end shows too.
    """
    prev = GENESIS
    seen: dict[str, int] = {GENESIS: -1}
    last: Optional[dict] = None
    for i, row in enumerate(rows):
        seq = row.get("seq")
        label = f"run {run} event {seq} ({describe_row(row)})"
        if not isinstance(seq, int) or seq > i:
            return False, f"run {run} event {i} missing" + (f" (the next stored event is {seq})" if isinstance(seq, int) else "")
        if seq < i:
            return False, f"run {run} event inserted after {i - 1} (a second event {seq})"
        own = row_hash(run, seq, row.get("kind", ""), row.get("content"), row.get("prev_hash", ""))
        if row.get("prev_hash") == prev:
            if own != row.get("hash"):
                return False, f"{label}: content altered"
        else:
            nxt = rows[i + 1] if i + 1 < len(rows) else None
            if row.get("prev_hash") in seen and seen[row["prev_hash"]] < i - 1:
                k = seen[row["prev_hash"]]
                return False, f"run {run} event inserted after {k}" if k >= 0 else f"run {run} event inserted before 0"
            if nxt is not None and nxt.get("prev_hash") == prev:
                return False, f"run {run} event inserted after {i - 1}"
            for d in range(1, 4):  # later events renumbered after a deletion
                if row_hash(run, seq + d, row.get("kind", ""), row.get("content"), row.get("prev_hash", "")) == row.get("hash"):
                    return False, f"run {run} event {i} missing" + (f" (and {d - 1} more)" if d > 1 else "")
            if own == row.get("hash") and last is not None:
                return False, (
                    f"run {run} event {i - 1} ({describe_row(last)}): content altered "
                    f"(its hash was recomputed; event {i} still records the original)"
                )
            return False, f"{label}: content altered (it no longer follows event {i - 1})"
        seen[row["hash"]] = i
        prev = row["hash"]
        last = row
    n = len(rows)
    if count is not None and n < count:
        return False, f"run {run} event {n} missing" + (f" (and {count - n - 1} more)" if count - n > 1 else "")
    if count is not None and n > count:
        return False, f"run {run} event inserted after {count - 1}"
    if head is not None and head != prev:
        if last is not None:
            return False, f"run {run} event {n - 1} ({describe_row(last)}): content altered (the chain head differs from the run's final record)"
        return False, f"run {run}: the chain head differs from the run's final record"
    return True, f"run {run}: {n} events intact, chain head {prev}"


def verify_document(doc: dict) -> tuple[bool, str]:
    """Verify an evidence.json document (or a bundle's) on its own."""
    run = doc.get("drill_id", "?")
    rows = doc.get("events")
    if rows is None:  # evidence files written before the store existed
        return verify_chain(doc.get("timeline", []))
    record = split_record(doc)
    ok, msg = verify_rows(run, rows, head=doc.get("chain_head"), count=record.get("event_count"))
    if not ok:
        return ok, msg
    if record_hash(doc.get("chain_head", ""), record) != doc.get("record_hash"):
        return False, f"run {run} final record: content altered"
    return True, msg


# ------------------------------------------------------------------ older helpers (timeline-only chain)


def chain(events: list[dict]) -> list[dict]:
    """Return events each with `seq`, `prev_hash` and `hash` (sha256 over prev_hash + canonical event)."""
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
    """(ok, message naming the first bad event) for a `chain()`ed list."""
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


# ------------------------------------------------------------------ the document


def _strip_nul(obj: Any) -> Any:
    if isinstance(obj, str):
        return obj.replace("\x00", "")
    if isinstance(obj, dict):
        return {k: _strip_nul(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_strip_nul(v) for v in obj]
    return obj


def split_record(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k not in _NOT_RECORD}


def evidence_document(result: DrillResult) -> dict:
    """The run's evidence: the redacted DrillResult plus its event chain, chain head and record hash."""
    raw = result.model_dump(mode="json")
    raw["evidence_path"] = None
    doc = _strip_nul(redact_obj(raw))
    doc["spec_redacted"] = doc.get("spec_text") != raw.get("spec_text")
    doc["drdrill_version"] = __version__
    doc["evidence_format"] = EVIDENCE_FORMAT
    items = [(kind, content) for kind, key in EVENT_KINDS for content in doc.get(key) or []]
    doc["events"] = chain_rows(result.drill_id, items)
    doc["event_count"] = len(doc["events"])
    doc["chain_head"] = doc["events"][-1]["hash"] if doc["events"] else GENESIS
    doc["record_hash"] = record_hash(doc["chain_head"], split_record(doc))
    return doc


def document_from_parts(record: dict, rows: list[dict], chain_head: str, rhash: str) -> dict:
    """Rebuild the document from a stored record and its event rows."""
    doc = dict(record)
    for kind, key in EVENT_KINDS:
        doc[key] = [r["content"] for r in rows if r["kind"] == kind]
    doc["events"] = rows
    doc["chain_head"] = chain_head
    doc["record_hash"] = rhash
    return doc


def result_from_document(doc: dict) -> DrillResult:
    return DrillResult.model_validate({k: v for k, v in doc.items() if k in DrillResult.model_fields})
