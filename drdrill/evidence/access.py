"""Who may reach the embedded evidence store (docs/security.md): the account its server runs as,
and the only client it admits.

As root, the server runs as `drdrill-evidence`, a system account of its own (created when missing),
never `postgres` (the machine's PostgreSQL, and restored clusters) nor a restore sandbox's uid, so
its 0700 socket directory admits no other uid. It authenticates by peer: only drdrill's own OS user,
mapped to the database user `drdrill`; no trust, no TCP. Not as root, the server runs as drdrill's uid.
"""

from __future__ import annotations

import logging
import os
import pwd
import subprocess
from typing import Optional

EVIDENCE_USER = "drdrill-evidence"

log = logging.getLogger("drdrill.evidence")


class AccessError(Exception):
    pass


def evidence_user() -> Optional[pwd.struct_passwd]:
    """The account the embedded store's server runs as when drdrill is root: `drdrill-evidence`, a
    system account of its own (created when missing), never `postgres` (the machine's PostgreSQL,
    and restored clusters) nor a restore sandbox's. None when not root: the server runs as drdrill's uid."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(EVIDENCE_USER)
    except KeyError:
        pass
    proc = subprocess.run(
        ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
         "--comment", "drdrill evidence store", EVIDENCE_USER],
        capture_output=True, text=True,
    )
    try:
        user = pwd.getpwnam(EVIDENCE_USER)  # made now, or by another drdrill process meanwhile
    except KeyError:
        raise AccessError(
            f"could not create the system user {EVIDENCE_USER} that the evidence store runs as: "
            f"{proc.stderr.strip() or 'useradd failed'}; create it (useradd --system {EVIDENCE_USER}) or set DRDRILL_EVIDENCE_DSN"
        ) from None
    log.warning("created the system user %s (uid %d): the embedded evidence store runs as it", EVIDENCE_USER, user.pw_uid)
    return user


def access_files() -> dict[str, str]:
    """pg_hba.conf and pg_ident.conf of the embedded store: only drdrill's own OS user, by peer
    authentication over the Unix socket, as the database user drdrill. No trust, no TCP."""
    client = pwd.getpwuid(os.geteuid()).pw_name
    return {
        "pg_hba.conf": "# drdrill evidence store: only drdrill's own uid, over the Unix socket, by peer authentication\n"
        "local all drdrill peer map=drdrill\n",
        "pg_ident.conf": f"# OS user -> database user\ndrdrill {client} drdrill\n",
    }


def secure_existing(cluster) -> None:
    """A store made by an older drdrill: its data goes to the store's own account and its trust
    authentication is replaced by access_files() before its server starts again. Links are not followed."""
    user = cluster.user
    if user is not None and cluster.data.stat().st_uid != user.pw_uid:
        log.warning("the evidence store in %s now runs as %s: handing its data over", cluster.data, user.pw_name)
        for root, dirs, files in os.walk(cluster.data):
            for name in [*dirs, *files]:
                os.lchown(os.path.join(root, name), user.pw_uid, user.pw_gid)
        os.lchown(cluster.data, user.pw_uid, user.pw_gid)
        if cluster.log.exists():
            os.lchown(cluster.log, user.pw_uid, user.pw_gid)
    for name, text in access_files().items():
        path = cluster.data / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        if user is not None:
            os.lchown(path, user.pw_uid, user.pw_gid)
