"""The restore sandbox: every process a backup's restore starts runs inside bubblewrap (`bwrap`).

A backup is untrusted input. psql, pg_restore, pgbackrest, WAL replay, the restored server and
`restore.after` applications all run here, so that what a hostile backup makes them do (a `\\!`
line, `COPY … TO PROGRAM`, a planted server-side function) is contained:

- its own unprivileged uid/gid per drill (`Identity`): a fixed high range, never the system
  `postgres` user's, `nobody`'s or the evidence store's; recorded in root-owned metadata;
- an empty environment plus only the variables the caller names (passed as bwrap's own
  environment, never on its command line);
- a network namespace with only `lo` (bwrap `--unshare-net`), or, with `netns`, the drill's
  namespace from netns.py (`ip netns exec NAME` around bwrap, which then shares it);
- a mount namespace holding the system binaries read-only, the paths the caller binds, private
  tmpfs `/tmp`, `/run` (so `/run/postgresql` and `/var/run/postgresql`), a synthetic
  `/etc/passwd` naming the sandbox uid, and nothing else: no state directory, no evidence-store
  socket, no production socket directory;
- a PID namespace (`--unshare-pid`, `--die-with-parent`): when the sandbox's outer process or its
  init dies, the kernel kills everything the restore started;
- no capabilities (`setpriv --inh-caps=-all --bounding-set=-all`, and bwrap drops its own).

Long-lived servers (`start`) are recorded (pid + /proc starttime of bwrap's outer process) in a
root-owned file chosen by the caller; `stop` verifies that record against /proc, holds a pidfd
and signals through it: never a pid read from a file the sandboxed uid can write.

    sandbox = Sandbox(identity_for(meta_dir), rw=[data, sock], env={"LC_ALL": "C"})
    sandbox.run([initdb, "-D", str(data), ...])
    sandbox.start([postgres, "-D", str(data)], record=meta_dir / "server.sandbox.json", log=log)
    sandbox.stop(meta_dir / "server.sandbox.json", signal.SIGINT)
"""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd
import select
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

# Sandbox uids and gids: a fixed high range no distribution hands out (useradd stops at 60000; the
# systemd dynamic range is 61184-65519; container ranges usually start at 100000 and span 65536).
UID_BASE = 1_600_000_000
UID_SPAN = 100_000_000
IDENTITY_FILE = "sandbox.json"
USER_NAME = "drdrill-restore"
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
# Read-only from the host's /etc: what the dynamic linker, time zones and name lookups need.
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "timezone", "alternatives", "nsswitch.conf", "hosts")


class SandboxError(Exception):
    pass


def bwrap() -> str:
    """bubblewrap's path; a clear error naming the fix when it is missing."""
    found = shutil.which("bwrap") or ("/usr/bin/bwrap" if os.path.exists("/usr/bin/bwrap") else None)
    if not found:
        raise SandboxError("bubblewrap (bwrap) is not installed: every restore runs in its sandbox; install it (apt-get install bubblewrap)")
    return found


def available() -> bool:
    try:
        bwrap()
        return True
    except SandboxError:
        return False


def hint(stderr: str) -> str:
    """The fix for bubblewrap's "Can't find source path …: Permission denied": the sandbox uid
    walks to every path it binds, so none may lie under a directory only root can enter."""
    if "Can't find source path" in (stderr or "") and "Permission denied" in stderr:
        return (" (the sandbox's unprivileged uid must be able to reach that path: keep the cluster root "
                "(DRDRILL_CLUSTER_ROOT) and the PostgreSQL install out of directories only root may enter, such as /root)")
    return ""


# ------------------------------------------------------------------ identity


@dataclass(frozen=True)
class Identity:
    uid: int
    gid: int


def _forbidden_ids() -> set[int]:
    """uids that must never be a sandbox's: the system PostgreSQL user's, nobody's, root's, and
    DRDRILL_PG_RUN_AS / DRDRILL_EVIDENCE_UID when set."""
    ids = {0, 65534}
    for name in ("postgres", "nobody", os.environ.get("DRDRILL_PG_RUN_AS") or ""):
        try:
            ids.add(pwd.getpwnam(name).pw_uid)
        except KeyError:
            pass
    if (os.environ.get("DRDRILL_EVIDENCE_UID") or "").isdigit():
        ids.add(int(os.environ["DRDRILL_EVIDENCE_UID"]))
    return ids


def _taken(uid: int) -> bool:
    if uid in _forbidden_ids():
        return True
    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(uid)
            return True
        except KeyError:
            pass
    return False


def identity_for(meta_dir: Path) -> Identity:
    """The sandbox identity of the drill whose root-owned metadata directory is `meta_dir`:
    read from meta_dir/sandbox.json, else allocated (derived from the directory's path, moved on
    past ids in use) and recorded there. Not root: the worker's own uid (bwrap is unprivileged)."""
    if os.geteuid() != 0:
        return Identity(os.getuid(), os.getgid())
    record = meta_dir / IDENTITY_FILE
    known = read_identity(meta_dir)
    if known is not None:
        return known
    check_root_owned(meta_dir)
    start = int(hashlib.sha256(str(meta_dir.resolve()).encode()).hexdigest(), 16) % UID_SPAN
    uid = next(UID_BASE + (start + i) % UID_SPAN for i in range(UID_SPAN) if not _taken(UID_BASE + (start + i) % UID_SPAN))
    _write_root_only(record, {"uid": uid, "gid": uid})
    return Identity(uid, uid)


def kill_everything_of(ident: Identity) -> list[int]:
    """SIGKILL every process running as a drill's sandbox uid: the backstop of teardown, for a
    sandbox that outlived its outer bwrap (a kill that lands before `--die-with-parent` is armed).
    Only a uid of the sandbox range, never this process's own: no other program runs as one."""
    if not (UID_BASE <= ident.uid < UID_BASE + UID_SPAN) or ident.uid == os.geteuid():
        return []
    killed = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            uid_line = next(line for line in Path(f"/proc/{entry}/status").read_text().splitlines() if line.startswith("Uid:"))
            if int(uid_line.split()[1]) == ident.uid:
                os.kill(int(entry), signal.SIGKILL)
                killed.append(int(entry))
        except (OSError, StopIteration, ValueError):
            continue  # gone meanwhile
    return killed


def read_identity(meta_dir: Path) -> Optional[Identity]:
    """The identity recorded in `meta_dir` (None: not a sandboxed directory, or not root-owned)."""
    record = meta_dir / IDENTITY_FILE
    try:
        st = os.lstat(record)
        data = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    if st.st_uid != os.geteuid() or not isinstance(data, dict):
        return None  # written by someone else: never trusted
    try:
        return Identity(int(data["uid"]), int(data["gid"]))
    except (KeyError, TypeError, ValueError):
        return None


def check_root_owned(path: Path) -> None:
    """`path` is a real directory owned by us (root) and writable by no one else."""
    st = os.lstat(path)
    if not os.path.isdir(path) or os.path.islink(path) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise SandboxError(f"{path} must be a directory owned by uid {os.geteuid()} and writable by no one else (drdrill keeps its metadata there)")


def _write_root_only(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, sort_keys=True)
    os.replace(tmp, path)


def chown_tree(path: Path, ident: Identity) -> None:
    """Hand a directory tree to the sandbox uid without following a symlink (lchown)."""
    for root, dirs, files in os.walk(path):
        os.lchown(root, ident.uid, ident.gid)
        for name in dirs + files:
            os.lchown(os.path.join(root, name), ident.uid, ident.gid)


# ------------------------------------------------------------------ the sandbox


@dataclass
class Sandbox:
    """One way of running processes: as `identity`, seeing `rw` read-write and `ro` read-only
    (each at its own path), with exactly `env`, on `lo` only or inside the namespace `netns`."""

    identity: Identity
    rw: Sequence[Any] = ()
    ro: Sequence[Any] = ()
    env: dict[str, str] = field(default_factory=dict)
    netns: Optional[str] = None
    cwd: str = "/"
    # Extra files (path -> text, e.g. a private /etc/hosts), handed over through pipes, and open
    # directory descriptors bound read-only (fd -> path: what the sandbox uid could not walk to).
    files: dict[str, str] = field(default_factory=dict)
    ro_fds: dict[int, str] = field(default_factory=dict)

    def argv(self, argv: Sequence[str]) -> list[str]:
        """The full command line: [ip netns exec NAME] setpriv … bwrap … -- argv."""
        prefix: list[str] = []
        if self.netns:
            prefix += [shutil.which("ip") or "/usr/sbin/ip", "netns", "exec", self.netns]
        if os.geteuid() == 0:
            prefix += [
                shutil.which("setpriv") or "/usr/bin/setpriv", f"--reuid={self.identity.uid}", f"--regid={self.identity.gid}",
                "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--",
            ]
        return prefix + [bwrap(), *self._options(), "--", *argv]

    def _options(self) -> list[str]:
        opts = ["--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--hostname", "drdrill-sandbox"]
        if self.netns:
            opts.append("--share-net")  # the drill's namespace, entered by `ip netns exec`
        opts += ["--ro-bind", "/usr", "/usr"]
        for top in ("bin", "lib", "lib32", "lib64", "libx32", "sbin"):
            host = Path("/") / top
            if host.is_symlink():
                opts += ["--symlink", os.readlink(host), str(host)]
            elif host.is_dir():
                opts += ["--ro-bind", str(host), str(host)]
        for name in ETC_FILES:
            if os.path.exists(f"/etc/{name}") and f"/etc/{name}" not in self.files:
                opts += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
        opts += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/run", "--dir", "/run/postgresql",
                 "--dir", "/var", "--symlink", "../run", "/var/run"]
        for path in self.ro:
            opts += ["--ro-bind", str(path), str(path)]
        for path in self.rw:
            opts += ["--bind", str(path), str(path)]
        for fd, path in self.ro_fds.items():
            opts += ["--ro-bind-fd", str(fd), path]
        opts += ["--chdir", self.cwd]
        return opts

    def _environment(self) -> dict[str, str]:
        env = {"PATH": DEFAULT_PATH, "LC_ALL": "C", "USER": USER_NAME, "HOME": "/tmp"}
        env.update(self.env)
        return env

    def _files(self) -> tuple[list[str], list[int]]:
        """/etc/passwd and /etc/group naming the sandbox's uid (initdb and libpq look it up),
        handed to bwrap through pipes (`--ro-bind-data FD`): no file on disk."""
        u, g = self.identity.uid, self.identity.gid
        files = {
            "/etc/passwd": f"root:x:0:0:root:/nonexistent:/usr/sbin/nologin\n{USER_NAME}:x:{u}:{g}:drdrill restore:/tmp:/usr/sbin/nologin\n",
            "/etc/group": f"root:x:0:\n{USER_NAME}:x:{g}:\n",
        }
        opts, fds = [], []
        files.update(self.files)
        for dest, text in files.items():
            r, w = os.pipe()
            os.write(w, text.encode())
            os.close(w)
            fds.append(r)
            opts += ["--ro-bind-data", str(r), dest]
        return opts, fds

    def _popen(self, argv: Sequence[str], pass_fds: Sequence[int] = (), **kwargs: Any) -> subprocess.Popen:
        full = self.argv(argv)
        extra, fds = self._files()
        cut = full.index("--", full.index(bwrap()))
        full = full[:cut] + extra + full[cut:]
        try:
            return subprocess.Popen(full, env=self._environment(), pass_fds=[*fds, *self.ro_fds, *pass_fds], close_fds=True, **kwargs)
        finally:
            for fd in fds:
                os.close(fd)

    def popen(self, argv: Sequence[str], *, pass_fds: Sequence[int] = (), **kwargs: Any) -> subprocess.Popen:
        """Start `argv` in the sandbox (subprocess.Popen's keywords, except env); `pass_fds`: open
        descriptors it inherits (Inputs)."""
        return self._popen(argv, pass_fds, **kwargs)

    def run(self, argv: Sequence[str], *, input: Optional[bytes | str] = None, timeout: Optional[float] = None,
            text: bool = True, pass_fds: Sequence[int] = ()) -> subprocess.CompletedProcess:
        """Run `argv` to its end in the sandbox; its output captured (like subprocess.run)."""
        proc = self._popen(argv, pass_fds, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=text)
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def start(self, argv: Sequence[str], *, record: Path, log: Path) -> int:
        """Start a long-lived `argv` (a server in the foreground) in the sandbox, its output
        appended to `log`; record its sandbox in `record` (root-owned). Returns bwrap's pid."""
        check_root_owned(record.parent)
        with open(log, "ab") as out:
            proc = self._popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        _children[proc.pid] = proc
        _write_root_only(record, {"pid": proc.pid, "starttime": starttime(proc.pid), "uid": self.identity.uid, "argv": list(argv)})
        return proc.pid


class Inputs:
    """Files and directories a sandboxed tool only reads (a dump, globals.sql, a scratch copy),
    opened here by the worker and inherited as open descriptors: the tool is given `/dev/fd/N`,
    so the sandbox needs no path to them (a backup directory may be root's 0700) and sees nothing
    beside them. One the sandbox uid may not read (a file not readable by others, a pg_dump
    directory archive, which pg_dump makes 0700) is first copied into `scratch` (a directory of the
    drill's, removed on close) and handed over as that copy: the backup itself is never changed.

        with Inputs(scratch=cluster.path, identity=box.identity) as inputs:
            box.run([pg_restore, "-l", inputs.path(archive)], pass_fds=inputs.fds)
    """

    def __init__(self, scratch: Optional[Path] = None, identity: Optional[Identity] = None) -> None:
        self.fds: list[int] = []
        self.scratch, self.identity = scratch, identity
        self.copies: list[Path] = []

    def path(self, path: Path | str) -> str:
        path = Path(path)
        if self.scratch is not None and self.identity is not None and not _readable_by_others(path):
            copy = self.scratch / f"input-{len(self.copies)}-{os.getpid()}-{path.name}"
            self.copies.append(copy)
            if path.is_dir():
                shutil.copytree(path, copy, symlinks=True)
            else:
                shutil.copyfile(path, copy, follow_symlinks=True)
            chown_tree(copy, self.identity) if copy.is_dir() else os.lchown(copy, self.identity.uid, self.identity.gid)
            path = copy
        fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
        self.fds.append(fd)
        return f"/dev/fd/{fd}"

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []
        for copy in self.copies:
            shutil.rmtree(copy, ignore_errors=True) if copy.is_dir() and not copy.is_symlink() else copy.unlink(missing_ok=True)
        self.copies = []

    def __enter__(self) -> "Inputs":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _readable_by_others(path: Path) -> bool:
    """Every file readable, every directory readable and searchable, by any uid (the mode's
    "others" bits): what a sandbox uid can open through a descriptor."""
    def ok(p: str, is_dir: bool) -> bool:
        mode = os.stat(p).st_mode
        return bool(mode & 0o004) and (not is_dir or bool(mode & 0o001))

    if not path.is_dir():
        return ok(str(path), False)
    for root, dirs, files in os.walk(path):
        if not ok(root, True) or not all(ok(os.path.join(root, f), False) for f in files):
            return False
    return True


# ------------------------------------------------------------------ recorded sandboxes

# The sandboxes this worker started, to reap them once they end (no zombies left in /proc).
_children: dict[int, subprocess.Popen] = {}


def starttime(pid: int) -> Optional[int]:
    """Field 22 of /proc/PID/stat: when the process started (clock ticks since boot)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return int(fields[19]) if fields[0] not in ("Z", "X") else None


def _recorded(record: Path) -> Optional[tuple[int, int]]:
    """(pid, starttime) of a record this uid wrote; None otherwise."""
    try:
        st = os.lstat(record)
        data = json.loads(record.read_text())
        if st.st_uid != os.geteuid():
            return None
        return int(data["pid"]), int(data["starttime"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _reap(pid: int) -> None:
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        _children.pop(pid, None)


def recorded_pid(record: Path) -> Optional[int]:
    """The pid of the recorded sandbox's outer process (None: no record of ours)."""
    found = _recorded(record)
    return found[0] if found else None


def alive(record: Path) -> bool:
    """The recorded sandbox still runs (the same process: pid and start time agree)."""
    found = _recorded(record)
    if found is None:
        return False
    _reap(found[0])
    return starttime(found[0]) == found[1]


def _open_verified(pid: int, started: int) -> Optional[int]:
    """A pidfd for `pid`, only if it is still the process that started at `started`."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return None
    if starttime(pid) != started:  # checked after opening: the pidfd now pins this very process
        os.close(fd)
        return None
    return fd


def _children_of(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def stop(record: Path, sig: int = signal.SIGTERM, grace: float = 30.0) -> bool:
    """Stop the recorded sandbox: `sig` to its main process (the child of bwrap's init), then,
    after `grace`, SIGKILL to its init and outer process; the PID namespace ends with its init, and
    with it everything the restore started. False when it was not running."""
    found = _recorded(record)
    if found is None:
        return False
    pid, started = found
    _reap(pid)
    fd = _open_verified(pid, started)
    if fd is None:
        record.unlink(missing_ok=True)
        return False
    try:
        inits = _children_of(pid)
        mains = [c for i in inits for c in _children_of(i)]
        for main in mains:
            _signal_verified(main, sig)
        if not _wait_fd(fd, grace, pid):
            for init in inits:
                _signal_verified(init, signal.SIGKILL)
            signal.pidfd_send_signal(fd, signal.SIGKILL)
            _wait_fd(fd, 10.0, pid)
    except ProcessLookupError:
        pass
    finally:
        os.close(fd)
    record.unlink(missing_ok=True)
    return True


def _signal_verified(pid: int, sig: int) -> None:
    started = starttime(pid)
    fd = _open_verified(pid, started) if started is not None else None
    if fd is None:
        return
    try:
        signal.pidfd_send_signal(fd, sig)
    except ProcessLookupError:
        pass
    finally:
        os.close(fd)


def _wait_fd(fd: int, timeout: float, pid: int) -> bool:
    """Wait until the process behind the pidfd has exited (it becomes readable); reap it if ours."""
    deadline = time.monotonic() + timeout
    while True:
        child = _children.get(pid)
        if child is not None:
            try:
                child.wait(timeout=max(0.0, deadline - time.monotonic()))
                _children.pop(pid, None)
                return True
            except subprocess.TimeoutExpired:
                return False
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if ready:
            return True
        if time.monotonic() >= deadline:
            return False


def exit_status(pid: int) -> Optional[int]:
    """The exit status of a sandbox this worker started, once it has ended (None: running or unknown)."""
    child = _children.get(pid)
    return child.poll() if child is not None else None
