"""pg_dump files where teams already keep them: listed, opened and recognised, never written.

A store lists the artefacts of one source (files and directories matching a glob, objects under an
S3 prefix, or the one object behind a presigned URL), reads a range of one (its header, its tail)
and opens it as a stream. `inspect` recognises what an artefact is from its first bytes: the
pg_dump format (custom, directory, tar, plain SQL), the compression around a plain dump (gzip,
zstd), and what the archive says about itself (when it was created, which server and pg_dump
wrote it). Every failure is a ProviderError naming the place, never the credentials: a presigned
URL is registered as a secret and only ever named by its variable.
"""

from __future__ import annotations

import glob as globlib
import hashlib
import os
import re
import struct
import tarfile
import urllib.error
import urllib.request
import zlib
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import BinaryIO, Iterator, Optional

import zstandard

from drdrill.core.redact import register_secret
from drdrill.providers.postgres.schema import PostgresSource
from drdrill.providers.base import ProviderError

HEADER_BYTES = 64 * 1024  # enough for every pg_dump header: custom's is ~200 bytes, plain's ~1 KiB
TAIL_BYTES = 4 * 1024  # pg_dump's closing comment sits in the last few hundred bytes
DUMP_COMPLETE = b"-- PostgreSQL database dump complete"
MANIFEST_SUFFIX = ".manifest.json"  # `drdrill dump`'s sidecar: rows and fingerprints in the dump's snapshot
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


# ---------------------------------------------------------------- stores


class Store:
    """Where a source's artefacts are. Subclasses list, read ranges of and open them."""

    def place(self) -> str:
        raise NotImplementedError

    def list(self) -> list[Artefact]:
        raise NotImplementedError

    def read(self, a: Artefact, start: int, length: int) -> bytes:
        raise NotImplementedError

    def open(self, a: Artefact) -> BinaryIO:
        raise NotImplementedError

    def sidecar(self, a: Artefact) -> Optional[tuple[str, str]]:
        """(where, text) of `<name>.sha256` beside the artefact, when there is one."""
        return None

    def local_path(self, a: Artefact) -> Optional[Path]:
        """The artefact on this machine's disk (pg_restore reads it directly), else None."""
        return None

    def manifest(self, a: Artefact) -> Optional[tuple[str, str]]:
        """(where, text) of `<name>.manifest.json` beside the artefact (`drdrill dump`), when there is one."""
        return None

    def header(self, a: Artefact) -> Header:
        if a.is_dir:
            local = self.local_path(a)
            with open(local / "toc.dat", "rb") as fh:  # type: ignore[operator]
                return inspect(fh.read(HEADER_BYTES), is_dir=True)
        return inspect(self.read(a, 0, HEADER_BYTES) if a.size != 0 else b"")

    def tail(self, a: Artefact) -> bytes:
        size = a.size or 0
        return self.read(a, max(0, size - TAIL_BYTES), min(size, TAIL_BYTES)) if size else b""


class PathStore(Store):
    """`path: /backups/shop/*.dump`: files (and directory archives, holding toc.dat) matching a glob."""

    def __init__(self, pattern: str):
        self.pattern = pattern

    def place(self) -> str:
        return self.pattern

    def list(self) -> list[Artefact]:
        parent = Path(self.pattern).parent
        while any(c in str(parent) for c in "*?["):
            parent = parent.parent
        if not parent.is_dir():
            raise ProviderError("SOURCE_MISSING", f"{self.pattern}: the directory {parent} does not exist (or is not a directory)")
        if not os.access(parent, os.R_OK | os.X_OK):
            raise ProviderError("SOURCE_ACCESS_DENIED", f"{self.pattern}: the directory {parent} cannot be read by this worker")
        found = []
        for name in sorted(globlib.glob(self.pattern)):
            p = Path(name)
            if p.name.startswith(".") or p.name.endswith((".sha256", MANIFEST_SUFFIX)):
                continue
            if p.is_dir() and not (p / "toc.dat").is_file():
                continue
            try:
                st = p.stat()
            except OSError:
                continue
            size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else st.st_size
            found.append(
                Artefact(
                    name=p.name, place=str(p), size=size, is_dir=p.is_dir(),
                    modified=datetime.fromtimestamp(st.st_mtime, timezone.utc),
                )
            )
        return found

    def read(self, a: Artefact, start: int, length: int) -> bytes:
        with open(a.place, "rb") as fh:
            fh.seek(start)
            return fh.read(length)

    def open(self, a: Artefact) -> BinaryIO:
        return open(a.place, "rb")

    def sidecar(self, a: Artefact) -> Optional[tuple[str, str]]:
        side = Path(a.place + ".sha256")
        if side.is_file():
            return str(side), side.read_text(errors="replace")
        return None

    def local_path(self, a: Artefact) -> Optional[Path]:
        return Path(a.place)

    def manifest(self, a: Artefact) -> Optional[tuple[str, str]]:
        side = Path(a.place + MANIFEST_SUFFIX)
        if not side.is_file():
            return None
        with open(side, "rb") as fh:  # bounded, as the S3 and URL stores read it
            return str(side), fh.read(64 << 20).decode(errors="replace")


class S3Store(Store):
    """`s3: {bucket, prefix}`: every object under the prefix (but sidecars), read with boto3's default
    credential chain only: credentials never appear in a drill file, argv or the evidence."""

    def __init__(self, bucket: str, prefix: str = "", region: Optional[str] = None, endpoint_url: Optional[str] = None):
        import boto3  # only S3 sources need it
        from botocore.config import Config

        self.bucket, self.prefix = bucket, prefix
        self.client = boto3.session.Session().client(
            "s3", region_name=region, endpoint_url=endpoint_url,
            config=Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=20, read_timeout=120),
        )

    def place(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def _fail(self, exc: Exception, what: str) -> ProviderError:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        if isinstance(exc, NoCredentialsError):
            return ProviderError("SOURCE_ACCESS_DENIED", f"{what}: no AWS credentials found in boto3's default chain (environment, profile, instance role)")
        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "PreconditionFailed" or status == 412:
                return ProviderError(
                    "ARTEFACT_CHANGED",
                    f"{what}: the object was replaced after it was chosen as the recovery point (its ETag is no longer the one "
                    "listed): what is restored must be what was chosen; run the drill again",
                )
            if code in ("NoSuchBucket",):
                return ProviderError("SOURCE_MISSING", f"{what}: bucket {self.bucket} does not exist")
            if code in ("NoSuchKey", "404", "NotFound"):
                return ProviderError("SOURCE_MISSING", f"{what}: the object is gone")
            if code in ("AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "ExpiredToken") or status == 403:
                return ProviderError("SOURCE_ACCESS_DENIED", f"{what}: access denied ({code}): the worker's AWS identity needs s3:ListBucket and s3:GetObject on it")
            return ProviderError("SOURCE_UNREADABLE", f"{what}: {code or status}: {exc.response.get('Error', {}).get('Message', '')}", retryable=status is not None and status >= 500)
        if isinstance(exc, BotoCoreError):
            return ProviderError("SOURCE_UNREACHABLE", f"{what}: {exc}", retryable=True)
        return ProviderError("SOURCE_UNREADABLE", f"{what}: {type(exc).__name__}: {exc}")

    def list(self) -> list[Artefact]:
        found = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
                for obj in page.get("Contents", []):
                    key = obj["Key"]
                    name = key.rsplit("/", 1)[-1]
                    if not name or name.endswith((".sha256", MANIFEST_SUFFIX)) or name.startswith("."):
                        continue
                    found.append(
                        Artefact(name=name, place=f"s3://{self.bucket}/{key}", key=key, size=obj["Size"],
                                 modified=obj["LastModified"].astimezone(timezone.utc), etag=obj.get("ETag", ""))
                    )
        except Exception as exc:  # noqa: BLE001 - every S3 failure becomes one finding naming the place
            raise self._fail(exc, self.place()) from None
        return found

    def read(self, a: Artefact, start: int, length: int) -> bytes:
        if length <= 0:
            return b""
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=a.key, Range=f"bytes={start}-{start + length - 1}", **self._pin(a))["Body"]
            return body.read()
        except Exception as exc:  # noqa: BLE001
            raise self._fail(exc, a.place) from None

    def open(self, a: Artefact) -> BinaryIO:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=a.key, **self._pin(a))["Body"]
        except Exception as exc:  # noqa: BLE001
            raise self._fail(exc, a.place) from None

    @staticmethod
    def _pin(a: Artefact) -> dict:
        """Read the object as it was listed, or fail: ARTEFACT_CHANGED (If-Match on its ETag)."""
        return {"IfMatch": a.etag} if a.etag else {}

    def sidecar(self, a: Artefact) -> Optional[tuple[str, str]]:
        from botocore.exceptions import ClientError

        try:
            body = self.client.get_object(Bucket=self.bucket, Key=a.key + ".sha256")["Body"]
            return f"{a.place}.sha256", body.read(64 * 1024).decode(errors="replace")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None
            raise self._fail(exc, f"{a.place}.sha256") from None


    def manifest(self, a: Artefact) -> Optional[tuple[str, str]]:
        from botocore.exceptions import ClientError

        try:
            body = self.client.get_object(Bucket=self.bucket, Key=a.key + MANIFEST_SUFFIX)["Body"]
            return f"{a.place}{MANIFEST_SUFFIX}", body.read(64 << 20).decode(errors="replace")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None
            raise self._fail(exc, f"{a.place}{MANIFEST_SUFFIX}") from None


class UrlStore(Store):
    """`url_env: VAR`: the one object behind a presigned HTTPS URL held in an environment variable.
    The URL is a credential: registered for redaction, and named only by its variable."""

    def __init__(self, variable: str, environ=os.environ):
        self.variable, self.environ = variable, environ
        self.url = environ.get(variable, "")
        if self.url:
            register_secret(self.url)
            query = self.url.partition("?")[2]
            if query:
                register_secret(query)

    def place(self) -> str:
        return f"${self.variable}"

    def _request(self, headers: Optional[dict] = None):
        if not self.url:
            raise ProviderError("SOURCE_MISSING", f"${self.variable} is not set: it must hold the presigned URL of the dump")
        if not re.match(r"^https?://", self.url):
            raise ProviderError("SOURCE_MISSING", f"${self.variable} does not hold an http(s) URL")
        req = urllib.request.Request(self.url, headers=headers or {})
        try:
            return urllib.request.urlopen(req, timeout=60)
        except urllib.error.HTTPError as exc:
            code = exc.code
            exc.close()
            if code in (401, 403):
                raise ProviderError("SOURCE_ACCESS_DENIED", f"${self.variable}: the URL was refused (HTTP {code}): it may have expired; sign a new one") from None
            if code == 404:
                raise ProviderError("SOURCE_MISSING", f"${self.variable}: nothing at the URL (HTTP 404)") from None
            raise ProviderError("SOURCE_UNREADABLE", f"${self.variable}: HTTP {code}", retryable=code >= 500) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ProviderError("SOURCE_UNREACHABLE", f"${self.variable}: the URL cannot be reached: {reason}", retryable=True) from None

    def list(self) -> list[Artefact]:
        with self._request({"Range": "bytes=0-0"}) as resp:
            size = None
            total = re.search(r"/(\d+)$", resp.headers.get("Content-Range", ""))
            if total:
                size = int(total.group(1))
            elif resp.status == 200 and resp.headers.get("Content-Length"):
                size = int(resp.headers["Content-Length"])
            modified = None
            if resp.headers.get("Last-Modified"):
                modified = parsedate_to_datetime(resp.headers["Last-Modified"]).astimezone(timezone.utc)
        name = urllib.request.urlparse(self.url).path.rsplit("/", 1)[-1] or "artefact"
        return [Artefact(name=urllib.request.unquote(name), place=self.place(), size=size, modified=modified)]

    def read(self, a: Artefact, start: int, length: int) -> bytes:
        if length <= 0:
            return b""
        with self._request({"Range": f"bytes={start}-{start + length - 1}"}) as resp:
            if resp.status == 206:
                return resp.read()
            # A server that ignores Range sends everything: skip to `start` a chunk at a time (never
            # holding more than one), keep `length`, and close the rest unread.
            left = start
            while left > 0:
                skipped = len(resp.read(min(left, 1 << 20)))
                if not skipped:
                    return b""
                left -= skipped
            return resp.read(length)

    def open(self, a: Artefact) -> BinaryIO:
        return self._request()

    def manifest(self, a: Artefact) -> Optional[tuple[str, str]]:
        """The sidecar's own presigned URL, in `<VARIABLE>_MANIFEST` (a URL signs one object only)."""
        side = UrlStore(f"{self.variable}_MANIFEST", self.environ)
        if not side.url:
            return None
        with side._request() as resp:
            return side.place(), resp.read(64 << 20).decode(errors="replace")


def store_for(source: PostgresSource) -> Store:
    """The store of a pg_dump source (path, s3 or url_env)."""
    if source.path is not None:
        return PathStore(source.path)
    if source.s3 is not None:
        endpoint = source.s3.endpoint_url or os.environ.get("DRDRILL_AWS_ENDPOINT_URL") or None  # as every AWS client of drdrill
        return S3Store(source.s3.bucket, source.s3.prefix, source.s3.region, endpoint)
    if source.url_env is not None:
        return UrlStore(source.url_env)
    raise ValueError(f"not a pg_dump source: {source.kind}")


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
