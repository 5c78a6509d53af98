"""`source: {pgbackrest: {stanza: …}}`: a pgBackRest stanza, recovered to a point in time with
pgBackRest itself (Debian's `pgbackrest` package on the worker).

drdrill only runs pgBackRest's reading commands: `info` (the backups), `repo-ls` (the archived WAL
and the repository's files, listed before and after the drill), `restore` (into the drill's data
directory, with `--type=time|default --target --set`) and `archive-get` (WAL for the recovered
server, through drdrill's spool). The repository is configured the way pgBackRest always is: its
config file and the PGBACKREST_* variables the drill names, passed by name; drdrill adds only
`log-level-file=off`, so it leaves no log files behind.
"""

from __future__ import annotations

import configparser
import dataclasses
import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from drdrill.providers.postgres.schema import PostgresTarget
from drdrill.providers.base import ProviderError
import drdrill.localpg.safefs as safefs
import drdrill.localpg.sandbox as sandbox
from drdrill.providers.postgres.netrepo import Endpoint, Tunnel
from drdrill.providers.postgres.recovery import Backup, PhysicalSource
from drdrill.providers.postgres.toolrun import last_line, named_env, run_tool, utc
from drdrill.providers.postgres.walreplay import ArchivedWal, WalUnreadable

# pgBackRest's stanza status codes (`pgbackrest info --output=json`).
_MISSING_STANZA = {1: "missing stanza path", 3: "missing stanza data"}
_NO_BACKUPS = 2


def pgbackrest() -> str:
    found = shutil.which("pgbackrest")
    if not found:
        raise ProviderError(
            "TOOL_MISSING", "pgbackrest is not installed on this worker: install Debian's (or your distribution's) pgbackrest package"
        )
    return found


def pg_time(moment: datetime) -> str:
    """2026-11-29 19:46:13.941518+00: the form pgBackRest reads (it refuses ISO 8601's 'T' when it
    chooses the backup set itself) and PostgreSQL's recovery_target_time reads too."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f+00")


def _readable_by(path: Path, uid: int) -> bool:
    st = os.stat(path)
    return bool(st.st_mode & 0o004) or (st.st_uid == uid and bool(st.st_mode & 0o400))


def errors_of(text: str) -> str:
    """pgBackRest's own error lines ("ERROR: [045]: …"), else its last line."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip().startswith(("ERROR", "P00  ERROR"))]
    return " ".join(lines) if lines else last_line(text)


class PgBackRest(PhysicalSource):
    tool_name = "pgBackRest"

    def __init__(self) -> None:
        self._info: Optional[dict[str, Any]] = None
        self._repos: Optional[tuple[list[Path], list[Path]]] = None
        self._remote: Optional[tuple[int, Endpoint]] = None  # the S3 repository sandboxed runs reach
        self._archive_listing: Optional[dict[str, Any]] = None  # inventory's listing of archive/<stanza>, for archived_wal
        self.containment = "outside the sandbox"

    # -------------------------------------------------------------- running pgBackRest

    def _argv(self, target: PostgresTarget, command: str, options: list[str], params: list[str]) -> list[str]:
        s = target.source.pgbackrest
        argv = [pgbackrest(), f"--stanza={s.stanza}"]
        if s.config:
            argv.append(f"--config={s.config}")
        if s.repo:
            argv.append(f"--repo={s.repo}")
        return argv + options + [command] + params

    def _run(
        self, target: PostgresTarget, command: str, *options: str, params: tuple[str, ...] = (), step: str = "", rw: tuple[Path, ...] = (), ro: tuple[Path, ...] = ()
    ) -> Any:
        """pgbackrest [options] command [params], with the PGBACKREST_* variables the drill names.
        `restore` and `archive-get` (`rw`: what they write) run in the sandbox when the repository
        is a local (posix) one: see `sandboxed`."""
        env = named_env(target.source.pgbackrest.env, target.name, ("PGBACKREST_",))
        env["PGBACKREST_LOG_LEVEL_FILE"] = "off"
        argv = self._argv(target, command, list(options), list(params))
        box = self.sandboxed(target, rw, ro) if command in ("restore", "archive-get") else None
        if box is None:
            return run_tool(argv, env, target.name, step or f"pgbackrest {command}")
        if self._remote is None:
            return run_tool(argv, env, target.name, step or f"pgbackrest {command}", spawn=box.popen)
        n, endpoint = self._remote
        if endpoint.inner_port != endpoint.port:
            options = (*options, f"--repo{n}-storage-port={endpoint.inner_port}")
        if endpoint.inner_host != endpoint.host:
            options = (*options, f"--repo{n}-storage-host={endpoint.inner_host}")
        argv = self._argv(target, command, list(options), list(params))
        with Tunnel(endpoint, rw[0].parent, box.identity) as tunnel, sandbox.Inputs() as inputs:
            inside = dataclasses.replace(box, ro=[*box.ro, *tunnel.ro], files=tunnel.files)
            return run_tool(
                tunnel.wrap(argv, inputs), env, target.name, step or f"pgbackrest {command}",
                spawn=lambda a, **kw: inside.popen(a, pass_fds=inputs.fds, **kw),
            )

    # -------------------------------------------------------------- the sandbox

    def _config_files(self, target: PostgresTarget) -> list[Path]:
        s = target.source.pgbackrest
        if s.config:
            return [Path(s.config)]
        home = Path("/etc/pgbackrest")
        return [p for p in [home / "pgbackrest.conf", *sorted((home / "conf.d").glob("*.conf"))] if p.is_file()]

    def _settings(self, target: PostgresTarget) -> Optional[tuple[dict[str, str], list[Path], set[int]]]:
        """(the settings pgBackRest's restore and archive-get read, the config files, the repository
        numbers they may use); None when a config file cannot be read."""
        s = target.source.pgbackrest
        values: dict[str, str] = {}
        files = self._config_files(target)
        for f in files:
            parser = configparser.ConfigParser(interpolation=None, strict=False)
            try:
                parser.read(f)
            except (configparser.Error, OSError, UnicodeDecodeError):
                return None
            for section in ("global", "global:restore", "global:archive-get", s.stanza, f"{s.stanza}:restore", f"{s.stanza}:archive-get"):
                if parser.has_section(section):
                    values.update(parser.items(section))
        for name in s.env:  # PGBACKREST_REPO1_PATH=… as the drill names it
            if name.startswith("PGBACKREST_") and os.environ.get(name):
                values[name[len("PGBACKREST_") :].lower().replace("_", "-")] = os.environ[name]
        numbers = {int(k[4:].split("-", 1)[0]) for k in values if k.startswith("repo") and k[4:].split("-", 1)[0].isdigit()} or {1}
        return values, files, ({s.repo} if s.repo else numbers)

    def s3_repository(self, target: PostgresTarget) -> Optional[tuple[int, Endpoint, list[Path]]]:
        """(its number, the endpoint pgBackRest connects to, the config files) when the stanza reads
        exactly one repository and it is an S3 one; None otherwise."""
        found = self._settings(target)
        if found is None:
            return None
        values, files, numbers = found
        if len(numbers) != 1:
            return None
        n = next(iter(numbers))
        get = lambda key: values.get(f"repo{n}-{key}")  # noqa: E731
        if get("type") != "s3" or not get("s3-endpoint"):
            return None
        endpoint, bucket = get("s3-endpoint") or "", get("s3-bucket") or ""
        virtual = (get("s3-uri-style") or "host") == "host" and bucket
        host = get("storage-host") or get("s3-host") or (f"{bucket}.{endpoint}" if virtual else endpoint)
        port = get("storage-port") or get("s3-port") or "443"
        if not port.isdigit():
            return None
        aliases = (f"{bucket}.{endpoint}", endpoint) if virtual else ()
        return n, Endpoint(host, int(port), tuple(a for a in aliases if a != host)), files

    def local_repositories(self, target: PostgresTarget) -> Optional[tuple[list[Path], list[Path]]]:
        """(repository paths, config files) when every repository the stanza may read is a local
        (posix) one; None when one is S3, Azure, GCS or SFTP (those need the network: `s3_repository`)."""
        if self._repos is not None:
            return self._repos
        found = self._settings(target)
        if found is None:
            return None
        values, files, numbers = found
        repos = []
        for n in sorted(numbers):
            if values.get(f"repo{n}-type", "posix") != "posix":
                return None
            repos.append(Path(values.get(f"repo{n}-path", "/var/lib/pgbackrest")))
        if not all(r.is_dir() for r in repos):
            return None
        self._repos = (repos, files)
        return self._repos

    def sandboxed(self, target: PostgresTarget, rw: tuple[Path, ...], ro: tuple[Path, ...] = ()) -> Optional[sandbox.Sandbox]:
        """The sandbox pgBackRest reads a local repository in: as the repository's owner (the one
        uid that can read it), seeing the repository and its configuration read-only and only `rw`
        writable, with only the variables the drill names, on `lo` only, in its own PID namespace.
        One S3 repository: as the drill's own sandbox uid, reaching only its endpoint through a relay
        (netrepo.py). None (run as before, outside) when bubblewrap is missing, the repository is
        another remote kind or its configuration is not readable by that uid alone;
        `self.containment` says which, for the evidence."""
        local = self.local_repositories(target) if sandbox.available() else None
        remote = self.s3_repository(target) if sandbox.available() and local is None and rw else None
        if local is None and remote is None:
            self.containment = "outside the sandbox: " + (
                "bubblewrap is not installed" if not sandbox.available() else "the repository is neither a local (posix) one nor one S3 repository"
            )
            return None
        if local is not None:
            repos, files = local
            st = os.stat(repos[0])
            identity = sandbox.Identity(st.st_uid, st.st_gid) if os.geteuid() == 0 else sandbox.Identity(os.getuid(), os.getgid())
            reach, self._remote = "the repository read-only, network lo only", None
        else:
            n, endpoint, files = remote  # type: ignore[misc]
            repos, identity = [], sandbox.identity_for(rw[0].parent)  # the drill's own sandbox uid
            reach, self._remote = f"network: only the repository's endpoint {endpoint}, through a relay", (n, endpoint)
        unreadable = [str(f) for f in files if not _readable_by(f, identity.uid)]
        if unreadable:
            self.containment = f"outside the sandbox: {', '.join(unreadable)} is not readable by the repository's owner (uid {identity.uid}) without its groups"
            return None
        for path in rw:
            os.chown(path, identity.uid, identity.gid, follow_symlinks=False)
        env = {n: os.environ[n] for n in target.source.pgbackrest.env if n.startswith("PGBACKREST_") and n in os.environ}
        env["PGBACKREST_LOG_LEVEL_FILE"] = "off"
        self.containment = f"in the sandbox: bubblewrap as uid {identity.uid}, {reach}"
        return sandbox.Sandbox(identity, rw=list(rw), ro=[*repos, *files, *ro], env=env)

    def info(self, target: PostgresTarget) -> dict[str, Any]:
        """The stanza as `pgbackrest info` sees it; a stanza that is not there or a repository that
        cannot be read is one clear finding with pgBackRest's words."""
        if self._info is not None:
            return self._info
        stanza = target.source.pgbackrest.stanza
        proc = self._run(target, "info", "--output=json")
        if proc.returncode != 0:
            raise ProviderError(
                "REPOSITORY_UNREADABLE", f"target {target.name}: pgbackrest info for stanza {stanza} failed: {errors_of(proc.stderr + proc.stdout)}"
            )
        try:
            info = next(s for s in json.loads(proc.stdout) if s.get("name") == stanza)
        except (ValueError, StopIteration) as exc:
            raise ProviderError("REPOSITORY_UNREADABLE", f"target {target.name}: pgbackrest info said nothing about stanza {stanza}") from exc
        status = info.get("status", {})
        code = status.get("code")
        if code in _MISSING_STANZA:
            raise ProviderError(
                "STANZA_NOT_FOUND",
                f"target {target.name}: the repository has no stanza {stanza!r} (pgBackRest: {status.get('message')}); "
                "check the stanza name and the repository the configuration points to",
            )
        if code not in (0, _NO_BACKUPS):
            raise ProviderError(
                "REPOSITORY_UNREADABLE", f"target {target.name}: pgBackRest cannot read stanza {stanza}: {status.get('message')}"
            )
        self._info = info
        return info

    # -------------------------------------------------------------- the repository

    def backups(self, target: PostgresTarget) -> list[Backup]:
        info = self.info(target)
        versions = {db["id"]: db.get("version", "0") for db in info.get("db", [])}
        found = []
        for b in info.get("backup", []):
            major = int(str(versions.get(b.get("database", {}).get("id"), "0")).split(".")[0] or 0)
            found.append(
                Backup(
                    label=b["label"],
                    started=utc(b["timestamp"]["start"]),
                    stopped=utc(b["timestamp"]["stop"]),
                    major=major,
                    size=(b.get("info") or {}).get("size"),
                    details={"type": b.get("type"), "wal": b.get("archive"), "lsn": b.get("lsn"), "error": b.get("error", False)},
                )
            )
        return found

    def _archive_ids(self, target: PostgresTarget) -> list[str]:
        info = self.info(target)
        current = max((db["id"] for db in info.get("db", [])), default=None)
        return [a["id"] for a in info.get("archive", []) if a.get("database", {}).get("id") == current]

    def _listing(self, target: PostgresTarget, path: str) -> dict[str, Any]:
        proc = self._run(target, "repo-ls", "--output=json", "--recurse", params=(path,), step="pgbackrest repo-ls")
        if proc.returncode != 0:
            raise ProviderError("REPOSITORY_UNREADABLE", f"target {target.name}: pgbackrest repo-ls {path} failed: {errors_of(proc.stderr)}")
        return json.loads(proc.stdout or "{}")

    def archived_wal(self, target: PostgresTarget) -> list[ArchivedWal]:
        """The archived WAL: from the listing `inventory` has just made, when it has (the restore
        lists the repository, then its WAL, at the same moment: one repo-ls, not two), else listed."""
        stanza = target.source.pgbackrest.stanza
        listed, self._archive_listing = self._archive_listing, None
        wal = []
        for archive_id in self._archive_ids(target):
            if listed is not None:
                entries = {p[len(archive_id) + 1:]: e for p, e in listed.items() if p.startswith(f"{archive_id}/")}
            else:
                entries = self._listing(target, f"archive/{stanza}/{archive_id}")
            for path, entry in entries.items():
                name = Path(path).name
                if entry.get("type") != "file":
                    continue
                checksum = None
                if len(name) > 24 and name[24] == "-":  # 000000010000000000000004-<sha1>.gz
                    name, checksum = name[:24], name[25:65]
                elif not name.endswith(".history"):
                    continue
                wal.append(ArchivedWal(name, utc(entry["time"]) if "time" in entry else None, checksum))
        return wal

    def inventory(self, target: PostgresTarget) -> dict[str, str]:
        stanza = target.source.pgbackrest.stanza
        files = {}
        for top in (f"archive/{stanza}", f"backup/{stanza}"):
            listing = self._listing(target, top)
            if top.startswith("archive/"):
                self._archive_listing = listing  # for archived_wal, called next by the restore
            for path, entry in listing.items():
                if entry.get("type") == "file":
                    files[f"{top}/{path}"] = f"{entry.get('size')}:{entry.get('time')}"
        return files

    # -------------------------------------------------------------- restoring

    def lay_down(self, target: PostgresTarget, backup: Backup, data: Path, recovery_target: Optional[datetime], scratch: Path) -> str:
        options = [
            f"--pg1-path={data}",
            f"--set={backup.label}",
            f"--process-max={target.restore.jobs}",
            f"--tablespace-map-all={scratch / 'tablespaces'}",
            "--archive-mode=off",
        ]
        if recovery_target is not None:
            options += ["--type=time", f"--target={pg_time(recovery_target)}", "--target-action=promote"]
        else:
            options += ["--type=default"]
        proc = self._run(target, "restore", *options, step=f"pgbackrest restore --set={backup.label}", rw=(data, scratch))
        if proc.returncode != 0:
            said = errors_of(proc.stderr + proc.stdout)
            damaged = any(word in said.lower() for word in ("checksum", "data error", "zlib", "lz4", "zst", "bz2", "formaterror"))
            code = "BACKUP_DAMAGED" if damaged else "RESTORE_FAILED"
            raise ProviderError(code, f"target {target.name}: pgbackrest restore of backup {backup.label} failed: {said}")
        kind = f"--type=time --target='{pg_time(recovery_target)}'" if recovery_target else "--type=default"
        return f"pgbackrest restore --set={backup.label} {kind} ({self.containment})"

    @staticmethod
    def _control_copy(data: Path) -> Path:
        """A directory holding only a copy of the backup's global/pg_control (all archive-get reads of
        pg1-path, to match the stanza): the data directory itself belongs to the restored server's
        sandbox uid, which the repository's owner cannot enter. Read without following a link."""
        control = data.with_name(data.name + "-control")
        if not (control / "global" / "pg_control").is_file():
            raw = safefs.read_file(data / "global" / "pg_control", limit=64 << 10)
            if raw is None:
                raise WalUnreadable(f"{data}/global/pg_control is missing: the laid-down backup is incomplete")
            (control / "global").mkdir(parents=True, exist_ok=True)
            safefs.write_file(control / "global" / "pg_control", raw)
            # Readable by the repository's owner: pg_control holds no secret (a system identifier, LSNs).
            os.chmod(control / "global" / "pg_control", 0o644)
            for d in (control, control / "global"):
                os.chmod(d, 0o755)
        return control

    def fetch_wal(self, target: PostgresTarget, name: str, dest: Path, data: Path) -> bool:
        """archive-get into an outbox beside `dest` (the only directory the sandbox may write),
        then moved to `dest` by drdrill."""
        outbox = dest.parent.with_name(dest.parent.name + "-outbox")
        outbox.mkdir(mode=0o700, exist_ok=True)
        control = self._control_copy(data)
        proc = self._run(
            target, "archive-get", f"--pg1-path={control}", params=(name, str(outbox / name)), step=f"archive-get {name}",
            rw=(outbox,), ro=(control,),
        )
        if proc.returncode == 0 and (outbox / name).is_file() and not (outbox / name).is_symlink():
            os.replace(outbox / name, dest)
            return True
        if proc.returncode == 1:  # "unable to find … in the archive"
            return False
        raise WalUnreadable(errors_of(proc.stderr + proc.stdout))
