"""Where code lives stays readable: docs/architecture.md names every module, and no module or
function grows past what a reader takes in at once.

- docs/architecture.md has one line per module (every .py under drdrill/, workflows/, activities/,
  app/, drills/, and worker.py), in its section "Every module", written as
  ``- `path/to/module.py`: what it does``. A module missing from it fails this test with the line
  to add; a line naming a module that no longer exists fails it too.
- No module is over 600 lines, and no function over 60 lines unless a comment right after its
  signature or docstring says why, starting with ``# long:`` (e.g. ``# long: the steps of one
  restore, in the order they happen``).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "architecture.md"
PACKAGES = ("drdrill", "workflows", "activities", "app", "drills")
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 60
LONG_MARKER = "# long:"
# `- `path.py`: ...` (or `- `path.py` — ...`), one per module, anywhere in the document
LISTED = re.compile(r"^- `((?:drdrill|workflows|activities|app|drills)/[\w/]+\.py|worker\.py)`")

# Modules that other work in flight is splitting (issue 24): they may stay over the limits until it
# lands. Each entry fails the test once its module is within the limits again: then delete it.
PENDING_FILES = {
}
PENDING_FUNCTIONS = {
}


def _modules() -> list[str]:
    found = [p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py") if "__pycache__" not in p.parts]
    return sorted([str(p.relative_to(REPO)) for p in found] + ["worker.py"])


def _summary(path: str) -> str:
    """The first line of a module's docstring: a start for its line in docs/architecture.md."""
    doc = ast.get_docstring(ast.parse((REPO / path).read_text())) or ""
    first = doc.strip().splitlines()[0].strip() if doc.strip() else "<what it does, in one line>"
    return first.rstrip(".")


def _listed() -> list[str]:
    return [m.group(1) for line in DOC.read_text().splitlines() if (m := LISTED.match(line.strip()))]


def test_architecture_md_lists_every_module_once():
    listed = _listed()
    modules = _modules()
    missing = [m for m in modules if m not in listed]
    gone = sorted({m for m in listed if m not in modules})
    twice = sorted({m for m in listed if listed.count(m) > 1})
    problems = []
    if missing:
        problems.append(
            "docs/architecture.md, section 'Every module', lacks these modules; add each line under its folder's heading "
            "(and say in your own words what a reader gets from it):\n"
            + "\n".join(f"- `{m}`: {_summary(m)}" for m in missing)
        )
    if gone:
        problems.append("docs/architecture.md lists modules that no longer exist; delete these lines:\n" + "\n".join(f"- `{m}`" for m in gone))
    if twice:
        problems.append("docs/architecture.md lists these modules more than once; keep one line each:\n" + "\n".join(f"- `{m}`" for m in twice))
    assert not problems, "\n\n".join(problems)


def _long_functions(path: str) -> list[tuple[str, int]]:
    """(name, lines) of each function over the limit without a `# long:` comment saying why."""
    text = (REPO / path).read_text()
    lines = text.splitlines()
    out = []
    for node in ast.walk(ast.parse(text)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        length = node.end_lineno - node.lineno + 1
        if length <= MAX_FUNCTION_LINES:
            continue
        body = node.body[1:] if ast.get_docstring(node) is not None and len(node.body) > 1 else node.body
        head = lines[node.lineno - 1 : body[0].lineno + 2]  # the signature, docstring and first lines of the body
        if not any(LONG_MARKER in line and line.split(LONG_MARKER, 1)[1].strip() for line in head):
            out.append((node.name, length))
    return out


def test_no_module_or_function_is_too_long_to_read():
    problems, stale = [], []
    for path in _modules():
        count = len((REPO / path).read_text().splitlines())
        if count > MAX_FILE_LINES and path not in PENDING_FILES:
            problems.append(f"{path} has {count} lines (at most {MAX_FILE_LINES}): split it by meaning")
        if count <= MAX_FILE_LINES and path in PENDING_FILES:
            stale.append(f"{path} is within {MAX_FILE_LINES} lines now: delete it from PENDING_FILES in tests/test_structure.py")
        long = {name: n for name, n in _long_functions(path)}
        for name, n in long.items():
            if f"{path}:{name}" not in PENDING_FUNCTIONS:
                problems.append(
                    f"{path}: {name} has {n} lines (at most {MAX_FUNCTION_LINES}): split it, or say why right after its "
                    f"signature or docstring in a comment starting `{LONG_MARKER}`"
                )
        for key in PENDING_FUNCTIONS:
            where, name = key.split(":")
            if where == path and name not in long:
                stale.append(f"{key} is within {MAX_FUNCTION_LINES} lines (or says why) now: delete it from PENDING_FUNCTIONS")
    missing_pending = [p for p in list(PENDING_FILES) + [k.split(":")[0] for k in PENDING_FUNCTIONS] if not (REPO / p).exists()]
    stale += [f"{p} no longer exists: delete it from PENDING_FILES / PENDING_FUNCTIONS" for p in sorted(set(missing_pending))]
    assert not problems and not stale, "\n".join(problems + stale)
