"""The layers import one way only: the import-linter contracts in pyproject.toml hold.

A maintainer who adds an upward import (a provider importing Temporal, the evidence store
importing an activity) sees this test fail with the offending import named."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_import_contracts_are_kept():
    lint = Path(sys.executable).parent / "lint-imports"
    proc = subprocess.run([str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "BROKEN" not in proc.stdout and proc.stdout.count("KEPT") >= 5, proc.stdout


def _imported_roots(path: Path) -> set[str]:
    """The top-level names a module imports (inside functions too)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_worker_py_sits_between_the_workflows_and_the_application():
    """import-linter checks packages only, so worker.py's place is checked here: it assembles the
    worker from the layers below and imports nothing from `app/`, and no layer below the
    application imports it (`app/` runs it in-process)."""
    assert "app" not in _imported_roots(REPO / "worker.py")
    below = [p for pkg in ("drdrill", "activities", "workflows") for p in (REPO / pkg).rglob("*.py")]
    offenders = [str(p.relative_to(REPO)) for p in below if "worker" in _imported_roots(p)]
    assert offenders == [], f"these modules import worker.py, which sits above them: {offenders}"
