"""The postgres provider: pg_dump backups restored into throwaway clusters on a private socket.

    backup.py    `drdrill backup`: the backup repository, written and read
    sources.py   RecoverySource: one kind of backup a target is recovered from
    repository.py  drdrill's own repository (`drdrill backup`: dumps and base backups with manifests)
    dumps.py     pg_dump files a team already has (path, s3, url_env): every format, no manifest
    dumpstores.py  where those files are: a glob, an S3 prefix, a presigned URL (listed and read, never written)
    artefacts.py  recognising those files (format, compression, header), their checksums
    dumprestore.py  one such file restored: the server of its major, the tool streamed into, what it said
    recovery.py  point-in-time recovery shared by physical sources: the rule's moment, the recovery run and its record
    walreplay.py  WAL fed to the recovering server, its log read for recovery's end, replay findings
    toolrun.py   running a physical source's backup tool (heartbeats, cancellation, named environment)
    pgbackrest.py, barman.py, walarchive.py  the physical sources: a pgBackRest stanza, barman-cloud on S3,
                 pg_basebackup directories plus a WAL archive directory
    findings.py  restore tools' stderr into findings with stable codes
    provider.py  PostgresProvider: isolation, readiness, the primitives of cleaning up; dispatches to sources
    discover.py  selections of repositories (a list, or globs)
    schema.py    the postgres part of the drill format: PostgresTarget, its sources, PostgresProbe (no I/O, no driver)

Throwaway clusters, the installs, the sandbox and the data fingerprints are not the provider's own:
they are the local-PostgreSQL toolkit, drdrill/localpg/, shared with the evidence store and the checks.
"""
