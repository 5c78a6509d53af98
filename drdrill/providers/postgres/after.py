"""`restore.after`: an application started from the restored data, in the drill's sandbox.

The application is as untrusted as the backup it reads (it runs queries a hostile dump may have
planted answers to, and it is the team's own code run next to production), so it runs like the
restored server (drdrill/localpg/sandbox.py): as the drill's sandbox uid, with no capabilities, an environment of
only the restored database (DRDRILL_*) and `restore.environment`, a mount namespace holding the
system directories, the restored cluster's socket directory and the read-only `restore.after.paths`
(plus argv[0]), private /tmp and /run, inside the drill's network namespace, and a PID namespace.

It runs in the foreground under bwrap, recorded (pid + start time) in a root-owned file beside the
cluster (`after-<target>.sandbox.json`): teardown stops it by that record (a pidfd), never by a pid
file it could write, and its PID namespace ends everything it forked. The orphan sweep finds it by
the record too (`processes`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

from drdrill.core.drillpaths import unreachable_by_others
import drdrill.providers.postgres.netns as netns
import drdrill.localpg.sandbox as sandbox
from drdrill.localpg.cluster import ClusterError, LocalCluster, start_sandboxed

PREFIX = "after-"
RECORD_SUFFIX = ".sandbox.json"
# What every sandbox already sees read-only (drdrill/localpg/sandbox.py): argv[0] there needs no bind of its own.
_SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")


class AfterError(Exception):
    pass


def role_of(target_name: str) -> str:
    return f"{PREFIX}{target_name}"


def record_of(cluster: Path, role: str) -> Path:
    return cluster / f"{role}{RECORD_SUFFIX}"


def _visible(argv0: str, paths: list[str]) -> list[str]:
    """The read-only binds: the drill's paths, and argv[0] when it lies outside them and the system dirs."""
    binds = [str(Path(p)) for p in paths]
    if os.path.isabs(argv0):
        inside = [*_SYSTEM, *binds]
        if not any(argv0 == d or argv0.startswith(d.rstrip("/") + "/") for d in inside) and os.path.exists(argv0):
            binds.append(argv0)
    return list(dict.fromkeys(binds))


def start(ctx: Any, target: Any, endpoint: dict, details: dict) -> tuple[int, Optional[int]]:
    """Start (once) `target.restore.after` in the drill's sandbox; (pid of its sandbox, exit status
    when it has already ended). `details`: the restored resource's (cluster, netns)."""
    cluster = LocalCluster(details["cluster"], port=netns.NETNS_PORT, netns=details.get("netns"))
    role = role_of(target.name)
    record = record_of(cluster.path, role)
    if not sandbox.alive(record):
        env = {f"DRDRILL_{k.upper()}": str(v) for k, v in endpoint.items()}
        # restore.environment, as the activity filled it in (earlier targets' endpoints, and
        # {env.NAME} secrets read on this worker, registered for redaction there whatever their
        # names): the only variables besides DRDRILL_*; nothing of the worker's own environment.
        env.update(getattr(target.restore, "environment", None) or {})
        after = target.restore.after
        for path in after.paths:  # checked again here, on the worker that starts it (lint may run elsewhere)
            problem = unreachable_by_others(path)
            if problem:
                raise AfterError(f"restore.after.paths: {problem}")
        box = cluster.sandbox(ro=tuple(_visible(after.argv[0], list(after.paths))), env=env, network=True)
        try:
            start_sandboxed(box, list(after.argv), record=record, log=cluster.path / f"{role}.log", ready=None, timeout=0)
        except ClusterError as exc:
            raise AfterError(str(exc)) from exc
        pid = sandbox.recorded_pid(record)
        if pid is None:
            raise AfterError(f"no record of its sandbox in {record}")
        netns.record_process(cluster.path, role, pid)
        return pid, sandbox.exit_status(pid)
    pid = sandbox.recorded_pid(record)
    return pid or 0, None


def processes(cluster: Path) -> list[tuple[str, int, Path]]:
    """The running `restore.after` sandboxes of a cluster directory: (role, pid, record)."""
    found = []
    for record in sorted(cluster.glob(f"{PREFIX}*{RECORD_SUFFIX}")):
        if sandbox.alive(record):
            pid = sandbox.recorded_pid(record)
            if pid is not None:
                found.append((record.name[: -len(RECORD_SUFFIX)], pid, record))
    return found


def stop(record: Path) -> bool:
    """Stop the application by its record: SIGTERM, then SIGKILL to its PID namespace."""
    return sandbox.stop(record, grace=10)
