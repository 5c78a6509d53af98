"""Data directories laid down from a backup, not made by initdb: adopted as a private-socket
cluster (a base backup from drdrill's repository), or prepared and started for point-in-time
recovery (a physical backup laid down by its own tool), then found and stopped by their data
directory.

Such a directory is untrusted input: its links are refused unless they are pg_wal or
pg_tblspc/<oid> inside the drill's own area (safefs), its own configuration is set aside
(backupconf), and its server runs in the drill's sandbox with archiving, replication and TCP
forced off on the command line.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Optional

import drdrill.localpg.backupconf as backupconf
import drdrill.localpg.safefs as safefs
import drdrill.localpg.sandbox as sandbox
from drdrill.localpg.binaries import Binaries
from drdrill.localpg.binaries import default as default_binaries
from drdrill.localpg.cluster import (
    ClusterError,
    as_server_user,
    chown_to_server,
    hand_to_server_user,
    install_dirs,
    sandbox_identity,
    start_sandboxed,
)


class BackupLinkRefused(ClusterError):
    """A laid-down backup holds a link drdrill will not follow (BACKUP_SYMLINK_REFUSED)."""


def adopt_data_dir(data: Path, sock: Path, port: int, log: Path, binaries: Optional[Binaries] = None) -> dict:
    """Make a copied data directory (a base backup) a private-socket cluster and start it.

    It gets the same isolation settings as our own clusters: no TCP, no replication, no archiving,
    and a pg_hba that only admits local socket connections. Links other than pg_wal and
    pg_tblspc/<oid> inside the drill's directory are refused (BackupLinkRefused); the backup's own
    configuration is set aside beside it (backupconf), and what it held is returned for the evidence.
    """
    for name in ("postmaster.pid", "standby.signal", "recovery.signal", "postmaster.opts"):
        safefs.remove_file(data / name)
    try:
        safefs.refuse_links(data, data.parent)
    except safefs.LinkRefused as exc:
        raise BackupLinkRefused(f"{exc}: a base backup may keep only pg_wal and pg_tblspc/<oid> links, inside the drill's own directory") from exc
    safefs.write_file(data / "pg_hba.conf", "# drdrill: Unix socket only\nlocal all all trust\n")
    config = backupconf.set_aside(
        data,
        data.with_name(f"{data.name}-backup-config"),
        "# drdrill restored base backup: Unix socket only, no TCP, no replication\n"
        f"listen_addresses = ''\nunix_socket_directories = '{sock}'\nunix_socket_permissions = 0700\n"
        f"port = {port}\narchive_mode = off\nprimary_conninfo = ''\nrestore_command = ''\n"
        f"max_wal_senders = 0\nwal_level = minimal\nhba_file = '{data / 'pg_hba.conf'}'\nlogging_collector = off\n",
    )
    hand_to_server_user(data)
    safefs.touch(log)
    chown_to_server(log)
    ident = sandbox_identity(data)
    if ident is not None:
        tools = binaries or default_binaries()
        box = sandbox.Sandbox(ident, rw=[data, sock], ro=install_dirs(tools))
        start_sandboxed(box, [tools.tool("postgres"), "-D", str(data)], record=sandbox_record(data), log=log,
                        ready=(tools.tool("pg_isready"), sock, port), timeout=120)
        return config
    pg_ctl = (binaries or default_binaries()).tool("pg_ctl")
    proc = subprocess.run(
        [pg_ctl, "start", "-D", str(data), "-l", str(log), "-w", "-t", "120"],
        capture_output=True,
        text=True,
        **as_server_user(),
    )
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        raise ClusterError(f"the restored base backup did not start: {proc.stderr.strip()} {' | '.join(tail)}")
    return config


# ---------------------------------------------------------------------- recovered data directories
# A physical backup laid down by its own tool (pgbackrest restore, barman-cloud-restore, a copied
# pg_basebackup) carries production's settings: its archive_command, primary_conninfo, replication
# slots, sockets and ports. It is started beside the drill's cluster with all of that overridden on
# the server's command line, which outranks postgresql.conf, postgresql.auto.conf and ALTER SYSTEM.


def recovery_overrides(data: Path, sock: Path, port: int, major: int, restore_command: str) -> dict[str, str]:
    """The settings a recovered server is started with: Unix socket only (the drill's private one),
    archiving and replication off, WAL only through `restore_command`, logs drdrill can read."""
    settings = {
        "listen_addresses": "",
        "unix_socket_directories": str(sock),
        "unix_socket_permissions": "0700",
        "port": str(port),
        "hba_file": str(data / "drdrill_hba.conf"),
        "ident_file": str(data / "drdrill_ident.conf"),
        "ssl": "off",
        "archive_mode": "off",
        "archive_command": "",
        "primary_conninfo": "",
        "primary_slot_name": "",
        "max_wal_senders": "0",
        "synchronous_standby_names": "",
        # No connections until recovery has ended: a hot standby would have to match production's
        # max_wal_senders, max_connections … and pause otherwise. The end is read from the log.
        "hot_standby": "off",
        "restore_command": restore_command,
        # Nothing of the backup's runs or loads: no command at the end of recovery or per restart
        # point, no library, no passphrase program; paths are the drill's own.
        "recovery_end_command": "",
        "archive_cleanup_command": "",
        "shared_preload_libraries": "",
        "session_preload_libraries": "",
        "local_preload_libraries": "",
        "dynamic_library_path": "$libdir",
        "ssl_passphrase_command": "",
        "external_pid_file": "",
        "data_directory": str(data),
        "config_file": str(data / "postgresql.conf"),
        "log_directory": "log",
        "logging_collector": "off",
        "log_destination": "stderr",
        "log_min_messages": "warning",
        "log_timezone": "UTC",
        "lc_messages": "C",
    }
    if major >= 15:
        settings["archive_library"] = ""
    return settings


def prepare_recovered_data_dir(data: Path, area: Path, config_to: Path, auto_conf: str) -> dict:
    """Make a laid-down backup startable as a private cluster, as root, without following a link:

    - links other than pg_wal and pg_tblspc/<oid> pointing inside `area` (the drill's restore
      area) are refused (safefs.LinkRefused, before anything is written);
    - the backup's postgresql.conf and postgresql.auto.conf are set aside into `config_to`
      (backupconf.set_aside: drdrill's harmless settings only; returned for the evidence), and
      `auto_conf` (drdrill's recovery settings) is the new postgresql.auto.conf, with recovery.signal;
    - drdrill's pg_hba (local trust only), no leftover postmaster.pid or standby.signal, no
      replication slot (a restored slot would hold WAL and could be streamed from);
    - every file owned by the server user."""
    safefs.refuse_links(data, area)
    for name in ("postmaster.pid", "postmaster.opts", "standby.signal"):
        safefs.remove_file(data / name)
    slots = data / "pg_replslot"
    if slots.is_dir() and not slots.is_symlink():
        for slot in slots.iterdir():
            if slot.is_dir() and not slot.is_symlink():
                shutil.rmtree(slot, ignore_errors=True)
            else:
                slot.unlink(missing_ok=True)
    config = backupconf.set_aside(data, config_to, auto_conf)
    safefs.write_file(data / "recovery.signal", "")
    safefs.write_file(data / "drdrill_hba.conf", "# drdrill: a recovered copy, reached over its private Unix socket only\nlocal all all trust\n")
    safefs.write_file(data / "drdrill_ident.conf", "")
    hand_to_server_user(data)
    return config


def start_recovery(data: Path, log: Path, binaries: Binaries, settings: dict[str, str]) -> None:
    """Start the server of a recovered data directory with `settings` on its command line, without
    waiting: recovery may take long, and its end (or failure) is read from `log` by the caller.

    The server gets a bare environment: nothing of the worker's (credentials included) reaches it."""

    safefs.touch(log)
    chown_to_server(log)
    ident = sandbox_identity(data)
    if ident is not None:
        # In the drill's sandbox: the data directory, the socket directory and the directory of the
        # restore_command's script (its WAL spool) are all it sees of the host.
        rw = [data, Path(settings["unix_socket_directories"])]
        script = (shlex.split(settings.get("restore_command") or "") or [""])[0]
        if script.startswith("/") and Path(script).parent.resolve().is_relative_to(data.parent.resolve()):
            rw.append(Path(script).parent)
        box = sandbox.Sandbox(ident, rw=rw, ro=install_dirs(binaries), env={"LANG": "C"})
        argv = [binaries.tool("postgres"), "-D", str(data)] + [arg for k, v in settings.items() for arg in ("-c", f"{k}={v}")]
        start_sandboxed(box, argv, record=sandbox_record(data), log=log, ready=None, timeout=0)
        return
    options = " ".join(f"-c {shlex.quote(f'{k}={v}')}" for k, v in settings.items())
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C"}
    proc = subprocess.run(
        [binaries.tool("pg_ctl"), "start", "-D", str(data), "-l", str(log), "-W", "-o", options],
        capture_output=True,
        text=True,
        env=env,
        **as_server_user(),
    )
    if proc.returncode != 0:
        raise ClusterError(f"the recovered server did not start: {proc.stderr.strip()}")


def sandbox_record(data: Path) -> Path:
    """Where the sandbox of a server beside the drill's cluster is recorded: root-owned, beside `data`."""
    return data.parent / f"{data.name}.sandbox.json"


def server_pid(data: Path) -> Optional[int]:
    """The pid of the server running from `data`, None when none runs (it stopped or never started).
    A sandboxed one: the pid of its sandbox (from the root-owned record, checked against /proc)."""
    record = sandbox_record(data)
    if sandbox_identity(data) is not None:
        return sandbox.recorded_pid(record) if sandbox.alive(record) else None
    try:
        pid = int((data / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, owned by the server user
    return pid


def stop_server(data: Path, binaries: Optional[Binaries] = None) -> None:
    """Stop (immediately) the server running from `data`, if any; used before a retried recovery."""
    if sandbox_identity(data) is not None:
        sandbox.stop(sandbox_record(data), signal.SIGQUIT, grace=30)
        return
    if server_pid(data) is None:
        return
    subprocess.run(
        [(binaries or default_binaries()).tool("pg_ctl"), "stop", "-D", str(data), "-m", "immediate", "-w", "-t", "30"],
        capture_output=True,
        text=True,
        **as_server_user(),
    )
    pid = server_pid(data)
    if pid is not None:
        os.kill(pid, signal.SIGKILL)
