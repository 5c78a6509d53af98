"""`source: {barman: {source_url: s3://bucket/path, server: NAME}}`: backups and WAL that
barman-cloud-backup and barman-cloud-wal-archive wrote to S3, recovered with Barman's own tools
(`pip install barman boto3` on the worker): barman-cloud-backup-list (the backups),
barman-cloud-restore (into the drill's data directory) and barman-cloud-wal-restore (WAL for the
recovered server, through drdrill's spool). The archived WAL and the repository's files are
listed with boto3 in Barman's layout (`<path>/<server>/wals/`, `<path>/<server>/base/`).

Credentials come from the variables the drill names (AWS_ACCESS_KEY_ID, …), passed by name.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

from drdrill.providers.postgres.schema import PostgresTarget
from drdrill.core.times import parse_time
from drdrill.providers.base import ProviderError
import drdrill.localpg.sandbox as sandbox
from drdrill.providers.postgres.netrepo import Endpoint, Tunnel, endpoint_of_url, inner_url
from drdrill.providers.postgres.recovery import Backup, PhysicalSource
from drdrill.providers.postgres.toolrun import last_line, named_env, run_tool
from drdrill.providers.postgres.walreplay import SEGMENT_RE, ArchivedWal, WalUnreadable

_CREDENTIALS = ("AWS_",)


def barman_tool(name: str) -> str:
    """A barman-cloud command: beside this Python (a virtualenv's bin), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise ProviderError("TOOL_MISSING", f"{name} is not installed on this worker: `pip install barman boto3`")
    return found


class Barman(PhysicalSource):
    tool_name = "Barman"

    def __init__(self) -> None:
        self._list: Optional[list[dict[str, Any]]] = None
        self.containment = "outside the sandbox"

    # -------------------------------------------------------------- running barman-cloud

    def _run(self, target: PostgresTarget, tool: str, *params: str, options: tuple[str, ...] = ()) -> Any:
        s = target.source.barman
        argv = [barman_tool(tool), *options]
        if s.endpoint_url:
            argv += ["--endpoint-url", s.endpoint_url]
        argv += [s.source_url, s.server, *params]
        return run_tool(argv, named_env(s.env, target.name, _CREDENTIALS), target.name, tool)

    def _endpoint(self, target: PostgresTarget) -> Optional[tuple[str, Endpoint]]:
        """(the endpoint URL, the one endpoint) barman-cloud reaches: `endpoint_url`, else AWS's
        regional endpoint for the region the drill names; None when neither is known."""
        s = target.source.barman
        url = s.endpoint_url
        if not url:
            region = next((os.environ[n] for n in s.env if n in ("AWS_DEFAULT_REGION", "AWS_REGION") and os.environ.get(n)), None)
            url = f"https://s3.{region}.amazonaws.com" if region else None
        endpoint = endpoint_of_url(url) if url else None
        return (url, endpoint) if url and endpoint else None

    def _sandboxed_run(self, target: PostgresTarget, tool: str, params: tuple[str, ...], options: tuple[str, ...], rw: tuple[Path, ...]) -> Any:
        """barman-cloud-restore / barman-cloud-wal-restore in the drill's sandbox (its own uid, the
        named AWS_* variables only, its own PID namespace, no capabilities), reaching only the S3
        endpoint through a relay (netrepo.py); outside, as before, when bubblewrap is missing or the
        endpoint is not known (`self.containment` says which)."""
        s = target.source.barman
        found = self._endpoint(target) if sandbox.available() else None
        if found is None:
            self.containment = "outside the sandbox: " + (
                "bubblewrap is not installed" if not sandbox.available() else "no endpoint_url and no AWS region named, so no one endpoint to allow"
            )
            return self._run(target, tool, *params, options=options)
        url, endpoint = found
        python = _python_for_sandbox(barman_tool(tool))
        if python is None:
            self.containment = f"outside the sandbox: the Python {tool} runs on is in a directory the sandbox uid cannot enter"
            return self._run(target, tool, *params, options=options)
        prefix, binds, python_env = python
        identity = sandbox.identity_for(rw[0].parent)  # the drill's own sandbox uid
        for path in rw:
            os.chown(path, identity.uid, identity.gid, follow_symlinks=False)
        env = {n: os.environ[n] for n in named_env(s.env, target.name, _CREDENTIALS) if n in s.env}
        env.update({"AWS_EC2_METADATA_DISABLED": "true", **python_env})
        argv = [*prefix, barman_tool(tool), *options, "--endpoint-url", inner_url(url, endpoint), s.source_url, s.server, *params]
        self.containment = f"in the sandbox: bubblewrap as uid {identity.uid}, network: only the repository's endpoint {endpoint}, through a relay"
        with Tunnel(endpoint, rw[0].parent, identity) as tunnel, sandbox.Inputs() as inputs:
            box = sandbox.Sandbox(identity, rw=list(rw), ro=[*tunnel.ro, *binds], env=env, files=tunnel.files)
            return run_tool(tunnel.wrap(argv, inputs), env, target.name, tool, spawn=lambda a, **kw: box.popen(a, pass_fds=inputs.fds, **kw))

    def _s3(self, target: PostgresTarget) -> tuple[Any, str, str]:
        """An S3 client with the named credentials, the bucket, and the server's key prefix."""
        import boto3

        s = target.source.barman
        env = named_env(s.env, target.name, _CREDENTIALS)
        session = boto3.session.Session(
            aws_access_key_id=env.get("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY"),
            aws_session_token=env.get("AWS_SESSION_TOKEN"),
            region_name=env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION"),
            profile_name=env.get("AWS_PROFILE"),
        )
        bucket, _, path = s.source_url[len("s3://") :].partition("/")
        prefix = "/".join(p for p in (path.strip("/"), s.server) if p) + "/"
        return session.client("s3", endpoint_url=s.endpoint_url), bucket, prefix

    def _objects(self, target: PostgresTarget, under: str = "") -> list[dict[str, Any]]:
        client, bucket, prefix = self._s3(target)
        try:
            pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + under)
            return [o for page in pages for o in page.get("Contents", [])]
        except Exception as exc:  # noqa: BLE001 - botocore's many errors: one finding with its words
            raise ProviderError(
                "REPOSITORY_UNREADABLE", f"target {target.name}: cannot list {target.source.barman.source_url}: {exc}"
            ) from exc

    # -------------------------------------------------------------- the repository

    def backups(self, target: PostgresTarget) -> list[Backup]:
        proc = self._run(target, "barman-cloud-backup-list", options=("--format", "json"))
        if proc.returncode != 0:
            raise ProviderError(
                "REPOSITORY_UNREADABLE",
                f"target {target.name}: barman-cloud-backup-list failed: {last_line(proc.stderr) or last_line(proc.stdout)}",
            )
        found = []
        for b in json.loads(proc.stdout or "{}").get("backups_list", []):
            if b.get("status") != "DONE":
                continue
            found.append(
                Backup(
                    label=b["backup_id"],
                    started=parse_time(b["begin_time_iso"]),  # type: ignore[arg-type]
                    stopped=parse_time(b["end_time_iso"]),  # type: ignore[arg-type]
                    major=int(b.get("version") or 0) // 10000,
                    size=b.get("cluster_size"),
                    details={"begin_wal": b.get("begin_wal"), "end_wal": b.get("end_wal"), "tablespaces": b.get("tablespaces") or []},
                )
            )
        return found

    def archived_wal(self, target: PostgresTarget) -> list[ArchivedWal]:
        wal = []
        for o in self._objects(target, "wals/"):
            base = o["Key"].rsplit("/", 1)[-1]  # 000000010000000000000003[.gz], 00000002.history[.gz], ….backup
            name = base[: base.index(".history")] + ".history" if ".history" in base else base.split(".")[0]
            if ".backup" in base or not (SEGMENT_RE.match(name) or name.endswith(".history")):
                continue
            wal.append(ArchivedWal(name, o["LastModified"]))
        return wal

    def inventory(self, target: PostgresTarget) -> dict[str, str]:
        return {o["Key"]: f"{o['Size']}:{o.get('ETag', '')}" for o in self._objects(target)}

    # -------------------------------------------------------------- restoring

    def lay_down(self, target: PostgresTarget, backup: Backup, data: Path, recovery_target: Optional[datetime], scratch: Path) -> str:
        options: list[str] = []
        for ts in backup.details.get("tablespaces") or []:
            name = ts[0] if isinstance(ts, (list, tuple)) else ts.get("name")
            options += ["--tablespace", f"{name}:{scratch / ('tablespace-' + str(name))}"]
        proc = self._sandboxed_run(target, "barman-cloud-restore", (backup.label, str(data)), tuple(options), rw=(data, scratch))
        if proc.returncode != 0:
            raise ProviderError(
                "RESTORE_FAILED", f"target {target.name}: barman-cloud-restore of backup {backup.label} failed: {last_line(proc.stderr)}"
            )
        return f"barman-cloud-restore {backup.label} ({self.containment})"

    def fetch_wal(self, target: PostgresTarget, name: str, dest: Path, data: Path) -> bool:
        """barman-cloud-wal-restore into an outbox beside `dest` (the only directory the sandbox may
        write), then moved to `dest` by drdrill."""
        outbox = dest.parent.with_name(dest.parent.name + "-outbox")
        outbox.mkdir(mode=0o700, exist_ok=True)
        proc = self._sandboxed_run(target, "barman-cloud-wal-restore", (name, str(outbox / name)), (), rw=(outbox,))
        if proc.returncode == 0 and (outbox / name).is_file() and not (outbox / name).is_symlink():
            os.replace(outbox / name, dest)
            return True
        if proc.returncode == 1:  # the archive does not have it
            return False
        raise WalUnreadable(last_line(proc.stderr) or f"barman-cloud-wal-restore exited {proc.returncode}")



def _reachable(path: str) -> bool:
    """Every directory above `path` is searchable by any uid (what the sandbox uid needs to bind it)."""
    parts = Path(path).resolve().parents
    return all(os.stat(p).st_mode & 0o001 for p in parts) and os.path.exists(path)


def _python_for_sandbox(tool: str) -> Optional[tuple[list[str], list[Path], dict[str, str]]]:
    """(the command prefix, the paths to bind read-only, the environment) that run barman-cloud
    `tool` inside the sandbox; None when the sandbox uid cannot reach a Python for it.
    A tool outside this virtualenv (Debian's barman-cli-cloud) runs as it is. One in this
    virtualenv runs on its own interpreter when the sandbox uid can walk to it, else on the
    system's /usr/bin/python3 of the same version with the virtualenv's site-packages on its path
    (a pyenv under /root, which no other uid may enter)."""
    if not tool.startswith(sys.prefix + os.sep):
        return ([], [], {}) if _reachable(tool) else None
    venv = Path(sys.prefix)
    if not _reachable(sys.prefix):
        return None
    interpreter = os.path.realpath(sys.executable)
    if _reachable(interpreter):
        return [], [venv, Path(sys.base_prefix)], {}
    system = "/usr/bin/python3"
    probe = subprocess.run([system, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True) if os.path.exists(system) else None
    if probe is None or probe.stdout.strip() != str(tuple(sys.version_info[:2])):
        return None
    site = sysconfig.get_paths()
    return [system, "-s"], [venv], {"PYTHONPATH": os.pathsep.join(dict.fromkeys((site["purelib"], site["platlib"]))), "PYTHONNOUSERSITE": "1"}
