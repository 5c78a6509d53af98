"""The embedded evidence store: where it lives, who starts its server and who stops it.

Without DRDRILL_EVIDENCE_DSN, the evidence store is an embedded PostgreSQL, one per state
directory (a local-PostgreSQL cluster, drdrill/localpg/), with its data in `<state dir>/evidence`
(as root with the default state directory: /var/lib/drdrill/evidence) and a private Unix socket
under the cluster root. drdrill starts it on demand (`embedded_dsn`), and the command that started
it stops it when it ends (`embedded_server`). As root, its server runs as an account of its own,
and it admits only drdrill's own uid, by peer authentication: see access.py. store.py is the store
itself; `evidence_dsn` is how it is found.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import pwd
import shutil
import stat
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import psycopg

from drdrill.core.paths import default_state_dir
from drdrill.evidence.access import AccessError, access_files, evidence_user, secure_existing
from drdrill.localpg.cluster import LocalCluster, cluster_root, run_user

EMBEDDED_DB = "drdrill_evidence"


class EvidenceStoreError(Exception):
    """The evidence store cannot be reached or used (its text says why)."""


# As root, the store of root's default state directory (inside root's private home) lives here.
ROOT_STORE_HOME = Path("/var/lib/drdrill/evidence")
# Present in a store's socket directory when a drdrill command started its server: the last drdrill
# process to stop using the store stops that server (see embedded_server).
STOP_WHEN_UNUSED = "stop-when-unused"
# The embedded store keeps evidence for years: unlike throwaway clusters, it writes durably.
DURABLE = {
    "fsync": "on",
    "full_page_writes": "on",
    "synchronous_commit": "on",
    "shared_buffers": "32MB",
    "maintenance_work_mem": "64MB",
    "max_wal_size": "1GB",
}

log = logging.getLogger("drdrill.evidence")


def store_home(state_dir: Optional[str | Path] = None) -> Path:
    """The directory holding a state directory's embedded store: `<state dir>/evidence`.

    One exception: as root, the server runs as an unprivileged user, which cannot enter root's
    private home (0700). Rather than open root's home to every user, the store of root's default
    state directory (~/.local/state/drdrill) lives in /var/lib/drdrill/evidence."""
    state = Path(state_dir or default_state_dir()).expanduser().resolve()
    if run_user() is not None and state == _default_state_in_home():
        return ROOT_STORE_HOME
    return state / "evidence"


def _default_state_in_home() -> Optional[Path]:
    home = Path.home().resolve()
    base = Path(os.environ.get("XDG_STATE_HOME") or home / ".local" / "state").expanduser().resolve()
    default = base / "drdrill"
    return default if default.is_relative_to(home) else None


def embedded_cluster(state_dir: Optional[str | Path] = None):
    """The embedded evidence cluster of a state directory (not started).

    Its data (and server log) live in store_home(), so the evidence survives a cleaned /tmp or a
    reboot, and each state directory has its own. Its Unix socket must stay short (~107 bytes), so
    it lives under the cluster root, in a directory named after a hash of the store's home: two
    state directories never share a socket or a server."""
    home = store_home(state_dir)
    try:
        user = evidence_user()
    except AccessError as exc:
        raise EvidenceStoreError(str(exc)) from None
    cluster = LocalCluster(cluster_root() / f"evidence-{hashlib.sha256(str(home).encode()).hexdigest()[:12]}", user=user)
    cluster.data = home / "pgdata"
    cluster.log = home / "server.log"
    return cluster


def embedded_dsn(state_dir: Optional[str | Path] = None) -> str:
    """Start (once) the embedded evidence PostgreSQL of a state directory and return a DSN for its
    database. Inside embedded_server(), a server started here is stopped when the block ends."""
    cluster = embedded_cluster(state_dir)
    _note_old_layout(cluster)
    managed = _use(cluster)
    if _reachable(cluster, EMBEDDED_DB):  # already up (the common case): one connection, not a `pg_ctl status` per drill
        return cluster.dsn(EMBEDDED_DB)
    cluster.path.mkdir(mode=0o700, exist_ok=True)
    with open(cluster.path / "start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not _reachable(cluster):
                forget_runtime_dirs_of_removed_stores(cluster.path.parent)
                _forget_stale_pid(cluster)
                if cluster.running():  # up, but its socket directory was removed (a cleaned /tmp)
                    cluster.stop(mode="fast")
                prepare_home(cluster.data.parent, cluster.user)
                if cluster.initialised:
                    secure_existing(cluster)
                cluster.create(
                    {"drdrill:evidence": "embedded evidence store (not a drill resource; never swept)", "data": str(cluster.data)},
                    DURABLE,
                    access=access_files(),
                )
                marker = cluster.path / STOP_WHEN_UNUSED
                if managed:
                    marker.touch()
                else:
                    marker.unlink(missing_ok=True)
            with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
                if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (EMBEDDED_DB,)).fetchone():
                    conn.execute(f'CREATE DATABASE "{EMBEDDED_DB}"')
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return cluster.dsn(EMBEDDED_DB)


def _reachable(cluster, dbname: str = "postgres") -> bool:
    try:
        with psycopg.connect(cluster.dsn(dbname), connect_timeout=5):
            return True
    except psycopg.OperationalError:
        return False


def _forget_stale_pid(cluster) -> None:
    """Remove a postmaster.pid that names no server of this data directory. The data outlives
    reboots, and after one the pid in a file left by a crash may belong to another process, which
    `pg_ctl status` would take for our server (and `stop` would signal). A postmaster works in
    its data directory, so ours is the process whose working directory that is."""
    pid_file = cluster.data / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return
    try:
        ours = os.readlink(f"/proc/{pid}/cwd") == os.path.realpath(cluster.data)
    except OSError:  # no such process, or not one of ours
        ours = False
    if not ours:
        pid_file.unlink(missing_ok=True)


def prepare_home(home: Path, user: Optional[pwd.struct_passwd]) -> None:
    """Create the store's home. As root, the server's unprivileged user must reach the data
    directory inside it: the home is 0711 (root's, traversable, not listable) and every directory
    above it that this user cannot enter gets the search (x) permission it lacks, and only that:
    nothing becomes listable or readable. Each such change is logged."""
    home.mkdir(mode=0o711 if user else 0o700, parents=True, exist_ok=True)
    if user is None:
        return
    os.chmod(home, 0o711)
    groups = set(os.getgrouplist(user.pw_name, user.pw_gid))
    for d in reversed(home.parents):
        st = d.stat()
        bit = stat.S_IXUSR if st.st_uid == user.pw_uid else stat.S_IXGRP if st.st_gid in groups else stat.S_IXOTH
        if not st.st_mode & bit:
            os.chmod(d, stat.S_IMODE(st.st_mode) | bit)
            log.warning(
                "made %s traversable by %s (%o -> %o: enter only, not list) so the evidence server, which runs as %s, reaches %s",
                d, user.pw_name, stat.S_IMODE(st.st_mode), stat.S_IMODE(st.st_mode) | bit, user.pw_name, home,
            )


def forget_runtime_dirs_of_removed_stores(root: Path) -> list[Path]:
    """Remove the runtime directories (socket, locks) that stores of deleted state directories
    left under the cluster root: only directories drdrill marked as an embedded evidence store's,
    whose recorded data directory no longer exists and whose socket directory holds no server's
    socket. Each state directory's store keeps one until reboot otherwise (a tmpfs)."""
    removed = []
    for path in root.glob("evidence-*"):
        tags = LocalCluster(path).tags() or {}
        data = tags.get("data")
        if "drdrill:evidence" not in tags or not data or Path(data).exists():
            continue
        if any((path / "sock").glob(".s.PGSQL.*")):  # a server may still run from a deleted directory
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    if removed:
        log.info("removed %d runtime directories of evidence stores whose state directory is gone", len(removed))
    return removed


_noted_old: set[Path] = set()


def _note_old_layout(cluster) -> None:
    """Say once (per process) where a store of the old layout is. It is neither migrated nor deleted:
    its runs can be imported from their evidence files."""
    old = cluster.path.parent / f"evidence-{os.getuid()}"
    if old in _noted_old or not old.is_dir():
        return
    _noted_old.add(old)
    previous = LocalCluster(old)
    if not previous.data.exists():  # as a non-root user, the old layout kept its data in the state directory
        previous.data = Path(default_state_dir()).expanduser() / "evidence-pgdata"
    data = previous.data
    running = f"; its server still runs (stop it with `pg_ctl stop -D {data}`)" if previous.running() else ""
    log.warning(
        "an evidence store left by an older drdrill is in %s (data: %s)%s. It is no longer used and was "
        "left as it is; the store of this state directory is %s. To carry its runs over, import their "
        "evidence files: `drdrill evidence import %s`",
        old, data, running, cluster.data, Path(default_state_dir()).expanduser() / "runs",
    )


# ------------------------------------------------------------------ who stops the server

_guard = threading.Lock()
_depth = 0  # embedded_server() blocks open in this process
_held: dict[Path, tuple] = {}  # socket directory -> (cluster, users.lock held shared)


@contextmanager
def embedded_server() -> Iterator[None]:
    """The span of a drdrill command (or of a worker's life) for the embedded evidence store.

    An embedded server started inside the block (on the store's first use) is stopped when the
    block ends, so a command leaves no PostgreSQL behind. Every drdrill process that uses a store
    holds a shared lock on it while in the block; if another one still does when the block ends, the
    server is left to it, and the last one out stops it. A server that was already running without
    having been started this way (by hand, or by code outside any block) is left alone. Nestable;
    nothing to do with DRDRILL_EVIDENCE_DSN."""
    global _depth
    with _guard:
        _depth += 1
    try:
        yield
    finally:
        with _guard:
            _depth -= 1
            done = list(_held.values()) if _depth == 0 else []
            if _depth == 0:
                _held.clear()
        for cluster, users in done:
            try:
                _let_go(cluster, users)
            except Exception as exc:  # noqa: BLE001 - must not hide the command's own outcome
                log.warning("could not stop the evidence server of %s: %s", cluster.data, exc)


def _use(cluster) -> bool:
    """Inside embedded_server(): hold the store's shared `users.lock` until the block ends (waiting
    while another process is stopping its server). False outside any block."""
    with _guard:
        if _depth == 0:
            return False
        if cluster.path in _held:
            return True
    cluster.path.mkdir(mode=0o700, exist_ok=True)
    users = open(cluster.path / "users.lock", "a")
    fcntl.flock(users, fcntl.LOCK_SH)
    with _guard:
        if cluster.path in _held:  # another thread of this process got there first
            users.close()
        else:
            _held[cluster.path] = (cluster, users)
    return True


def _let_go(cluster, users) -> None:
    """Stop the store's server if a drdrill command started it and no other drdrill process uses it."""
    try:
        try:
            fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # still in use elsewhere: the last one out stops it
        marker = cluster.path / STOP_WHEN_UNUSED
        if marker.exists():
            _forget_stale_pid(cluster)
            cluster.stop(mode="fast")
            marker.unlink(missing_ok=True)
    finally:
        users.close()


def evidence_dsn(state_dir: Optional[str | Path] = None) -> str:
    """DRDRILL_EVIDENCE_DSN, else the embedded store of `state_dir` (default: the state directory)."""
    return os.environ.get("DRDRILL_EVIDENCE_DSN") or embedded_dsn(state_dir)
