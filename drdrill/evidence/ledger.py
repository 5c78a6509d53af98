"""The signed log: every run of an evidence store, chained, in the order it was recorded.

Each run's record is hash-chained on its own (drdrill/evidence/chain.py); this log chains the runs.
Entry n is a canonical JSON payload

    {"format": "drdrill-evidence-log/1", "seq": n, "prev": <hash of entry n-1, or 64 zeros>,
     "drill_id", "name", "verdict", "declared", "record_hash", "event_count",
     "alg": "ed25519" | "ecdsa-p256-sha256", "key": <fingerprint of the signing key>, "adopted": bool}

whose hash is sha256(payload) and which is signed, as it is (the exact bytes), by the state
directory's key or a KMS key (drdrill/evidence/signing.py). The record hash covers the run's final
record (verdict included) and, through its chain head, every event. So a run rewritten with its
hashes recomputed, a deleted run, two runs swapped, or a run added behind drdrill's back each break
the log, and `verify` names the first broken link. The newest entry (the head) is anchored outside
the store in every exported bundle (`verify(anchor=…)`): nothing at or before it can change
unnoticed, even by deleting the newest runs.

`adopted` marks the runs of a store that already held runs when the log began: they are signed
when adopted, not when recorded.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, Optional

from drdrill.evidence.chain import GENESIS, canonical, sha256, split_record
from drdrill.evidence.signing import Signer, fingerprint, verify_signature

LOG_FORMAT = "drdrill-evidence-log/1"


@dataclass
class LogCheck:
    ok: bool
    message: str
    head: Optional[dict] = None  # the newest entry verified: {seq, hash, entry, signature, public_key, alg}


def sign_entry(signer: Signer, seq: int, prev: str, doc: dict, adopted: bool = False) -> dict:
    """A new log entry for `doc` (an evidence document or a stored record with record_hash)."""
    payload = {
        "format": LOG_FORMAT, "seq": seq, "prev": prev, "drill_id": doc["drill_id"], "name": doc.get("name"),
        "verdict": doc.get("verdict"), "declared": doc.get("declared"), "record_hash": doc["record_hash"],
        "event_count": doc.get("event_count"), "alg": signer.alg, "key": fingerprint(signer.public_key), "adopted": adopted,
    }
    text = canonical(payload)
    signature = signer.sign(text.encode())
    return {"seq": seq, "drill_id": doc["drill_id"], "entry": text, "hash": sha256(text),
            "signature": base64.b64encode(signature).decode(), "public_key": signer.public_key, "alg": signer.alg}


def check_entry(row: dict, trusted: Optional[dict[str, str]]) -> tuple[Optional[str], dict]:
    """(what is wrong with one entry on its own, or None; its payload). `trusted` None: any key."""
    where = f"log entry {row['seq']} (run {row['drill_id']})"
    try:
        payload = json.loads(row["entry"])
        signature = base64.b64decode(row["signature"], validate=True)
    except (ValueError, TypeError):
        return f"{where}: not readable (altered)", {}
    if not isinstance(payload, dict):
        return f"{where}: not readable (altered)", {}
    if not verify_signature(str(payload.get("alg")), row["public_key"], row["entry"].encode(), signature):
        return f"{where}: the signature does not verify (the entry was rewritten)", payload
    fp = fingerprint(row["public_key"])
    if payload.get("key") != fp:
        return f"{where}: signed by {fp}, but the entry names {payload.get('key')}", payload
    if trusted is not None and fp not in trusted:
        return (f"{where}: signed by {fp}, which is not a trusted key (trust it with --trust KEYFILE or "
                "<state dir>/evidence-trusted-keys, if it is yours)"), payload
    if sha256(row["entry"]) != row["hash"]:
        return f"{where}: its recorded hash was altered", payload
    if payload.get("seq") != row["seq"] or payload.get("drill_id") != row["drill_id"]:
        return f"{where}: signed as entry {payload.get('seq')} of run {payload.get('drill_id')} (entries moved or reordered)", payload
    return None, payload


def walk(rows: list[dict], runs: dict[str, dict], trusted: Optional[dict[str, str]], anchor: Optional[dict] = None) -> LogCheck:
    """Verify the whole log: `rows` by seq; `runs` {drill_id: {record_hash, verdict}} as stored."""
    prev, head = GENESIS, None
    if not rows and runs and anchor is None:
        return LogCheck(True, f"log: empty; {len(runs)} runs recorded before drdrill signed evidence are not signed yet "
                              "(the next run recorded signs them into the log, marked adopted)")
    for expected, row in enumerate(rows):
        where = f"log entry {row['seq']} (run {row['drill_id']})"
        if row["seq"] != expected:
            after = f"entry {expected - 1}" if expected else "the start of the log"
            return LogCheck(False, f"log entry {expected} missing: entry {row['seq']} (run {row['drill_id']}) follows {after} (a run was deleted)", head)
        problem, payload = check_entry(row, trusted)
        if problem:
            return LogCheck(False, problem, head)
        if payload.get("prev") != prev:
            return LogCheck(False, f"{where}: does not follow entry {expected - 1} (entries reordered, deleted or replaced)", head)
        run = runs.get(row["drill_id"])
        if run is None:
            return LogCheck(False, f"{where}: the run is missing from the store (deleted)", head)
        if run["record_hash"] != payload.get("record_hash"):
            differs = f"; verdict {run['verdict']} stored, {payload.get('verdict')} signed" if run["verdict"] != payload.get("verdict") else ""
            return LogCheck(False, f"{where}: the stored run differs from the signed entry (record hash {run['record_hash'][:12]}… stored, "
                                   f"{str(payload.get('record_hash'))[:12]}… signed{differs})", head)
        if anchor is not None and row["seq"] == anchor["seq"] and row["hash"] != anchor["hash"]:
            return LogCheck(False, f"{where} differs from the anchored head (hash {row['hash'][:12]}…, anchored {anchor['hash'][:12]}…): "
                                   "the log was rewritten at or before the head", head)
        prev, head = row["hash"], row
    logged = {r["drill_id"] for r in rows}
    for drill_id in sorted(set(runs) - logged):
        return LogCheck(False, f"run {drill_id}: not in the signed log (added to the store behind drdrill's back)", head)
    if anchor is not None and (head is None or head["seq"] < anchor["seq"]):
        have = f"ends at entry {head['seq']}" if head else "is empty"
        return LogCheck(False, f"log entry {anchor['seq']} (run {anchor.get('drill_id', '?')}) missing: the anchored head is entry "
                               f"{anchor['seq']}, the log {have} (runs were deleted)", head)
    if head is None:
        return LogCheck(True, "log: empty", None)
    keys = sorted({fingerprint(r["public_key"]) for r in rows})
    return LogCheck(True, f"log: {len(rows)} runs signed and chained, head entry {head['seq']} {head['hash']}, keys {', '.join(keys)}", head)


def check_anchor(anchor: Any) -> Optional[str]:
    """What is wrong with a bundle's anchored head on its own (its signature), or None."""
    try:
        row = {k: anchor[k] for k in ("seq", "drill_id", "entry", "hash", "signature", "public_key")}
    except (KeyError, TypeError):
        return "not an anchored head (it needs seq, drill_id, entry, hash, signature and public_key)"
    problem, _ = check_entry(row, None)
    return problem


# ------------------------------------------------------------------ the file on disk against the store


def _short(value: Any) -> str:
    text = json.dumps(value, default=str, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "…"


def compare_file(stored: dict, on_disk: dict) -> Optional[str]:
    """The first difference between a run's evidence.json and its document in the store, or None."""
    a, b = split_record(on_disk), split_record(stored)
    for key in sorted(set(a) | set(b)):
        if key == "log_entry":
            continue
        if a.get(key) != b.get(key):
            return f"{key} is {_short(a.get(key))} on disk, {_short(b.get(key))} in the store"
    ea, eb = on_disk.get("events") or [], stored.get("events") or []
    for x, y in zip(ea, eb):
        if x != y:
            return f"event {y.get('seq')} differs ({_short(x.get('content'))} on disk, {_short(y.get('content'))} in the store)"
    if len(ea) != len(eb):
        return f"{len(ea)} events on disk, {len(eb)} in the store"
    for key in ("chain_head", "record_hash"):
        if on_disk.get(key) != stored.get(key):
            return f"{key} is {_short(on_disk.get(key))} on disk, {_short(stored.get(key))} in the store"
    disk_entry, store_entry = on_disk.get("log_entry"), stored.get("log_entry")
    if isinstance(disk_entry, dict) and not store_entry:
        return f"it carries signed log entry {disk_entry.get('seq')}, which the store's log does not hold"
    if isinstance(disk_entry, dict) and store_entry and disk_entry.get("hash") != store_entry.get("hash"):
        return f"its signed log entry is {disk_entry.get('seq')} ({str(disk_entry.get('hash'))[:12]}…) on disk, {store_entry.get('seq')} in the store"
    return None
