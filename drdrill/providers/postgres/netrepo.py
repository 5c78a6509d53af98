"""A repository reached over the network (pgBackRest on S3, barman-cloud on S3), fetched from
inside the restore sandbox, which reaches exactly one endpoint: the repository's.

The sandbox keeps its network namespace with only `lo`. The way out is a relay in two halves, the
pattern of the probe relay (netns.py):

- outside, a child of the worker (`netns relay`, as root, with a minimal environment) listens on a
  Unix socket in a fresh root-owned directory and connects each connection to the repository's
  endpoint HOST:PORT, resolved outside, and to nothing else;
- inside, forward.py (standard library, under the system's `python3 -I -S`, handed over by
  descriptor) listens on 127.0.0.1:PORT on the sandbox's own loopback, forwards each connection to
  that socket (bound into the sandbox, owned by the sandbox uid, 0600), and runs the backup tool.

TLS passes through untouched: the tool still speaks to the endpoint's own name (a private
/etc/hosts maps it, and `BUCKET.HOST` for virtual-hosted buckets, to 127.0.0.1), so SNI and
certificate checks see the real name. An endpoint port under 1024 (443) cannot be bound by the
sandbox's unprivileged uid, so the inside half listens on 40000+PORT and the tool is pointed there
(pgBackRest's `repo-storage-port`, barman's `--endpoint-url`). The outside half lives exactly as long
as one tool run (`with Tunnel(…)`), and dies with the worker too (PR_SET_PDEATHSIG).

    with Tunnel(Endpoint("s3.eu-west-1.amazonaws.com", 443), cluster_dir, identity) as tunnel, Inputs() as inputs:
        box = Sandbox(identity, rw=[data], ro=tunnel.ro, files=tunnel.files, env=env)
        box.popen(tunnel.wrap(argv, inputs), pass_fds=inputs.fds, …)
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit

import drdrill.providers.postgres.forward as forward
from drdrill.providers.postgres.netns import NetnsError, child_env, this_module, wait_for_file
from drdrill.localpg.sandbox import Identity, Inputs

# Where the sandbox finds the relay for an endpoint port it may not bind (under 1024).
HIGH_PORT_BASE = 40000
# Trust anchors a TLS client inside needs (public certificates only).
TLS_DIRS = ("/etc/ssl", "/etc/pki", "/etc/ca-certificates")


@dataclass(frozen=True)
class Endpoint:
    """The one place a sandboxed fetch may reach: `host` (a name or an address) and `port`;
    `aliases`: further names the tool uses for it (a virtual-hosted bucket's BUCKET.HOST)."""

    host: str
    port: int
    aliases: tuple[str, ...] = ()

    @property
    def inner_port(self) -> int:
        return self.port if self.port >= 1024 else HIGH_PORT_BASE + self.port

    @property
    def inner_host(self) -> str:
        """The name the tool inside connects to: the endpoint's own name (mapped to 127.0.0.1 by the
        private /etc/hosts), or 127.0.0.1 for an address (no other address exists inside)."""
        return "127.0.0.1" if self.is_address else self.host

    @property
    def is_address(self) -> bool:
        try:
            ipaddress.ip_address(self.host.strip("[]"))
            return True
        except ValueError:
            return False

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def endpoint_of_url(url: str) -> Optional[Endpoint]:
    """http(s)://HOST[:PORT][/…] -> Endpoint; None when it is not such a URL."""
    try:
        parts = urlsplit(url)
        port = parts.port or {"https": 443, "http": 80}.get(parts.scheme or "")
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or not port:
        return None
    return Endpoint(parts.hostname, int(port))


def inner_url(url: str, endpoint: Endpoint) -> str:
    """The endpoint URL as the tool inside uses it: the same name, the inside half's port."""
    if endpoint.inner_port == endpoint.port and endpoint.inner_host == endpoint.host:
        return url
    return urlsplit(url)._replace(netloc=f"{endpoint.inner_host}:{endpoint.inner_port}").geturl()


def _die_with_parent() -> None:  # runs in the relay child before exec
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Tunnel:
    """The relay of one sandboxed tool run to `endpoint` (see the module's docstring)."""

    def __init__(self, endpoint: Endpoint, where: Path, identity: Identity) -> None:
        self.endpoint, self.where, self.identity = endpoint, where, identity
        self.dir = where / f"netrepo-{secrets.token_hex(6)}"
        self.socket = self.dir / "relay.sock"
        self.proc: Optional[subprocess.Popen] = None

    def __enter__(self) -> "Tunnel":
        self.dir.mkdir(mode=0o711)
        ready = self.dir / "ready"
        argv = this_module("relay", "--listen", f"unix:{self.socket}", "--to", f"tcp:{self.endpoint.host}:{self.endpoint.port}", "--ready-file", str(ready))
        try:
            self.proc = subprocess.Popen(argv, env=child_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent)
            wait_for_file(ready, self.proc.pid, 30.0, f"the relay to {self.endpoint}")
            os.chown(self.socket, self.identity.uid, self.identity.gid, follow_symlinks=False)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop the outside half (the child this Tunnel started, by its Popen) and remove its directory."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)

    # ------------------------------------------------------------------ what the sandbox gets

    @property
    def ro(self) -> list[Path]:
        """Paths to bind read-only: the relay's directory and the system's trust anchors."""
        return [self.dir, *(Path(d) for d in TLS_DIRS if os.path.isdir(d))]

    @property
    def files(self) -> dict[str, str]:
        """A private /etc/hosts: the endpoint's names are 127.0.0.1, where the inside half listens."""
        names = [n for n in (self.endpoint.host, *self.endpoint.aliases) if not self.endpoint.is_address]
        lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost"] + [f"127.0.0.1 {n}" for n in names]
        return {"/etc/hosts": "\n".join(lines) + "\n"}

    def wrap(self, argv: list[str], inputs: Inputs) -> list[str]:
        """`argv` run under the inside half (forward.py, by descriptor in `inputs`)."""
        python = shutil.which("python3", path="/usr/bin:/bin")
        if python is None:
            raise NetnsError("/usr/bin/python3 is missing: the sandbox's relay needs the system's python3")
        return [python, "-I", "-S", inputs.path(forward.__file__), "--listen", str(self.endpoint.inner_port), "--to", str(self.socket), "--", *argv]
