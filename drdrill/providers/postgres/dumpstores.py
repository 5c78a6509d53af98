"""Where pg_dump files already are, listed and read, never written: a `Store` per kind of source.

`PathStore` (files and directories matching a glob), `S3Store` (objects under a prefix, each read
pinned to the version listed), `UrlStore` (the one object behind a presigned URL, registered as a
secret and only ever named by its variable). Each lists its artefacts, reads a range of one (its
header, its tail), opens it as a stream and finds its sidecar checksum or `drdrill dump` manifest.
Every failure is a ProviderError naming the place, never the credentials. `store_for` picks one
for a target's source. What an artefact is: artefacts.py.
"""

from __future__ import annotations

import glob as globlib
import os
import re
import urllib.error
import urllib.request
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import BinaryIO, Optional


from drdrill.core.redact import register_secret
from drdrill.providers.postgres.schema import PostgresSource
from drdrill.providers.base import ProviderError
from drdrill.providers.postgres.artefacts import HEADER_BYTES, MANIFEST_SUFFIX, TAIL_BYTES, Artefact, Header, inspect

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
