"""`isolation.postgres: network`: a drill's own Linux network namespace, and the one way out of it.

The restored cluster listens on TCP, but inside a network namespace the drill creates
(`ip netns add drdrill-<12 hex>`), whose only interface is its own loopback. A probe (`drdrill
probe`) runs the checks inside it, and an application started from the restored data
(`restore.after`) serves there too.

The one way out is a relay, not a route. Inside the namespace a relay listens on
127.0.0.1:7233 and forwards each connection to a Unix socket in the drill's cluster directory;
outside, the other half of the relay (app/probe_relay.py, a gRPC proxy) forwards to the Temporal
frontend only the probe's own calls on its own task queue, and refuses everything else. Unix sockets are filesystem objects, so this crosses the namespace boundary without
an interface, an address or a route: the namespace has none, and the kernel has no way to send a
packet out of it. A veth pair with a firewall rule would give the namespace an interface and a
route, leaving the isolation to rules that must stay right (IPv4 and IPv6, ordering, a flush).

Filesystem sockets cross the boundary by design, so the isolation proof (`prove`, run inside the
namespace) also tries production's Unix socket, as well as its TCP address and a public address.

Every process drdrill starts here carries its drill's tags in its environment (DRDRILL_TAG_*),
and the cluster's tag file names the namespace and the process ids: teardown and the orphan sweep
find both by tag, like every other drdrill resource.

    python -m drdrill.providers.postgres.netns relay --listen tcp:127.0.0.1:7233 --to unix:PATH
    python -m drdrill.providers.postgres.netns prove --production tcp:HOST:PORT --temporal 127.0.0.1:7233
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from drdrill.core.models import TAG_DRILL_ID, TAG_EXPIRES_AT
from drdrill.providers.postgres.proof import (  # noqa: F401 - the proof's checks, run inside (proof.py)
    OUTSIDE,
    _address,
    check_interfaces,
    check_no_route_out,
    check_production,
    check_temporal,
    prove,
)

if TYPE_CHECKING:
    from drdrill.localpg.sandbox import Sandbox

# The restored cluster's port inside the namespace: not 5432, so "production on 127.0.0.1:5432"
# (refused inside: that loopback is the namespace's own) is never confused with the restored copy.
NETNS_PORT = 55432
LOOPBACK = "127.0.0.1"
# Where the namespace sees the Temporal frontend: its own loopback, the relay's inner half.
RELAY_PORT = 7233
RELAY_SOCKET = "temporal.sock"
# The tag file's keys naming the namespace and the processes drdrill started for the drill.
TAG_NETNS = "drdrill:netns"
TAG_PROCESSES = "drdrill:processes"
# The tags every process started here carries in its environment.
ENV_DRILL_ID = "DRDRILL_TAG_DRILL_ID"
ENV_EXPIRES_AT = "DRDRILL_TAG_EXPIRES_AT"
ENV_CLUSTER = "DRDRILL_TAG_CLUSTER"
ENV_ROLE = "DRDRILL_TAG_ROLE"
# What the processes inherit from the worker: nothing that could hold a secret.
_INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "PYTHONPATH", "VIRTUAL_ENV", "DRDRILL_LOG_FORMAT", "DRDRILL_LOG_LEVEL")

NETNS_DIR = Path("/run/netns")


class NetnsError(Exception):
    pass


def netns_name(drill_id: str) -> str:
    """The drill's namespace: `drdrill-<12 hex>` (derived, so a retried step finds the same one)."""
    return "drdrill-" + hashlib.sha256(drill_id.encode()).hexdigest()[:12]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


# ------------------------------------------------------------------ namespaces


def namespace_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def create_namespace(name: str) -> None:
    """Create (idempotently) the namespace and bring its loopback up; it gets nothing else."""
    if not namespace_exists(name):
        proc = _ip("netns", "add", name, check=False)
        if proc.returncode != 0 and not namespace_exists(name):
            raise NetnsError(f"ip netns add {name}: {proc.stderr.strip()}")
    _ip("-n", name, "link", "set", "lo", "up")


def namespace_inode(name: str) -> Optional[int]:
    try:
        return os.stat(NETNS_DIR / name).st_ino
    except OSError:
        return None


def process_namespace_inode(pid: int) -> Optional[int]:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def inside(pid: int, name: str) -> bool:
    """True when process `pid` runs in namespace `name`."""
    ns = namespace_inode(name)
    return ns is not None and process_namespace_inode(pid) == ns


def namespace_pids(name: str) -> list[int]:
    """Every process inside the namespace (`ip netns pids`)."""
    proc = _ip("netns", "pids", name, check=False)
    return sorted(int(p) for p in proc.stdout.split() if p.isdigit())


def delete_namespace(name: str, grace: float = 10.0) -> bool:
    """Stop every process left inside and delete the namespace. False when it was already gone.

    Everything inside is the drill's: the namespace is, and nothing else can enter it. The
    top-level processes (a postmaster, not its children) get SIGTERM first."""
    if not namespace_exists(name):
        return False
    pids = namespace_pids(name)
    inside = set(pids)
    tops = [p for p in pids if _parent(p) not in inside]
    for pid in tops:
        _signal(pid, signal.SIGTERM)
    _wait_gone(pids, grace)
    for pid in namespace_pids(name):
        _signal(pid, signal.SIGKILL)
    _wait_gone(pids, grace)
    proc = _ip("netns", "del", name, check=False)
    if proc.returncode != 0 and namespace_exists(name):
        raise NetnsError(f"ip netns del {name}: {proc.stderr.strip()}")
    return True


# ------------------------------------------------------------------ processes


@dataclass(frozen=True)
class TaggedProcess:
    """A process drdrill started for a drill, read back from its environment."""

    pid: int
    role: str
    drill_id: str
    expires_at: str
    cluster: str

    @property
    def id(self) -> str:
        return f"{self.role}:{self.pid}"

    def tags(self) -> dict[str, str]:
        return {TAG_DRILL_ID: self.drill_id, TAG_EXPIRES_AT: self.expires_at}


# The processes this worker started, to reap them once stopped (no zombies left in /proc).
_children: dict[int, subprocess.Popen] = {}


def child_env(extra: Optional[dict[str, str]] = None) -> dict[str, str]:
    """A minimal environment: the worker's may hold production secrets (its DSNs, cloud keys),
    and nothing inside the isolation may have them."""
    env = {k: os.environ[k] for k in _INHERITED if k in os.environ}
    env.update(extra or {})
    return env


def spawn(
    role: str,
    argv: list[str],
    *,
    tags: dict[str, str],
    cluster: Path,
    log: Path,
    netns: Optional[str] = None,
    env: Optional[dict[str, str]] = None,
) -> int:
    """Start `argv` (inside `netns`, when given) in a session of its own, tagged in its environment,
    and record its pid in the cluster's tag file. Returns the pid."""
    marks = {
        ENV_DRILL_ID: tags[TAG_DRILL_ID],
        ENV_EXPIRES_AT: tags.get(TAG_EXPIRES_AT, ""),
        ENV_CLUSTER: str(cluster),
        ENV_ROLE: role,
    }
    command = (["ip", "netns", "exec", netns] if netns else []) + argv
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=child_env({**(env or {}), **marks}),
            cwd=str(cluster),
            start_new_session=True,
        )
    _children[proc.pid] = proc
    record_process(cluster, role, proc.pid)
    return proc.pid


def record_process(cluster: Path, role: str, pid: int) -> None:
    """Name the process in the cluster's tag file ("role=pid,…"), under a lock: targets restore in parallel."""
    marker = cluster / "drdrill.json"
    with open(cluster / ".drdrill.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        tags = json.loads(marker.read_text())
        known = dict(p.split("=", 1) for p in tags.get(TAG_PROCESSES, "").split(",") if "=" in p)
        known[role] = str(pid)
        tags[TAG_PROCESSES] = ",".join(f"{r}={p}" for r, p in sorted(known.items()))
        tmp = cluster / ".drdrill.json.tmp"
        tmp.write_text(json.dumps(tags, sort_keys=True))
        os.replace(tmp, marker)


def _environ(pid: int) -> Optional[dict[str, str]]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def tagged_process(pid: int) -> Optional[TaggedProcess]:
    """The process's drdrill tags; None when it is gone, a zombie, or not started by drdrill."""
    if not alive(pid):
        return None
    env = _environ(pid) or {}
    if not env.get(ENV_DRILL_ID):
        return None
    return TaggedProcess(pid, env.get(ENV_ROLE, "?"), env[ENV_DRILL_ID], env.get(ENV_EXPIRES_AT, ""), env.get(ENV_CLUSTER, ""))


def tagged_processes(root: Path, drill_id: Optional[str] = None) -> list[TaggedProcess]:
    """Processes drdrill started for clusters under `root` (for `drill_id` only, when given)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        proc = tagged_process(int(entry.name))
        if proc is None or (drill_id is not None and proc.drill_id != drill_id):
            continue
        if Path(proc.cluster).parent.resolve() == root.resolve():
            found.append(proc)
    return sorted(found, key=lambda p: p.pid)


def running_role(cluster: Path, drill_id: str, role: str) -> Optional[TaggedProcess]:
    """The running process of `role` for this drill and cluster, if any (starting is idempotent)."""
    for proc in tagged_processes(cluster.parent, drill_id):
        if proc.role == role and proc.cluster == str(cluster):
            return proc
    return None


def alive(pid: int) -> bool:
    """Running: it exists and is not a zombie (reaped here when it is this worker's child)."""
    _reap(pid)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def exited(pid: int) -> Optional[int]:
    """The exit status of a child this worker started, once it has ended (None: running or unknown)."""
    child = _children.get(pid)
    return child.poll() if child is not None else None


def stop_process(pid: int, grace: float = 10.0) -> bool:
    """SIGTERM the process's session, then SIGKILL what is left after `grace`. False if already gone."""
    if not alive(pid):
        return False
    group = _pgid(pid) == pid
    kill = (lambda sig: _signal_group(pid, sig)) if group else (lambda sig: _signal(pid, sig))
    kill(signal.SIGTERM)
    if not _wait_gone([pid], grace):
        kill(signal.SIGKILL)
        _wait_gone([pid], grace)
    return True


def _reap(pid: int) -> None:
    """Reap `pid` if it is a process this module started and it has ended. Only through its Popen:
    waiting on any other child would steal its exit status from the code that started it."""
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        _children.pop(pid, None)


def _wait_gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)  # waiting for processes of other sessions to exit: there is nothing to wait on
    return True


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def _pgid(pid: int) -> Optional[int]:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _parent(pid: int) -> Optional[int]:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[-1].split()[1])


def wait_for_file(path: Path, proc_pid: int, timeout: float, what: str) -> None:
    """Wait until `path` exists (a process's "I am listening" mark), or fail if the process died."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if not alive(proc_pid):
            raise NetnsError(f"{what} exited before it was ready")
        if time.monotonic() > deadline:
            raise NetnsError(f"{what} was not ready after {timeout:.0f}s")
        time.sleep(0.05)  # a process we started, coming up: nothing to wait on but its mark


# ------------------------------------------------------------------ the relay


async def _open(to: tuple[str, str, int]):
    kind, where, port = to
    if kind == "unix":
        return await asyncio.open_unix_connection(where)
    return await asyncio.open_connection(where, port)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


async def relay(listen: str, to: str, ready_file: Optional[str] = None) -> None:
    """Forward every connection to `listen` to `to`, byte for byte, until SIGTERM."""
    destination = _address(to)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await _open(destination)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        for w in (writer, up_writer):
            w.close()

    kind, where, port = _address(listen)
    if kind == "unix":
        Path(where).unlink(missing_ok=True)
        server = await asyncio.start_unix_server(handle, where)
        os.chmod(where, 0o600)
    else:
        server = await asyncio.start_server(handle, where, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if ready_file:
        Path(ready_file).write_text(f"{listen} -> {to}\n")
    async with server:
        await stop.wait()



def run_proof(netns: str, production: list[str], temporal: Optional[str], timeout: float = 60.0) -> list[dict]:
    """Run `prove` inside `netns` (a process of its own there) and return its checks."""
    argv = this_module("prove")
    for endpoint in production:
        argv += ["--production", endpoint]
    if temporal:
        argv += ["--temporal", temporal]
    proc = subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True, text=True, timeout=timeout, env=child_env())
    if proc.returncode != 0:
        raise NetnsError(f"the proof inside {netns} failed: {(proc.stderr.strip().splitlines() or ['no output'])[-1]}")
    return json.loads(proc.stdout)


def run_sandboxed_proof(box: "Sandbox", production: list[str], temporal: Optional[str], *, evidence: list[str],
                        evidence_root: Optional[str], hidden: list[str], temporal_outside: list[str], timeout: float = 60.0) -> list[dict]:
    """Run the proof (proof.py, standard library only) inside the drill's sandbox `box`, under the
    system's python3: the sandbox sees the script through a descriptor, not drdrill's checkout."""
    import drdrill.providers.postgres.proof as proof
    from drdrill.localpg.sandbox import Inputs, SandboxError, hint

    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    args = ["--sandboxed"] + [a for e in production for a in ("--production", e)] + [a for e in evidence for a in ("--evidence", e)]
    args += [a for h in hidden for a in ("--hidden", h)] + [a for t in temporal_outside for a in ("--temporal-outside", t)]
    args += (["--evidence-root", evidence_root] if evidence_root else []) + (["--temporal", temporal] if temporal else [])
    with Inputs() as inputs:
        try:
            proc = box.run([python, "-I", "-S", inputs.path(proof.__file__), *args], pass_fds=inputs.fds, timeout=timeout)
        except (SandboxError, OSError, subprocess.TimeoutExpired) as exc:
            raise NetnsError(f"the proof could not run in the sandbox: {exc}") from exc
    if proc.returncode != 0:
        raise NetnsError(f"the proof inside the sandbox failed: {(proc.stderr.strip().splitlines() or ['no output'])[-1]}" + hint(proc.stderr))
    return json.loads(proc.stdout)


# ------------------------------------------------------------------ production's address


def production_endpoints(dsn: str) -> list[str]:
    """The places a DSN connects to, as 'tcp:HOST:PORT' or 'unix:PATH' (no user, no password)."""
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(dsn)
    hosts = str(params.get("hostaddr") or params.get("host") or "").split(",")
    ports = str(params.get("port") or "").split(",")
    out = []
    for i, host in enumerate(hosts):
        port = (ports[i] if i < len(ports) else ports[-1]) or "5432"
        if not host:
            # libpq's default: the Unix socket directory it was built with.
            out += [f"unix:{d}/.s.PGSQL.{port}" for d in ("/var/run/postgresql", "/tmp")]
        elif host.startswith("/"):
            out.append(f"unix:{host.rstrip('/')}/.s.PGSQL.{port}")
        else:
            out.append(f"tcp:{host}:{port}")
    return out


# ------------------------------------------------------------------ python -m


def this_module(*args: str) -> list[str]:
    """The command running this module's `main` with `args` (`-c` rather than `-m`: the package
    imports this module first, which `-m` warns about)."""
    code = "import sys; from drdrill.providers.postgres.netns import main; sys.exit(main(sys.argv[1:]))"
    return [sys.executable, "-c", code, *args]


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m drdrill.providers.postgres.netns")
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("relay", help="forward connections from --listen to --to until SIGTERM")
    r.add_argument("--listen", required=True)
    r.add_argument("--to", required=True)
    r.add_argument("--ready-file")
    p = sub.add_parser("prove", help="the isolation proof, run inside the namespace; prints JSON")
    p.add_argument("--production", action="append", default=[])
    p.add_argument("--temporal")
    args = parser.parse_args(argv)
    if args.command == "relay":
        asyncio.run(relay(args.listen, args.to, args.ready_file))
    else:
        print(json.dumps(prove(args.production, args.temporal)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
