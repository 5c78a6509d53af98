"""The postgres provider: pg_dump backups restored into throwaway clusters on a private socket.

    cluster.py   throwaway local clusters (initdb, pg_ctl) and the PostgreSQL binaries
    data.py      table listing and content fingerprints (backups write them, validations check them)
    backup.py    `drdrill backup`: the backup repository, written and read
    provider.py  PostgresProvider: the drill's steps and the primitives of cleaning up
"""

from drdrill.providers.postgres.backup import take_backup
from drdrill.providers.postgres.provider import PostgresProvider

__all__ = ["PostgresProvider", "take_backup"]
