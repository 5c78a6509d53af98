"""The files a drill file names: `${VAR}` and `~` expanded, made relative to the drill file, checked
readable by restore.after's sandbox; and approvers read from an allowed_signers file."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from drdrill.core import sshsig
from drdrill.core.paths import default_state_dir
from drdrill.core.planspec import PLAIN_APPROVER, Approver
from drdrill.core.schema import SpecError


def drill_paths(spec: Any) -> Iterator[tuple[str, Any, Any]]:
    """Every field of a drill that names a file or directory: (field path, owner, attribute or index)."""
    for i, t in enumerate(spec.targets):
        yield from t.file_fields(i)


def unreachable_by_others(path: str) -> Optional[str]:
    """Why an unprivileged uid (restore.after's sandbox) cannot read `path`, with the fix; None: it can."""
    if not os.path.exists(path):
        return f"{path} does not exist: restore.after's sandbox sees only what exists when the drill starts"
    current = Path("/")
    for part in Path(path).parts[1:]:
        mode = os.stat(current).st_mode
        if not mode & 0o001:
            return (f"{current} is {mode & 0o777:04o}: the sandbox's unprivileged uid cannot traverse it to reach {path}; "
                    "move the application under /opt or /srv, or make the directory traversable by others (o+x)")
        current = current / part
    mode = os.stat(path).st_mode
    need = 0o005 if os.path.isdir(path) else 0o004
    if mode & need != need:
        return f"{path} is {mode & 0o777:04o}: the sandbox's unprivileged uid cannot read it; make it readable by others (o+r{'x' if need == 0o005 else ''})"
    return None


def resolve_paths(spec: Any, path: str, base_dir: Optional[Path]) -> None:
    """Expand variables and `~` in every path of the drill; with `base_dir`, make relative paths
    relative to the drill file. Every bad path is reported at once, and nothing is created."""
    problems = []
    for field, owner, attr in drill_paths(spec):
        try:
            value = expand_path(owner[attr] if isinstance(owner, list) else getattr(owner, attr))
            if base_dir is not None and not os.path.isabs(value):
                value = str((base_dir / value).resolve())
        except (ValueError, OSError, RuntimeError) as exc:
            problems.append((field, str(exc)))
            continue
        if isinstance(owner, list):
            owner[attr] = value
        else:
            setattr(owner, attr, value)
        if base_dir is not None and ".restore.after.paths[" in field:
            problem = unreachable_by_others(value)
            if problem:
                problems.append((field, problem))
    if problems:
        raise SpecError(path, problems)


def approvers_without_keys(spec: Any) -> list[tuple[str, str]]:
    """An approver named without a key cannot sign: each one, with the fix."""
    return [
        (f"approve[{i}].approvers[{j}]", PLAIN_APPROVER.format(name=a.name))
        for i, gate in enumerate(spec.approve)
        for j, a in enumerate(gate.approvers)
        if not a.key
    ]


def read_approvers_files(spec: Any, path: str, base_dir: Optional[Path]) -> None:
    """Add the approvers an `approvers_file` (allowed_signers format) names to its gate: the keys
    travel with the drill, so the workflow verifies signatures without reading a file."""
    problems = []
    for i, gate in enumerate(spec.approve):
        if not gate.approvers_file:
            continue
        field = f"approve[{i}].approvers_file"
        try:
            file = expand_path(gate.approvers_file)
            if base_dir is not None and not os.path.isabs(file):
                file = str((base_dir / file).resolve())
            entries = sshsig.parse_allowed_signers(Path(file).read_text(encoding="utf-8"))
        except (OSError, ValueError, RuntimeError) as exc:
            problems.append((field, f"{exc}: write one approver a line, `alice ssh-ed25519 AAAA…` (git's allowed_signers format)"))
            continue
        if not entries:
            problems.append((field, f"{file} names no approver: write one a line, `alice ssh-ed25519 AAAA…`"))
        gate.approvers_file = file
        gate.approvers += [Approver(name=name, key=key) for name, key in entries]
    if problems:
        raise SpecError(path, problems)


_VARIABLE_RE = re.compile(r"\$(?:\{(?P<braced>[^}]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))?")
_VARIABLE_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def expand_path(text: str, env: Mapping[str, str] = os.environ) -> str:
    """Expand `${VAR}`, `$VAR` and a leading `~` in a path from a drill file.

    A variable that is not set (or is empty) is an error, never left in the path: `${VAR}/backups`
    kept literally is a relative directory that `drdrill backup` would create wherever it runs, and
    an empty one turns `${VAR}/backups` into `/backups`. DRDRILL_STATE_DIR is always known: it
    defaults to drdrill's state directory, as it does for `drdrill run`."""

    def variable(match: re.Match) -> str:
        name = match.group("braced") if match.group("braced") is not None else match.group("bare")
        if name is None or not _VARIABLE_NAME_RE.match(name):
            raise ValueError(f"{text!r} has a '$' that is not a variable such as ${{BACKUP_ROOT}}: remove it or write an absolute path")
        value = env.get(name)
        if not value and name == "DRDRILL_STATE_DIR":
            value = default_state_dir(env)
            if value.startswith("~"):
                value = ""  # no home directory to put the state directory in
        if not value:
            state = "empty" if name in env else "not set"
            raise ValueError(f"{text!r} uses ${{{name}}}, which is {state}: set {name} or write an absolute path")
        return value

    expanded = _VARIABLE_RE.sub(variable, text)
    if expanded.startswith("~"):
        home = os.path.expanduser(expanded)
        if home.startswith("~"):
            user = expanded[1:].split("/", 1)[0] or "the current user"
            raise ValueError(f"{text!r} starts with '~', but there is no home directory for {user}: write an absolute path")
        expanded = home
    return expanded

