"""Selections of postgres sources: backup repositories, listed or matched by globs
(`select: {repositories: [backups/*]}`), each with the times of its backups.

drdrill's own repositories only (the directories `drdrill backup` writes); there is no inventory
beyond what the drills name, so coverage counts the repositories the drill files name or select.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

from drdrill.core.selection import ProtectedResource
from drdrill.core.schema import Selection
from drdrill.providers.base import ProviderError
from drdrill.providers.postgres.backup import read_points


def repositories(patterns: list[str]) -> list[str]:
    """The repository directories the patterns name (a glob matches directories only)."""
    found: dict[str, None] = {}
    for pattern in patterns:
        if glob.has_magic(pattern):
            found.update((os.path.normpath(p), None) for p in sorted(glob.glob(pattern)) if os.path.isdir(p))
        else:
            found[os.path.normpath(pattern)] = None  # named: a missing one is listed without recovery points
    return list(found)


def discover(kind: str, selection: Selection) -> list[ProtectedResource]:
    if kind != "postgres":
        raise ProviderError("SELECTION_NOT_SUPPORTED", f"the postgres provider does not select {kind} resources")
    out = []
    for repo in repositories(selection.repositories):
        name = Path(repo).name
        times = [p.consistent_time for p in read_points(repo, name)] if os.path.isdir(repo) else []
        out.append(
            ProtectedResource(
                kind="postgres",
                id=repo,
                name=name,
                source={"repository": repo},
                newest_point=max(times) if times else None,
                oldest_point=min(times) if times else None,
                points=len(times),
            )
        )
    return out
