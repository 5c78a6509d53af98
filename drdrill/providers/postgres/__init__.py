"""The postgres provider: pg_dump backups restored into throwaway clusters on a private socket.

    cluster.py   throwaway local clusters (initdb, pg_ctl) and the PostgreSQL binaries
    data.py      table listing and content fingerprints (backups write them, validations check them)
    backup.py    `drdrill backup`: the backup repository, written and read
    binaries.py  the PostgreSQL installs of the worker, by major version
    sources.py   RecoverySource: one kind of backup a target is recovered from
    repository.py  drdrill's own repository (`drdrill backup`: dumps and base backups with manifests)
    dumps.py     pg_dump files a team already has (path, s3, url_env): every format, no manifest
    artefacts.py  listing, reading and recognising those files (format, compression, header)
    recovery.py  point-in-time recovery shared by physical sources: the rule's moment, WAL feeding, recovery's end
    pgbackrest.py, barman.py, walarchive.py  the physical sources: a pgBackRest stanza, barman-cloud on S3,
                 pg_basebackup directories plus a WAL archive directory
    findings.py  restore tools' stderr into findings with stable codes
    provider.py  PostgresProvider: isolation, readiness, the primitives of cleaning up; dispatches to sources
    discover.py  selections of repositories (a list, or globs)
    schema.py    the postgres part of the drill format: PostgresTarget, its sources, PostgresProbe (no I/O, no driver)
"""
