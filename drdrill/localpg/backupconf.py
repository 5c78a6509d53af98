"""A recovered backup starts from drdrill's configuration, not the backup's.

A physical backup carries production's `postgresql.conf` and `postgresql.auto.conf` (ALTER SYSTEM),
which a hostile backup can fill with commands the server runs (`recovery_end_command`,
`archive_cleanup_command`, …), libraries it loads (`shared_preload_libraries`,
`dynamic_library_path`), files it reads (`include`, `include_dir`, `ssl_*`) and paths it writes.

`set_aside(data, where)` moves both files out of the data directory into `where` (a root-owned
directory beside it), records their sha256 and every setting they held, and writes a drdrill-owned
`postgresql.conf` that keeps only the harmless settings (memory, planner, locale, …): never an
include directive, a command, a library, a path or anything about sockets, archiving, replication,
recovery, SSL or logging. The recovered server's command line forces those too
(recovered.recovery_overrides), so a setting missed here is still overridden.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Optional

import drdrill.localpg.safefs as safefs

FILES = ("postgresql.auto.conf", "postgresql.conf")

# Settings a backup never brings along (matched on the lower-cased name).
_DROPPED = re.compile(
    r"^(?:include(?:_dir|_if_exists)?|.*_command|.*_preload_libraries|dynamic_library_path|jit_provider|extension_.*"
    r"|data_directory|config_file|hba_file|ident_file|external_pid_file|stats_temp_directory|krb_server_keyfile"
    r"|ssl.*|log.*|syslog_.*|event_source|listen_addresses|port|unix_socket_.*|bonjour.*"
    r"|archive_.*|restore_command|recovery_.*|primary_.*|promote_trigger_file|max_wal_senders|synchronous_standby_names"
    r"|hot_standby.*|wal_receiver_.*|max_slot_wal_keep_size|default_tablespace|temp_tablespaces)$"
)
# The dropped settings worth a finding: they would run code, load code or read files of the worker.
# (archive_command and restore_command are in every backup of an archiving server: always overridden, not news.)
_DANGEROUS = re.compile(
    r"^(?:include.*|(?!archive_command$|restore_command$).*_command|.*_preload_libraries|dynamic_library_path|jit_provider|extension_.*)$"
)

_NAME = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_.$]*)\s*(=)?\s*")


def parse(text: str) -> list[tuple[str, str]]:
    """(name, value) of every setting line of a PostgreSQL configuration file, in order; include
    directives come out as settings named include/include_dir/include_if_exists. Quoted values are
    unquoted ('' and \\' escapes); a line drdrill cannot read is skipped."""
    out = []
    for line in text.splitlines():
        m = _NAME.match(line)
        if not m or line.lstrip().startswith("#"):
            continue
        rest = line[m.end() :]
        if rest.startswith("'"):
            value, i = [], 1
            while i < len(rest):
                c = rest[i]
                if c == "\\" and i + 1 < len(rest):
                    value.append(rest[i + 1])
                    i += 2
                    continue
                if c == "'":
                    if rest[i + 1 : i + 2] == "'":
                        value.append("'")
                        i += 2
                        continue
                    break
                value.append(c)
                i += 1
            out.append((m.group(1), "".join(value)))
        else:
            out.append((m.group(1), rest.split("#", 1)[0].strip()))
    return out


def quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def set_aside(data: Path, where: Path, auto_conf: str = "") -> dict[str, Any]:
    """Move the backup's configuration files out of `data` into `where`, write drdrill's
    postgresql.conf (harmless settings only) and `auto_conf` as postgresql.auto.conf; return what the
    evidence records: per file its sha256, where it went and its settings; the settings dropped;
    the dangerous ones among them."""
    safefs.private_dir(where)
    files: dict[str, Any] = {}
    kept: dict[str, str] = {}
    dropped: dict[str, str] = {}
    for name in reversed(FILES):  # postgresql.conf first: postgresql.auto.conf overrides it
        raw: Optional[bytes] = safefs.read_file(data / name, limit=4 << 20)
        if raw is None:
            continue
        settings = parse(raw.decode(errors="replace"))
        safefs.write_file(where / name, raw)
        safefs.remove_file(data / name)
        files[name] = {"sha256": hashlib.sha256(raw).hexdigest(), "set_aside_to": str(where / name), "settings": dict(settings)}
        for key, value in settings:
            if _DROPPED.match(key.lower()):
                dropped[key if key not in dropped else f"{key} ({name})"] = value
            else:
                kept[key] = value
    lines = ["# drdrill: the recovered backup's own configuration was set aside; these are its harmless settings"]
    lines += [f"{k} = {quote(v)}" for k, v in kept.items()]
    safefs.write_file(data / "postgresql.conf", "\n".join(lines) + "\n")
    safefs.write_file(data / "postgresql.auto.conf", auto_conf)
    dangerous = {k: v for k, v in dropped.items() if _DANGEROUS.match(k.split(" ")[0].lower())}
    return {"files": files, "kept": sorted(kept), "dropped": dropped, "dangerous": dangerous}
