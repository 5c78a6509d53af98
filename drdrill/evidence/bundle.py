"""Exported bundles and the files of runs/: what leaves the store, and what is compared with it.

A bundle (`drdrill evidence export`) holds, besides evidence.json, report.html and junit.xml:
- log.jsonl        the run's signed log entry and every entry after it up to the head, one per line
- anchor.json      the head of the log when the bundle was made (seq, hash, entry, signature, public key)
- entry.payload, entry.sig, entry-key.pem   the run's entry: the exact signed bytes, the raw signature
- head.payload, head.sig, head-key.pem      the same for the head (for `openssl pkeyutl -verify`)
- SHA256SUMS       over all of them
Kept in an Object Lock bucket, anchor.json is the log's head held outside the store:
`drdrill evidence verify --against BUNDLE` proves nothing at or before it changed since.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Optional

from drdrill.evidence.chain import verify_document
from drdrill.evidence.ledger import check_anchor, check_entry, compare_file
from drdrill.evidence.record import write_bundle_files
from drdrill.evidence.signing import pem

ANCHOR = "anchor.json"


class BundleError(Exception):
    pass


def _signed_files(out: Path, prefix: str, entry: dict) -> list[Path]:
    files = {
        f"{prefix}.payload": entry["entry"].encode(),
        f"{prefix}.sig": base64.b64decode(entry["signature"]),
        f"{prefix}-key.pem": pem(entry["public_key"]).encode(),
    }
    for name, data in files.items():
        (out / name).write_bytes(data)
    return [out / n for n in files]


def write_export(doc: dict, log: list[dict], out: Path) -> list[Path]:
    """Write the bundle of one run; `log` is its log entry through the head, in order."""
    out = Path(out)
    paths = list(write_bundle_files(out, doc).values())
    if log:
        (out / "log.jsonl").write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in log))
        (out / ANCHOR).write_text(json.dumps(log[-1], indent=2, sort_keys=True) + "\n")
        paths += [out / "log.jsonl", out / ANCHOR] + _signed_files(out, "entry", log[0]) + _signed_files(out, "head", log[-1])
    sums = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in paths)
    (out / "SHA256SUMS").write_text(sums)
    return paths + [out / "SHA256SUMS"]


def read_anchor(path: Path) -> dict:
    """The anchored head of a bundle (its directory or its anchor.json), its signature checked."""
    path = Path(path)
    file = path / ANCHOR if path.is_dir() else path
    try:
        anchor = json.loads(file.read_text())
    except OSError as exc:
        raise BundleError(f"{file}: cannot read the bundle's anchored head ({exc.strerror}); export a bundle with `drdrill evidence export`") from None
    except ValueError as exc:
        raise BundleError(f"{file}: not JSON ({exc})") from None
    problem = check_anchor(anchor)
    if problem:
        raise BundleError(f"{file}: {problem}")
    return anchor


def check_import(doc: dict, trusted: dict[str, str]) -> Optional[str]:
    """Why an evidence.json must not be imported, or None: its chain, and a log entry signed by a
    trusted key for exactly this record."""
    if "events" not in doc:
        return "written before the evidence store existed"
    ok, message = verify_document(doc)
    if not ok:
        return message
    entry = doc.get("log_entry")
    if not isinstance(entry, dict):
        return "not signed (no log_entry): only evidence signed by a trusted key is imported"
    try:
        problem, payload = check_entry(entry, trusted)
    except (KeyError, TypeError):
        return "its log_entry is not readable"
    if problem:
        return problem
    if payload.get("record_hash") != doc.get("record_hash") or payload.get("drill_id") != doc.get("drill_id"):
        return f"its signed log entry is for another record (record hash {str(payload.get('record_hash'))[:12]}…, the file's {str(doc.get('record_hash'))[:12]}…)"
    return None


def check_files(state_dir: Path, stored: dict[str, dict], every: bool) -> list[str]:
    """runs/<id>/evidence.json against the store: each file of a stored run must be the stored
    document; with `every`, a file of a run the store does not hold is named too."""
    problems = []
    runs = Path(state_dir) / "runs"
    for drill_id, doc in stored.items():
        file = runs / drill_id / "evidence.json"
        if not file.exists():
            continue
        try:
            on_disk = json.loads(file.read_text())
        except (OSError, ValueError) as exc:
            problems.append(f"run {drill_id}: {file} is not readable ({exc})")
            continue
        differs = compare_file(doc, on_disk) if isinstance(on_disk, dict) else "not an evidence document"
        if differs:
            problems.append(f"run {drill_id}: {file} differs from the store: {differs}")
    if every and runs.is_dir():
        for file in sorted(runs.glob("*/evidence.json")):
            if file.parent.name not in stored:
                problems.append(f"run {file.parent.name}: {file} is not in the evidence store (its run was deleted from the store, or never stored)")
    return problems
