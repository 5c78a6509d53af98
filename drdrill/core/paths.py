"""Where drdrill keeps its state: evidence files, backups, the embedded Temporal and evidence store; a file's sha256."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Mapping


def default_state_dir(env: Mapping[str, str] = os.environ) -> str:
    """DRDRILL_STATE_DIR, else $XDG_STATE_HOME/drdrill, else ~/.local/state/drdrill (an empty
    variable counts as unset). The CLI, the worker and the drill format (a drill's
    `${DRDRILL_STATE_DIR}` when the variable is unset) all use this one rule."""
    if env.get("DRDRILL_STATE_DIR"):
        return env["DRDRILL_STATE_DIR"]
    base = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "drdrill")


# A Unix socket's path fits in 108 bytes (sun_path). A state directory deeper than that still works:
# its sockets are reached through a descriptor of their directory that this process holds open.
SUN_PATH_MAX = 107
_held: dict[str, int] = {}      # directory -> O_PATH descriptor this process keeps open
_shortened: dict[str, str] = {}  # /proc/self/fd/N/name -> the socket's own path


def socket_path(path: str) -> str:
    """A path to the Unix socket `path` that fits sun_path: `path` itself when it does, else
    `/proc/self/fd/N/<name>` through a descriptor of its directory (valid in this process only; for
    bind and connect alike). `real_socket_path` gives the socket's own path back."""
    path = os.fspath(path)
    if len(os.fsencode(path)) <= SUN_PATH_MAX:
        return path
    directory, name = os.path.split(path)
    fd = _held.get(directory)
    try:
        if fd is not None and os.stat(directory).st_ino != os.fstat(fd).st_ino:
            raise FileNotFoundError  # the directory was made anew: hold the new one
    except OSError:
        os.close(fd)  # type: ignore[arg-type]
        del _held[directory]
        fd = None
    if fd is None:
        fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        _held[directory] = fd
    short = f"/proc/self/fd/{fd}/{name}"
    _shortened[short] = path
    return short


def reachable(target: str) -> str:
    """A gRPC/proxy target (`unix:PATH` or `host:port`) this process can reach: PATH shortened by
    `socket_path` when it is too long; anything else as it is."""
    return "unix:" + socket_path(target[5:]) if target.startswith("unix:") else target


def real_socket_path(path: str) -> str:
    """The socket's own path, for a path `socket_path` shortened (what another process can use)."""
    return _shortened.get(path, path)


def sha256_path(path: Path) -> tuple[str, int]:
    """sha256 and size of a file, or of a directory archive (its files in name order)."""
    h = hashlib.sha256()
    size = 0
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
                size += len(chunk)
    return h.hexdigest(), size
