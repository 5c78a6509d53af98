"""pg_dump files where teams already keep them, recognised: what an artefact is.

The stores that list and read them (a glob, an S3 prefix, a presigned URL) are dumpstores.py.
`inspect` recognises what an artefact is from its first bytes: the
pg_dump format (custom, directory, tar, plain SQL), the compression around a plain dump (gzip,
zstd), and what the archive says about itself (when it was created, which server and pg_dump
wrote it). Every failure is a ProviderError naming the place, never the credentials: a presigned
URL is registered as a secret and only ever named by its variable.
"""

from __future__ import annotations

import hashlib
import re
import struct
import tarfile
import zlib
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Optional

import zstandard

from drdrill.core.dumpstart import MANIFEST_SUFFIX  # noqa: F401 (`drdrill dump`'s sidecar: rows and fingerprints in the dump's snapshot)
from drdrill.providers.base import ProviderError

HEADER_BYTES = 64 * 1024  # enough for every pg_dump header: custom's is ~200 bytes, plain's ~1 KiB
TAIL_BYTES = 4 * 1024  # pg_dump's closing comment sits in the last few hundred bytes
DUMP_COMPLETE = b"-- PostgreSQL database dump complete"
_ARCHIVE_FORMATS = {1: "custom", 3: "tar", 5: "directory"}  # pg_backup.h ArchiveFormat


# ---------------------------------------------------------------- what an artefact is


@dataclass
class Artefact:
    """One candidate recovery point: a file, a directory archive, an S3 object or a URL's object."""

    name: str  # the file or object name (no directory, no query string): the recovery point's id
    place: str  # where it is, for messages and evidence: a path, s3://bucket/key, or $VARIABLE
    size: Optional[int] = None
    modified: Optional[datetime] = None
    is_dir: bool = False
    key: str = ""  # S3 key
    etag: str = ""  # S3: the ETag seen when it was listed; every read asks for it (If-Match)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["modified"] = self.modified.isoformat() if self.modified else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Artefact":
        d = dict(d)
        d["modified"] = datetime.fromisoformat(d["modified"]) if d.get("modified") else None
        return cls(**d)


@dataclass
class Header:
    """What the first bytes of an artefact say: its format and what the archive records about itself."""

    format: Optional[str] = None  # custom | directory | tar | plain; None: not a pg_dump archive
    encoding: str = "none"  # none | gzip | zstd (around a plain dump)
    created: Optional[str] = None  # ISO time: "Archive created at" (custom/directory/tar) or "Started on" (plain -v)
    server_version: Optional[str] = None  # "Dumped from database version"
    pg_dump_version: Optional[str] = None
    database: Optional[str] = None
    archive_version: Optional[str] = None
    problem: str = ""  # why it is not a pg_dump archive (format None)

    @property
    def major(self) -> Optional[int]:
        m = re.match(r"(\d+)", self.server_version or "")
        return int(m.group(1)) if m else None

    def describe(self) -> str:
        fmt = {"custom": "custom (-Fc)", "directory": "directory (-Fd)", "tar": "tar (-Ft)", "plain": "plain SQL"}.get(self.format or "", "?")
        return fmt + (f", {self.encoding}-compressed" if self.encoding != "none" else "")


def _read_int(buf: bytes, pos: int, int_size: int) -> tuple[int, int]:
    """pg_dump's WriteInt: a sign byte, then `int_size` bytes, least significant first."""
    sign = buf[pos]
    value = int.from_bytes(buf[pos + 1 : pos + 1 + int_size], "little")
    return (-value if sign else value), pos + 1 + int_size


def _read_str(buf: bytes, pos: int, int_size: int) -> tuple[Optional[str], int]:
    length, pos = _read_int(buf, pos, int_size)
    if length < 0:
        return None, pos
    return buf[pos : pos + length].decode("utf-8", "replace"), pos + length


def _archive_header(buf: bytes) -> Header:
    """The header pg_dump writes at the start of a custom archive (and of a tar's or directory's
    toc.dat): pg_backup_archiver.c WriteHead. Read in Python, so an archive newer than every
    pg_restore on the worker still says which server wrote it."""
    try:
        vmaj, vmin, vrev, int_size, _off_size, fmt = struct.unpack_from("6B", buf, 5)
        pos = 11
        if (vmaj, vmin) >= (1, 15):
            pos += 1  # the compression algorithm, a byte
        else:
            _, pos = _read_int(buf, pos, int_size)  # the compression level
        tm = []
        for _ in range(7):  # sec, min, hour, mday, mon, year, isdst: the dumping machine's local time
            v, pos = _read_int(buf, pos, int_size)
            tm.append(v)
        database, pos = _read_str(buf, pos, int_size)
        server, pos = _read_str(buf, pos, int_size)
        pg_dump, pos = _read_str(buf, pos, int_size)
        # Read as pg_restore reads it: the time in this machine's zone.
        created = datetime(tm[5] + 1900, tm[4] + 1, tm[3], tm[2], tm[1], tm[0]).astimezone().astimezone(timezone.utc)
    except (struct.error, IndexError, ValueError, OverflowError):
        return Header(problem="its pg_dump header is cut short or damaged")
    return Header(
        format=_ARCHIVE_FORMATS.get(fmt),
        created=created.isoformat(),
        server_version=server,
        pg_dump_version=pg_dump,
        database=database,
        archive_version=f"{vmaj}.{vmin}-{vrev}",
        problem="" if fmt in _ARCHIVE_FORMATS else f"unknown pg_dump archive format {fmt}",
    )


_PLAIN_START = re.compile(rb"\A(?:\xef\xbb\xbf)?\s*--\s*\n-- PostgreSQL database dump\s*\n")
_PLAIN_FIELDS = {
    "server_version": re.compile(rb"^-- Dumped from database version (\S+)", re.M),
    "pg_dump_version": re.compile(rb"^-- Dumped by pg_dump version (\S+)", re.M),
    "started": re.compile(rb"^-- Started on (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(?: (\w+))?", re.M),
}


def _plain_header(text: bytes, encoding: str) -> Header:
    if not _PLAIN_START.match(text):
        if b"-- PostgreSQL database cluster dump" in text[:200]:
            return Header(problem="a pg_dumpall cluster dump, not one database's pg_dump")
        first = text[:40].split(b"\n")[0]
        return Header(problem=f"not a pg_dump archive: it starts with {first!r}" + (f" (after {encoding})" if encoding != "none" else ""))
    found = {k: rx.search(text) for k, rx in _PLAIN_FIELDS.items()}
    created = None
    if found["started"]:
        stamp = datetime.strptime(found["started"].group(1).decode(), "%Y-%m-%d %H:%M:%S")
        zone = (found["started"].group(2) or b"").decode()
        local = stamp.replace(tzinfo=timezone.utc) if zone in ("UTC", "GMT", "Z") else stamp.astimezone()
        created = local.astimezone(timezone.utc).isoformat()
    return Header(
        format="plain",
        encoding=encoding,
        created=created,
        server_version=found["server_version"].group(1).decode() if found["server_version"] else None,
        pg_dump_version=found["pg_dump_version"].group(1).decode() if found["pg_dump_version"] else None,
    )


def inspect(prefix: bytes, is_dir: bool = False) -> Header:
    """Recognise an artefact from its first bytes (a directory archive: its toc.dat's)."""
    if not prefix:
        return Header(problem="it is empty (0 bytes)")
    if prefix.startswith(b"PGDMP"):
        header = _archive_header(prefix)
        if is_dir and header.format:  # a directory's toc.dat may say tar (pg_dump writes it like one)
            header.format = "directory"
        return header
    if len(prefix) > 262 and prefix[257:262] == b"ustar":
        if prefix[:7] == b"toc.dat" and prefix[512:517] == b"PGDMP":
            header = _archive_header(prefix[512:])
            header.format = "tar" if header.format else None
            return header
        return Header(problem="a tar file that is not a pg_dump tar archive (no toc.dat first)")
    encoding = "gzip" if prefix.startswith(b"\x1f\x8b") else "zstd" if prefix.startswith(b"\x28\xb5\x2f\xfd") else "none"
    text = prefix
    if encoding != "none":
        decoder = Decoder(encoding)
        try:
            text = decoder.feed(prefix, limit=HEADER_BYTES)  # a sniff: never more than a header's worth
        except DecodeError as exc:
            return Header(problem=f"a {encoding} file that does not decompress: {exc}")
        if text.startswith(b"PGDMP"):
            return Header(problem=f"a custom archive inside {encoding}: pg_dump -Fc compresses by itself, store it as written")
    return _plain_header(text, encoding)


def tar_problem(path: Path) -> str:
    """Why a pg_dump tar archive on disk is incomplete ("" when it is not): every member's data must
    be in the file, and pg_dump's last member, restore.sql, must be there. A cut tar otherwise
    restores until the cut and fails on half a row, which says nothing about the file."""
    size = path.stat().st_size
    try:
        with tarfile.open(path, "r:") as tf:
            members = tf.getmembers()
    except tarfile.ReadError as exc:
        if "unexpected end of data" in str(exc):
            return "the file ends inside a tar member (it is cut short)"
        return f"its tar structure is broken ({exc})"
    except (tarfile.TarError, OSError) as exc:
        return f"its tar structure is broken ({exc})"
    short = [m.name for m in members if m.offset_data + m.size > size]
    if short:
        return f"the file ends inside its member {short[0]} (it is cut short)"
    if not members or members[-1].name != "restore.sql":
        return "pg_dump's last member, restore.sql, is missing (the file is cut short)"
    return ""


def point_time(artefact: Artefact, header: Header, name_time: Optional[tuple[re.Pattern, str]]) -> tuple[datetime, str]:
    """When a recovery point was taken, and from what: the name pattern, else the archive's header,
    else the object's modification time (when it was last written: after the dump's snapshot, so an
    RPO measured from it is never worse than the truth by more than the dump took)."""
    if name_time is not None:
        rx, fmt = name_time
        m = rx.search(artefact.name)
        if m:
            try:
                t = datetime.strptime(m.group("time"), fmt)
                return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)), "name"
            except ValueError:
                pass
    if header.created:
        return datetime.fromisoformat(header.created), "header"
    if artefact.modified is not None:
        return artefact.modified, "modified"
    raise ProviderError("RECOVERY_POINT_UNDATED", f"{artefact.place}: no time in its name, its header or its modification time")


# ---------------------------------------------------------------- decompression


class DecodeError(Exception):
    pass


class Decoder:
    """gzip or zstd decompression, fed chunk by chunk, across concatenated members/frames; `finish`
    says whether the stream ended where a member/frame ends (a cut file does not).

    Bounded: no call holds more than a few MiB of output at once (gzip by max_length, zstd by feeding
    it 1 KiB at a time: one byte of zstd makes at most a 128 KiB block), and the whole output stops at
    `max_bytes` or at `max_ratio` times the input (plus 64 MiB): ARTEFACT_TOO_LARGE, a bomb."""

    ZSTD_STEP = 1024
    SLACK = 64 << 20

    def __init__(self, encoding: str, max_bytes: Optional[int] = None, max_ratio: Optional[float] = None, place: str = ""):
        self.encoding = encoding
        self.max_bytes, self.max_ratio, self.place = max_bytes, max_ratio, place
        self.bytes_in = self.bytes_out = 0
        self._obj = self._new()

    def _new(self):
        if self.encoding == "gzip":
            return zlib.decompressobj(wbits=47)
        if self.encoding == "zstd":
            return zstandard.ZstdDecompressor().decompressobj()
        return None

    def feed(self, data: bytes, limit: Optional[int] = None) -> bytes:
        """The output of `data` (at most `limit` bytes of it: a header sniff)."""
        out, got = [], 0
        for piece in self.pieces(data):
            out.append(piece)
            got += len(piece)
            if limit is not None and got >= limit:
                break
        return b"".join(out)

    def pieces(self, data: bytes) -> Iterator[bytes]:
        self.bytes_in += len(data)
        if self._obj is None:
            yield data
            return
        try:
            for piece in self._gzip(data) if self.encoding == "gzip" else self._zstd(data):
                self.bytes_out += len(piece)
                self._bound()
                yield piece
        except (zlib.error, zstandard.ZstdError) as exc:
            raise DecodeError(str(exc)) from None

    def _gzip(self, data: bytes) -> Iterator[bytes]:
        while data:
            yield self._obj.decompress(data, 1 << 20)
            if self._obj.unconsumed_tail:
                data = self._obj.unconsumed_tail
                continue
            if not self._obj.eof:
                break
            data = self._obj.unused_data
            if data:
                self._obj = self._new()

    def _zstd(self, data: bytes) -> Iterator[bytes]:
        pos = 0
        while pos < len(data):
            step, pos = data[pos : pos + self.ZSTD_STEP], pos + self.ZSTD_STEP
            while step:
                if self._obj.eof:  # the next frame of a concatenation
                    self._obj = self._new()
                yield self._obj.decompress(step)
                step = self._obj.unused_data if self._obj.eof else b""

    def _bound(self) -> None:
        if self.max_bytes is not None and self.bytes_out > self.max_bytes:
            raise TooLarge(f"{self.place}: it decompresses to more than {self.max_bytes} bytes (restore.max_expanded_bytes)")
        if self.max_ratio is not None and self.bytes_out > self.max_ratio * self.bytes_in + self.SLACK:
            raise TooLarge(
                f"{self.place}: {self.bytes_in} bytes of {self.encoding} became over {self.bytes_out} bytes, more than "
                f"{self.max_ratio:g} times as much (restore.max_expansion_ratio): a decompression bomb, or raise the ratio"
            )

    def finish(self) -> None:
        if self._obj is not None and not self._obj.eof:
            raise DecodeError(f"the {self.encoding} stream ends in the middle (the file is cut short)")


class TooLarge(ProviderError):
    def __init__(self, message: str):
        super().__init__("ARTEFACT_TOO_LARGE", message)


# ---------------------------------------------------------------- checksums


@dataclass
class Expectation:
    """What an artefact must be, and who says so: the drill file, or a sidecar beside it."""

    sha256: Optional[str] = None
    size: Optional[int] = None
    files: dict[str, str] = field(default_factory=dict)  # a directory archive's sidecar: file -> sha256
    said_by: str = ""
    problem: str = ""  # a sidecar that holds no digest

    @property
    def empty(self) -> bool:
        return self.sha256 is None and self.size is None and not self.files and not self.problem


def parse_sidecar(text: str, artefact: Artefact) -> Expectation:
    """`sha256sum` output: one `<hex>  <name>` line for a file (a bare hex digest also does); for a
    directory archive, one line per file of it (`cd dump && sha256sum * > ../dump.sha256`)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    pairs = []
    for ln in lines:
        m = re.match(r"^([0-9a-fA-F]{64})(?:\s+\*?(.+))?$", ln)
        if m:
            pairs.append((m.group(1).lower(), (m.group(2) or "").strip()))
    if not pairs:
        return Expectation(problem="it holds no sha256 digest (expected `sha256sum` output)")
    if artefact.is_dir:
        return Expectation(files={Path(n).name: h for h, n in pairs if n})
    return Expectation(sha256=pairs[0][0])


def sha256_stream(chunks: Iterator[bytes]) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.hexdigest()
