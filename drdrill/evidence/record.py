"""Recording a run's evidence: the files of runs/<drill id>/ and the evidence store, kept in agreement."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Callable, Optional

from drdrill.core.models import DrillResult
from drdrill.providers.activity_io import SweepRecord
from drdrill.core.redact import redact_obj
from drdrill.evidence.chain import evidence_document
from drdrill.evidence.render import render_drill_html, render_junit
from drdrill.evidence.signing import signer
from drdrill.evidence.store import open_store

log = logging.getLogger("drdrill.evidence")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.parent / f".{path.name}.{os.getpid()}"
    tmp.write_text(text)
    os.replace(tmp, path)


def write_bundle_files(run_dir: Path, doc: dict) -> dict[str, Path]:
    """evidence.json, report.html and junit.xml for one run (idempotent: same document, same files)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    paths = {"evidence.json": run_dir / "evidence.json", "report.html": run_dir / "report.html", "junit.xml": run_dir / "junit.xml"}
    _atomic_write(paths["evidence.json"], json.dumps(doc, indent=2, sort_keys=True, default=str))
    _atomic_write(paths["report.html"], render_drill_html(doc))
    _atomic_write(paths["junit.xml"], render_junit(doc))
    return paths


def write_evidence_file(state_dir: Path, result: DrillResult, doc: Optional[dict] = None) -> str:
    """Write runs/<drill id>/evidence.json (with report.html and junit.xml beside it). Returns its path."""
    doc = doc if doc is not None else evidence_document(result)
    paths = write_bundle_files(Path(state_dir) / "runs" / result.drill_id, doc)
    return str(paths["evidence.json"])


def record_run(state_dir: Path, result: DrillResult, dsn: Optional[str] = None, opener: Callable = open_store) -> str:
    """What the record_evidence activity does: the PostgreSQL store (the run signed into its log,
    with the state directory's key or DRDRILL_EVIDENCE_KEY) and runs/<drill id>/ beside it, carrying
    the signed log entry. Returns evidence.json's path.

    `opener`: how to open the store (a worker's StorePool.open keeps connections between activities).
    Idempotent for the same record (a retried activity); a second, different record for a drill id
    already stored raises EvidenceConflict and changes nothing, neither the store nor the files.
    """
    doc = evidence_document(result)
    key = signer(state_dir)
    with opener(dsn, state_dir=state_dir) as store:
        store.record(doc, key)
        doc["log_entry"] = store.log_entry(result.drill_id)
    return write_evidence_file(state_dir, result, doc)


def record_sweep(state_dir: Path, record: SweepRecord) -> str:
    """Keep an orphan sweep as evidence: <state_dir>/sweeps/<time>-<id>.json (redacted), and a copy
    in the evidence store. The file is the record: a store that is down loses nothing. Returns its path."""
    folder = Path(state_dir) / "sweeps"
    folder.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", record.sweep_id)
    path = folder / f"{record.started:%Y%m%dT%H%M%SZ}-{safe}.json"
    record.evidence_path = str(path)
    data = redact_obj(record.model_dump(mode="json"))
    _atomic_write(path, json.dumps(data, indent=2, sort_keys=True))
    try:
        with open_store(state_dir=state_dir) as store:
            store.record_sweep(data)
    except Exception:  # noqa: BLE001 - never lose the file because the store is down
        log.exception("could not copy the sweep into the evidence store")
    return str(path)
