"""File primitives that never follow a symbolic link, for root working in directories a backup filled.

A laid-down backup is untrusted input: its files and links were written by whoever controlled the
backup. drdrill runs as root while it prepares such a directory, so every write, chown and chmod
here works on the entry itself, never on what a link points to:

- `links_in(top)` lists every symbolic link (and special file) under `top`, without following any;
- `refuse_links(top, area)` allows only `pg_wal` and `pg_tblspc/<oid>`, and those only when they
  point inside `area` (the drill's own restore area); anything else is a `LinkRefused`;
- `hand_over(top, uid, gid)` chowns and chmods a tree through directory file descriptors
  (`os.fwalk`, `follow_symlinks=False`), so a link swapped in meanwhile is not followed either;
- `write_file(path, text)` writes a fresh file under a new name (`O_CREAT|O_EXCL|O_NOFOLLOW`, in a
  directory opened with `O_NOFOLLOW`) and renames it over `path`: a link at `path` is replaced, its
  target untouched;
- `read_file(path)` reads a regular file without following a link at `path`;
- `private_dir(path)` creates (or checks) a directory owned by us, not a link, not writable by others.

Other modules (the sandbox) use these too; nothing here knows PostgreSQL beyond the two link names.
"""

from __future__ import annotations

import errno
import os
import stat
import uuid
from pathlib import Path
from typing import Optional

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class LinkRefused(Exception):
    """A backup holds links (or special files) drdrill will not follow or keep: `entries` names
    each one as 'relative/path -> target'."""

    def __init__(self, top: Path, entries: list[str]):
        self.top = top
        self.entries = entries
        shown = ", ".join(entries[:5]) + (f" (and {len(entries) - 5} more)" if len(entries) > 5 else "")
        super().__init__(f"{top} holds links or special files drdrill refuses to follow: {shown}")


def _open_dir(path: Path) -> int:
    """A descriptor of the directory `path`, refusing a link as its last component."""
    return os.open(path, _DIR_FLAGS)


def links_in(top: Path) -> list[tuple[str, str, Optional[str]]]:
    """(path relative to `top`, kind, link text) for every symbolic link and special file under
    `top`: kind 'link' (with the link's text) or 'fifo'/'socket'/'device'. Follows nothing."""
    found: list[tuple[str, str, Optional[str]]] = []
    for dirpath, dirnames, filenames, dirfd in os.fwalk(top, follow_symlinks=False):
        rel = os.path.relpath(dirpath, top)
        for name in dirnames + filenames:
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            where = name if rel == "." else os.path.join(rel, name)
            if stat.S_ISLNK(st.st_mode):
                found.append((where, "link", os.readlink(name, dir_fd=dirfd)))
            elif not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                kind = "fifo" if stat.S_ISFIFO(st.st_mode) else "socket" if stat.S_ISSOCK(st.st_mode) else "device"
                found.append((where, kind, None))
    return found


def _inside(path: str, area: Path) -> bool:
    real = os.path.realpath(path)
    base = os.path.realpath(area)
    return real == base or real.startswith(base.rstrip("/") + "/")


def refuse_links(top: Path, area: Optional[Path]) -> list[str]:
    """The links a data directory may keep: `pg_wal` and `pg_tblspc/<oid>`, pointing inside `area`.
    Returns them ('pg_wal -> …'); raises LinkRefused naming every other link or special file."""
    kept, refused = [], []
    for rel, kind, text in links_in(top):
        if kind != "link" or text is None:
            refused.append(f"{rel} ({kind})")
            continue
        allowed_name = rel == "pg_wal" or (os.path.dirname(rel) == "pg_tblspc" and os.path.basename(rel).isdigit())
        absolute = text if os.path.isabs(text) else os.path.join(top, os.path.dirname(rel), text)
        if allowed_name and area is not None and _inside(absolute, area) and os.path.isdir(absolute):
            kept.append(f"{rel} -> {text}")
        else:
            refused.append(f"{rel} -> {text}")
    if refused:
        raise LinkRefused(top, refused)
    return kept


def hand_over(top: Path, uid: Optional[int], gid: Optional[int], dir_mode: int = 0o700) -> None:
    """Every directory under `top` `dir_mode`, and (uid given) every entry owned by uid:gid, through
    directory descriptors: links are chowned themselves (lchown), never what they point to."""
    for _dirpath, dirnames, filenames, dirfd in os.fwalk(top, follow_symlinks=False):
        os.fchmod(dirfd, dir_mode)
        if uid is None:
            continue
        os.fchown(dirfd, uid, gid if gid is not None else -1)
        for name in dirnames + filenames:
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                continue  # chowned through its own descriptor when fwalk enters it
            os.chown(name, uid, gid if gid is not None else -1, dir_fd=dirfd, follow_symlinks=False)


def write_file(path: Path, text: str | bytes, mode: int = 0o600) -> None:
    """Write `path` as a fresh file: a temporary name created with O_EXCL|O_NOFOLLOW in the directory
    (opened without following a link), then renamed over `path`. A link at `path` is replaced."""
    data = text.encode() if isinstance(text, str) else text
    dirfd = _open_dir(path.parent)
    tmp = f".drdrill-{uuid.uuid4().hex[:12]}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dirfd)
        try:
            os.write(fd, data)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        os.replace(tmp, path.name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dirfd)
        except OSError:
            pass
        raise
    finally:
        os.close(dirfd)


def read_file(path: Path, limit: int = 1 << 20) -> Optional[bytes]:
    """The contents of the regular file `path` (at most `limit` bytes), None when there is none.
    A link at `path` is not followed (OSError ELOOP)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        chunks, size = [], 0
        while size < limit:
            chunk = os.read(fd, min(1 << 16, limit - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def remove_file(path: Path) -> None:
    """Unlink `path` (a file or a link, never what it points to); nothing when it is not there."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def move_out(path: Path, dest: Path) -> bool:
    """Rename the entry `path` (never following it) to `dest`; False when `path` is not there."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    os.replace(path, dest)
    return True


class UnsafeDirectory(Exception):
    pass


def private_dir(path: Path, mode: int = 0o700, fix: str = "") -> Path:
    """Create `path` (mode `mode`, parents as needed), or check the one there: a real directory (not a
    link), owned by this process's uid, not writable by group or others. Anything else is an
    UnsafeDirectory naming the directory, what is wrong and `fix`."""
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(path, mode)
        except FileExistsError:
            pass
    st = os.lstat(path)
    hint = f" {fix}" if fix else ""
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise UnsafeDirectory(f"{path} is not a directory but {'a symbolic link' if stat.S_ISLNK(st.st_mode) else 'a file'}: refused.{hint}")
    if st.st_uid != os.geteuid():
        try:
            import pwd

            owner = pwd.getpwuid(st.st_uid).pw_name
        except KeyError:
            owner = str(st.st_uid)
        raise UnsafeDirectory(f"{path} belongs to {owner}, not to the user drdrill runs as (uid {os.geteuid()}): refused.{hint}")
    if st.st_mode & 0o022:
        raise UnsafeDirectory(f"{path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}): refused.{hint}")
    return path


def touch(path: Path, mode: int = 0o600) -> None:
    """Create the empty file `path` if it is not there, never through a link (ELOOP when one is)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
    finally:
        os.close(fd)
