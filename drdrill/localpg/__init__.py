"""The local-PostgreSQL toolkit: throwaway clusters on this machine, the installs they run, the
sandbox every restore process runs in, and the catalog and data reads that judge a restore.

It sits below the providers, the evidence store and the checks, and serves all of them: the
postgres provider restores into its clusters, the embedded evidence store is one of its clusters,
validation fingerprints tables with `data`, `drdrill demo` runs its sample production in one,
`drdrill reference` reads structure with `inspect`. It knows no drill format and no provider.

    cluster.py     LocalCluster (initdb, pg_ctl, sandboxed start), the cluster root, tool paths
    binaries.py    the PostgreSQL installs of this machine, by major version
    sandbox.py     bubblewrap around every restore process: own uid, `lo` only, PID namespace
    safefs.py      file work as root that never follows a link
    backupconf.py  a recovered backup's configuration set aside, drdrill's written instead
    data.py        table listing and content fingerprints (backups write them, validations check them)
    inspect.py     a restored database's catalog: sequences, materialized views, structure references

Import the module you need (`from drdrill.localpg.cluster import LocalCluster`); this package
file re-exports nothing.
"""
