"""Who is asking, and may they: the console's authentication, roles and CSRF check.

- Bound to loopback (127.0.0.1, ::1, localhost), the local user needs no login: a request from a
  socket of the server's own uid (or root's), which the kernel's socket table says (`peer_uid`), is
  theirs (ConsoleSettings.local_user, else the server's own user name), as an approver. Any other
  local account on the host is not the local user: it needs a token like a remote one (401 without).
- Bound elsewhere, a request carries an API token (`Authorization: Bearer TOKEN`, or the cookie the
  login form sets) from the tokens file, one `TOKEN USER ROLE` a line (role viewer or approver; the
  file must not be readable by others), compared in constant time; or it comes from a trusted
  reverse proxy (one of ConsoleSettings.proxy_addresses) carrying the user in its identity header.
  Anything else is refused with 401.
- viewer reads; approver also answers gates and pauses, unpauses and triggers schedules (403 otherwise).
- A POST must come from the console's own pages: its Origin (or Referer) is this host, unless it
  carries its token in the Authorization header (which a browser never adds to a forged request).
"""

from __future__ import annotations

import getpass
import ipaddress
import os
import sys
import hashlib
import hmac
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

LOOPBACK = {"127.0.0.1", "::1", "localhost"}
ROLES = ("viewer", "approver")
COOKIE = "drdrill_console_token"


class ConsoleConfigError(Exception):
    """The console's settings cannot be used as they are: the message names the file and the fix."""


@dataclass(frozen=True)
class Identity:
    user: str
    role: str  # viewer | approver
    how: str  # local | token | proxy

    @property
    def may_act(self) -> bool:
        return self.role == "approver"


def is_loopback(host: str) -> bool:
    return host in LOOPBACK or host.startswith("127.")


def _proc_address(host: str, port: int, v6_table: bool) -> str:
    """`host:port` as /proc/net/tcp{,6} print it: each 32-bit word of the address in host order, hex."""
    addr = ipaddress.ip_address(host)
    if v6_table and addr.version == 4:
        addr = ipaddress.IPv6Address("::ffff:" + host)  # a v4 client of a dual-stack socket
    raw = addr.packed
    words = [raw[i : i + 4] for i in range(0, len(raw), 4)]
    return "".join(int.from_bytes(w, sys.byteorder).to_bytes(4, "big").hex().upper() for w in words) + f":{port:04X}"


def peer_uid(client: tuple[str, int], server: tuple[str, int]) -> Optional[int]:
    """The uid owning the client end of a TCP connection on this host (loopback): the kernel's
    socket table, as `ss -tep` reads it. None when it is not there (not a local peer)."""
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            local, remote = _proc_address(*client, v6), _proc_address(*server, v6)
            rows = Path(table).read_text().splitlines()[1:]
        except (OSError, ValueError):
            continue
        for row in rows:
            f = row.split()
            if len(f) > 7 and f[1] == local and f[2] == remote:
                return int(f[7])
    return None


def is_local_user(client: Optional[tuple[str, int]], server: Optional[tuple[str, int]]) -> bool:
    """The request comes from the server's own account (or root) on this host."""
    if not client or not server:
        return False
    return peer_uid(client, server) in (os.geteuid(), 0)


def local_user(configured: Optional[str]) -> str:
    if configured:
        return configured
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001
        return "local"


class Tokens:
    """The tokens file, read again when it changes. Tokens are kept as their SHA-256 only."""

    def __init__(self, path: Optional[Path]):
        self.path = path
        self._stamp: Optional[tuple[float, int]] = None
        self._entries: list[tuple[bytes, str, str]] = []
        if path is not None:
            self._load()

    def _load(self) -> None:
        assert self.path is not None
        try:
            st = self.path.stat()
        except OSError as exc:
            raise ConsoleConfigError(f"{self.path}: the console's tokens file cannot be read ({exc.strerror}): create it, mode 0600") from None
        if st.st_mode & (stat.S_IRWXO | stat.S_IWGRP):
            raise ConsoleConfigError(
                f"{self.path}: the tokens file is readable or writable by others (mode {stat.S_IMODE(st.st_mode):o}): chmod 600 {self.path}"
            )
        entries = []
        for n, raw in enumerate(self.path.read_text().splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 3 or parts[2] not in ROLES or len(parts[0]) < 16:
                raise ConsoleConfigError(
                    f"{self.path}, line {n}: expected `TOKEN USER ROLE` (a token of 16 characters or more, role viewer or approver)"
                )
            entries.append((hashlib.sha256(parts[0].encode()).digest(), parts[1], parts[2]))
        self._entries = entries
        self._stamp = (st.st_mtime, st.st_size)

    def find(self, token: str) -> Optional[tuple[str, str]]:
        """(user, role) of a token, comparing with every entry (constant time: no early exit)."""
        if self.path is None or not token:
            return None
        try:
            st = self.path.stat()
            if (st.st_mtime, st.st_size) != self._stamp:
                self._load()
        except (OSError, ConsoleConfigError):
            return None  # a file gone or made readable by others accepts nobody until fixed
        digest = hashlib.sha256(token.encode()).digest()
        found = None
        for stored, user, role in self._entries:
            if hmac.compare_digest(stored, digest):
                found = (user, role)
        return found


def token_of(headers, cookies) -> tuple[str, bool]:
    """The token a request carries, and whether it came in the Authorization header."""
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip(), True
    return cookies.get(COOKIE, ""), False


def same_origin(headers, scheme: str) -> bool:
    """The request comes from a page of this console: Origin (or else Referer) names this host."""
    host = headers.get("host", "")
    origin = headers.get("origin") or headers.get("referer") or ""
    if not origin or not host:
        return False
    parts = urlsplit(origin)
    return parts.netloc == host and parts.scheme in ("http", "https")
