"""One pg_dump artefact restored: into which server (the drill's cluster when it is the dump's
major, else a cluster of its own beside it, on the same private socket), streamed into pg_restore
or psql (custom and plain via stdin, gzip/zstd decompressed on the way; a tar spooled to a scratch
file first), the roles its objects name created first, and what the tools said judged
(stderr into findings; an exit code that disagrees with them is EXIT_CODE_LIED).

dumps.py finds and checks the artefact; `Restore` runs it in the drill's sandbox.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Optional

import psycopg
from psycopg.conninfo import make_conninfo

from drdrill.core.models import Finding
from drdrill.providers.base import ProviderError, heartbeat
from drdrill.providers.postgres.artefacts import TAIL_BYTES, Artefact, Decoder, DecodeError, Expectation, Header, tar_problem
from drdrill.providers.postgres.dumpstores import Store
from drdrill.localpg.binaries import Binaries
from drdrill.localpg.cluster import SUPERUSER, ClusterError, LocalCluster, install_dirs
from drdrill.localpg.recovered import adopt_data_dir, stop_server
from drdrill.localpg.sandbox import Inputs, Sandbox, SandboxError
from drdrill.providers.postgres.findings import classify_restore_errors, exit_code_findings
from drdrill.providers.postgres.plainscan import PlainDumpScanner, supports_restrict, tail_complete, tool_version

CHUNK = 1 << 20


def close_quietly(feed) -> None:
    try:
        feed.close()
    except Exception:  # noqa: BLE001 - a stream already broken
        pass


def require_complete(tail: bytes, a: Artefact, target: str, streamed: bool = False, why: str = "") -> None:
    """pg_dump's closing comment is the dump's last non-empty line (judged on its tail before the
    restore; on the whole stream, outside COPY data, after it)."""
    if (streamed and why) or (not streamed and not tail_complete(tail)):
        raise ProviderError(
            "ARCHIVE_TRUNCATED",
            f"target {target}: {a.place} does not end with pg_dump's closing `-- PostgreSQL database dump complete`"
            + (f" ({why})" if why else "") + ": "
            "the dump was cut short (psql would restore the part before the cut and exit 0)"
            + (" (found while streaming it; what was restored is discarded)" if streamed else ""),
        )


# ---------------------------------------------------------------- the server restored into


@dataclass
class Server:
    """Where a target is restored: the drill's cluster, or one of the dump's major beside it."""

    sock: str
    port: int
    where: str
    label: str

    def dsn(self, dbname: str = "postgres") -> str:
        return make_conninfo(host=self.sock, port=self.port, user=SUPERUSER, dbname=dbname)


def server_for(cluster: LocalCluster, target: str, binaries: Binaries) -> Server:
    if cluster.binaries.major == binaries.major:
        return Server(str(cluster.sock), cluster.port, str(cluster.path), f"the drill's cluster (PostgreSQL {binaries.major})")
    return cluster_beside(cluster, target, binaries)


def cluster_beside(cluster: LocalCluster, target: str, binaries: Binaries) -> Server:
    """A cluster of another major in the drill's directory, on the drill's private socket directory
    (its own port): the same isolation, removed with the drill's cluster at teardown."""
    port = 5433 + int(hashlib.sha256(target.encode()).hexdigest(), 16) % 20000
    data = cluster.path / f"{target}-pg{binaries.major}"
    heartbeat({"target": target, "step": f"create a PostgreSQL {binaries.major} cluster"})
    if data.exists():  # a retried attempt starts over
        stop_server(data, binaries)
        shutil.rmtree(data)
    data.mkdir(mode=0o700)
    box = cluster.sandbox(rw=(data,), ro=install_dirs(binaries))
    os.lchown(data, box.identity.uid, box.identity.gid)
    try:
        proc = box.run([binaries.tool("initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"])
    except SandboxError as exc:
        raise ProviderError("ISOLATION_FAILED", f"target {target}: {exc}") from exc
    if proc.returncode != 0:
        raise ProviderError("ISOLATION_FAILED", f"target {target}: initdb of PostgreSQL {binaries.major} failed: {proc.stderr.strip()}", retryable=True)
    try:
        adopt_data_dir(data, cluster.sock, port, cluster.path / f"{target}-pg{binaries.major}.log", binaries)
    except ClusterError as exc:
        raise ProviderError("ISOLATION_FAILED", f"target {target}: {exc}", retryable=True) from exc
    return Server(str(cluster.sock), port, str(data), f"a PostgreSQL {binaries.major} cluster beside the drill's, on its private socket")


# ---------------------------------------------------------------- one restore


_OWNER_COMMENT = re.compile(rb"^-- Name: [^\n]*; Owner: ([^\n;]+)$", re.M)


class Restore:
    """One restore of one artefact: the tool, what feeds it, and what it said."""

    def __init__(self, *, target, artefact: Artefact, header: Header, expect: Expectation, store: Store, server: Server,
                 binaries: Binaries, dbname: str, scratch: Path, sandbox: Sandbox):
        self.target, self.a, self.header, self.expect, self.store = target, artefact, header, expect, store
        self.server, self.binaries, self.dbname, self.scratch = server, binaries, dbname, scratch
        # psql and pg_restore run in the drill's sandbox (drdrill/localpg/sandbox.py): what a hostile dump makes
        # them do stays there. They reach the server over its socket and read the archive through
        # a descriptor opened here (Inputs).
        self.sandbox = sandbox
        self.local = store.local_path(artefact)
        self.streamed = False
        self.bytes_read = 0
        self.sha256: Optional[str] = None
        self.returncode: Optional[int] = None
        self.stderr = ""
        self.roles_created: list[str] = []
        self.how = ""
        self._tail = b""
        self._scanner: Optional[PlainDumpScanner] = None
        self._carry = b""
        self._reading_since: Optional[float] = None
        self._pump_error: Optional[BaseException] = None
        self._hasher = hashlib.sha256() if (expect.sha256 and self.local is None) else None
        self._roles_seen: set[str] = set()

    @property
    def name(self) -> str:
        return self.target.name

    # -------------------------------------------------------- running

    def execute(self) -> None:
        fmt, jobs = self.header.format, self.target.restore.jobs
        db = self.server.dsn(self.dbname)
        if fmt == "plain":
            psql = self.binaries.tool("psql")
            # psql's own \restrict where it has one: no meta-command runs but drdrill's \connect wrap.
            key = secrets.token_hex(16) if supports_restrict(tool_version(psql)) else None
            self._scanner = PlainDumpScanner(self.a.place, connect_wrap=key)
            cmd = [psql, "-X", "-q", "-v", "ON_ERROR_STOP=0", "-d", db, *(["-c", f"\\restrict {key}"] if key else []), "-f", "-"]
            self.how = "psql -f - (" + ("streamed" if self.local is None else "read") + (f", {self.header.encoding}" if self.header.encoding != "none" else "") + ")"
            self._run(cmd, feed=self.store.open(self.a), scan_owners=True)
            return
        if fmt == "tar" and self.local is None:
            self._spool()
        archive = self.local if self.local is not None else (self.scratch if fmt == "tar" else None)
        if fmt == "tar" and tar_problem(archive):  # type: ignore[arg-type]
            raise ProviderError("ARCHIVE_TRUNCATED", f"target {self.name}: {self.a.place}: {tar_problem(archive)}")  # type: ignore[arg-type]
        self._create_owners(self._archive_owners(archive))
        if archive is not None:
            parallel = ["-j", str(jobs)] if fmt in ("custom", "directory") else []
            with Inputs(self.scratch.parent, self.sandbox.identity) as inputs:
                cmd = [self.binaries.tool("pg_restore"), *parallel, "-d", db, inputs.path(archive)]
                self.how = f"pg_restore {' '.join(parallel)} {'scratch copy' if archive == self.scratch else 'from disk'}".replace("  ", " ")
                self._run(cmd, feed=None, inputs=inputs)
        else:
            cmd = [self.binaries.tool("pg_restore"), "-d", db]
            self.how = "pg_restore streamed from " + ("S3" if self.target.source.s3 else "the URL")
            self._run(cmd, feed=self.store.open(self.a))

    def _run(self, cmd: list[str], feed: Optional[BinaryIO], scan_owners: bool = False, inputs: Optional[Inputs] = None) -> None:
        """Run a restore tool in the sandbox, feeding it `feed` (decompressed on the way) while heartbeating."""
        try:
            proc = self.sandbox.popen(cmd, pass_fds=inputs.fds if inputs else (), stdin=subprocess.PIPE if feed is not None else subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except SandboxError as exc:
            raise ProviderError("ISOLATION_FAILED", f"target {self.name}: {exc}") from exc
        errs: list[bytes] = []
        reader = threading.Thread(target=lambda: errs.append(proc.stderr.read()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        pump = None
        if feed is not None:
            self.streamed = self.local is None
            pump = threading.Thread(target=self._pump, args=(feed, proc.stdin, scan_owners), daemon=True)
            pump.start()
        started = time.monotonic()
        stall = self.target.restore.stall_after.total_seconds()
        try:
            while proc.poll() is None:
                heartbeat({"target": self.name, "step": Path(cmd[0]).name, "bytes_streamed": self.bytes_read,
                           "of": self.a.size, "seconds": round(time.monotonic() - started, 1)})
                since = self._reading_since
                if pump is not None and pump.is_alive() and since is not None and time.monotonic() - since > stall:
                    self._stalled(proc, feed, stall)
                    break
                try:
                    proc.wait(timeout=min(2.0, max(0.2, stall / 4)))
                except subprocess.TimeoutExpired:
                    pass
        finally:
            if proc.poll() is None:  # cancelled (or the worker is shutting down): stop the tool too
                proc.kill()
                proc.wait()
            if pump is not None:
                pump.join(timeout=1 if self._pump_error is not None else 30)
            if feed is not None:
                # A read blocked in the pump (a stalled source) holds the stream: close it beside,
                # it ends with the connection's own timeout.
                closing = threading.Thread(target=close_quietly, args=(feed,), daemon=True)
                closing.start()
                closing.join(timeout=5)
        reader.join()
        self.returncode = proc.returncode
        self.stderr = b"".join(errs).decode("utf-8", "replace")

    def _pump(self, feed: BinaryIO, sink, scan_owners: bool) -> None:
        opts = self.target.restore
        decoder = Decoder(self.header.encoding if self.header.format == "plain" else "none",
                          max_bytes=opts.max_expanded_bytes, max_ratio=opts.max_expansion_ratio, place=f"target {self.name}: {self.a.place}")
        try:
            while chunk := self._read(feed):
                self.bytes_read += len(chunk)
                if self._hasher is not None:
                    self._hasher.update(chunk)
                for data in decoder.pieces(chunk):
                    self._forward(data, sink, scan_owners)
            decoder.finish()
            if self._scanner:
                sink.write(self._scanner.finish())
            if self._hasher is not None:
                self.sha256 = self._hasher.hexdigest()
        except ProviderError as exc:  # a refused line, a bomb: psql never gets it
            # Its input ends here (the `finally` closes it): psql finishes what it was given and exits.
            # Not killed: a kill that lands while bwrap is still setting up its namespaces can orphan
            # the inner sandbox before --die-with-parent is armed, and its stderr would never close.
            self._pump_error = exc
        except BrokenPipeError:
            pass  # the tool stopped reading; its stderr says why
        except BaseException as exc:  # noqa: BLE001 - judged after the tool ends
            self._pump_error = self._pump_error or exc  # a stall, found first, stays the cause
        finally:
            try:
                sink.close()
            except OSError:
                pass

    def _read(self, feed: BinaryIO) -> bytes:
        """One chunk from the source, timed: a read that brings no whole chunk within stall_after is a
        stall. (Time the tool spends on a statement, with the pump waiting to write, is not.)"""
        self._reading_since = time.monotonic()
        try:
            return feed.read(CHUNK)
        finally:
            self._reading_since = None

    def _stalled(self, proc: subprocess.Popen, feed: Optional[BinaryIO], stall: float) -> None:
        """A read of the source brought no whole chunk (1 MiB) for `stall` seconds: a source that drips
        or hangs. Progress, not time, is what counts; the restore ends."""
        self._pump_error = ProviderError(
            "RESTORE_STALLED",
            f"target {self.name}: {self.a.place}: no progress for {stall:g} s after {self.bytes_read} bytes (restore.stall_after): "
            "the source drips or hangs",
            retryable=False,
        )
        proc.kill()

    def _forward(self, data: bytes, sink, scan_owners: bool) -> None:
        """One piece of the decompressed stream: owners created, the tail kept, the lines checked
        (plain dumps) before psql gets them."""
        if scan_owners:
            text = self._carry + data
            cut = text.rfind(b"\n") + 1
            self._create_owners(m.decode("utf-8", "replace") for m in _OWNER_COMMENT.findall(text, 0, cut))
            self._carry = text[cut:][-TAIL_BYTES:]
        self._tail = (self._tail + data[-TAIL_BYTES:])[-TAIL_BYTES:]
        sink.write(self._scanner.feed(data) if self._scanner else data)

    def _spool(self) -> None:
        """A tar from S3 or a URL: pg_restore needs to seek in it, so it goes to a scratch file first
        (inside the drill's cluster directory, which teardown removes)."""
        decoder = Decoder("none")
        with self.store.open(self.a) as feed, open(self.scratch, "wb") as out:
            while chunk := feed.read(CHUNK):
                self.bytes_read += len(chunk)
                if self._hasher is not None:
                    self._hasher.update(chunk)
                out.write(decoder.feed(chunk))
                heartbeat({"target": self.name, "step": "download to scratch", "bytes": self.bytes_read, "of": self.a.size})
        if self._hasher is not None:
            self.sha256 = self._hasher.hexdigest()

    # -------------------------------------------------------- roles

    def _archive_owners(self, archive: Optional[Path]) -> list[str]:
        """The owners named in an archive's table of contents (`pg_restore -l`: the last field). A
        streamed archive's TOC is read from its first bytes (it precedes the data)."""
        if archive is not None:
            out = self._list(archive)
        else:
            prefix = self.scratch.with_suffix(".toc")
            try:
                for length in (CHUNK, 64 * CHUNK):  # a TOC is small; a schema of many thousand objects is not
                    prefix.write_bytes(self.store.read(self.a, 0, min(self.a.size or length, length)))
                    out = self._list(prefix)
                    if out.returncode == 0 or (self.a.size or 0) <= length:
                        break
            finally:
                prefix.unlink(missing_ok=True)
        owners = []
        for line in out.stdout.splitlines():
            if line.startswith(";") or not line.strip() or line.endswith(" "):
                continue
            owners.append(line.rsplit(" ", 1)[-1])
        return owners

    def _list(self, archive: Path) -> subprocess.CompletedProcess:
        """`pg_restore -l` of an archive, in the sandbox."""
        with Inputs(self.scratch.parent, self.sandbox.identity) as inputs:
            try:
                return self.sandbox.run([self.binaries.tool("pg_restore"), "-l", inputs.path(archive)], pass_fds=inputs.fds)
            except SandboxError as exc:
                raise ProviderError("ISOLATION_FAILED", f"target {self.name}: {exc}") from exc

    def _create_owners(self, owners) -> None:
        """Create (NOLOGIN) the roles that own the dump's objects, so that ownership restores as it was.
        Roles are not in a pg_dump; other roles it names (GRANTs) stay missing: MISSING_ROLE."""
        new = [o for o in dict.fromkeys(owners) if o and o != "-" and o not in self._roles_seen]
        if not new:
            return
        self._roles_seen.update(new)
        with psycopg.connect(self.server.dsn(), autocommit=True, connect_timeout=10) as conn:
            for role in new:
                if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None:
                    conn.execute(psycopg.sql.SQL("CREATE ROLE {} NOLOGIN").format(psycopg.sql.Identifier(role)))
                    self.roles_created.append(role)

    # -------------------------------------------------------- judging

    def judge(self) -> list[Finding]:
        """Findings from what happened; raises for a restore that must not be validated at all."""
        where = f"target {self.name}: {self.a.place}"
        if self._hasher is not None and self.sha256 and self.sha256 != self.expect.sha256:
            raise ProviderError(
                "ARTEFACT_CHECKSUM_MISMATCH",
                f"{where} has sha256 {self.sha256[:16]}…, {self.expect.said_by} says {str(self.expect.sha256)[:16]}…: "
                "the dump was altered or damaged after it was written (found while streaming it; what was restored is discarded)",
            )
        if isinstance(self._pump_error, DecodeError):
            code = "ARCHIVE_TRUNCATED" if "ends in the middle" in str(self._pump_error) else "ARCHIVE_UNREADABLE"
            raise ProviderError(code, f"{where}: {self._pump_error}; what was restored is discarded")
        if isinstance(self._pump_error, ProviderError):
            raise self._pump_error
        if self._pump_error is not None:
            raise ProviderError(
                "SOURCE_UNREACHABLE", f"{where}: reading it stopped: {type(self._pump_error).__name__}: {self._pump_error}", retryable=True
            )
        if self._scanner is not None:  # judged on the whole stream: the marker last, outside COPY data
            require_complete(self._tail, self.a, self.name, streamed=True, why=self._scanner.complete())
        findings = classify_restore_errors(self.stderr, self.name)
        unreadable = [f for f in findings if f.code == "ARCHIVE_UNREADABLE"]
        if unreadable:
            detail = unreadable[0].message.split(": ", 1)[-1]
            raise ProviderError(
                "ARCHIVE_UNREADABLE",
                f"{where}: {Path(self.how.split()[0]).name} cannot read it: {detail} (the archive is truncated or corrupt)",
            )
        tool = "psql" if self.header.format == "plain" else "pg_restore"
        return findings + exit_code_findings(tool, self.returncode or 0, findings, self.name)
