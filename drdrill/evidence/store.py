"""The evidence store: PostgreSQL, append-only, hash-chained (psycopg 3).

Where: DRDRILL_EVIDENCE_DSN, or else an embedded PostgreSQL, one per state directory, with its data
in `<state dir>/evidence` (as root with the default state directory: /var/lib/drdrill/evidence) and
a private Unix socket under the cluster root. drdrill starts it on demand, and the command that
started it stops it when it ends (`embedded_server`). As root, its server runs as an account of its
own, and it admits only drdrill's own uid, by peer authentication: see access.py.

Schema `drdrill_evidence`, created and migrated by drdrill (`schema_version` holds what was applied):
- runs:   one row per drill run, keyed by drill id: the final record (spec as run, verdict, objectives,
          recovery points, isolation, teardown, started_by, drdrill version...) as canonical JSON,
          a few columns copied out of it for queries, the event count, the chain head and the record hash.
- events: every timeline event, validation result and finding, in order, each row holding the hash
          of its predecessor.
- log:    the signed log chaining the runs (drdrill/evidence/ledger.py), signed with a key kept outside
          the store (drdrill/evidence/signing.py).
- created_resources: every resource a drill created (drill id, provider, kind, id, scope, when),
          written by the activity that created it: the orphan sweep deletes nothing else.
UPDATE, DELETE and TRUNCATE are refused by triggers; `verify` recomputes everything anyway, because
whoever owns the database can disable a trigger; and no one without the key can sign a log entry.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import pwd
import stat
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterator, Optional

import psycopg

from drdrill.core.paths import default_state_dir
from drdrill.core.redact import redact
from drdrill.evidence.access import AccessError, access_files, evidence_user, secure_existing
from drdrill.evidence.chain import GENESIS, canonical, document_from_parts, record_hash, sha256, split_record, verify_rows
from drdrill.evidence.ledger import LogCheck, sign_entry, walk
from drdrill.evidence.signing import Signer
from drdrill.localpg.cluster import LocalCluster, cluster_root, run_user

SCHEMA = "drdrill_evidence"
EMBEDDED_DB = "drdrill_evidence"

MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "runs and hash-chained events",
        f"""
        CREATE TABLE {SCHEMA}.runs (
            drill_id        text PRIMARY KEY,
            workflow_run_id text NOT NULL DEFAULT '',
            name            text NOT NULL,
            verdict         text NOT NULL,
            declared        timestamptz NOT NULL,
            ended           timestamptz,
            started_by      text NOT NULL DEFAULT '',
            spec_sha256     text,
            drdrill_version text NOT NULL,
            rto_seconds     double precision,
            rpo_seconds     double precision,
            event_count     integer NOT NULL,
            chain_head      text NOT NULL,
            record          text NOT NULL,
            record_hash     text NOT NULL,
            recorded_at     timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX runs_declared ON {SCHEMA}.runs (declared);
        CREATE INDEX runs_name ON {SCHEMA}.runs (name, declared);
        CREATE TABLE {SCHEMA}.events (
            id          bigserial PRIMARY KEY,
            drill_id    text NOT NULL REFERENCES {SCHEMA}.runs (drill_id),
            seq         integer NOT NULL,
            kind        text NOT NULL,
            body        text NOT NULL,
            prev_hash   text NOT NULL,
            hash        text NOT NULL,
            recorded_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX events_run ON {SCHEMA}.events (drill_id, seq, id);
        """,
    ),
    (
        2,
        "append-only: refuse UPDATE, DELETE and TRUNCATE",
        f"""
        CREATE FUNCTION {SCHEMA}.refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'drdrill evidence is append-only: % on %.% refused', TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME;
        END $$;
        CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON {SCHEMA}.runs
            FOR EACH ROW EXECUTE FUNCTION {SCHEMA}.refuse_change();
        CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON {SCHEMA}.events
            FOR EACH ROW EXECUTE FUNCTION {SCHEMA}.refuse_change();
        CREATE TRIGGER no_truncate BEFORE TRUNCATE ON {SCHEMA}.runs
            FOR EACH STATEMENT EXECUTE FUNCTION {SCHEMA}.refuse_change();
        CREATE TRIGGER no_truncate BEFORE TRUNCATE ON {SCHEMA}.events
            FOR EACH STATEMENT EXECUTE FUNCTION {SCHEMA}.refuse_change();
        """,
    ),
    (
        3,
        "orphan sweeps, append-only",
        f"""
        CREATE TABLE {SCHEMA}.sweeps (
            sweep_id    text PRIMARY KEY,
            started     timestamptz NOT NULL,
            ended       timestamptz NOT NULL,
            dry_run     boolean NOT NULL,
            record      text NOT NULL,
            record_hash text NOT NULL,
            recorded_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX sweeps_started ON {SCHEMA}.sweeps (started);
        CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON {SCHEMA}.sweeps
            FOR EACH ROW EXECUTE FUNCTION {SCHEMA}.refuse_change();
        CREATE TRIGGER no_truncate BEFORE TRUNCATE ON {SCHEMA}.sweeps
            FOR EACH STATEMENT EXECUTE FUNCTION {SCHEMA}.refuse_change();
        """,
    ),
    (
        4,
        "the signed log of runs (drdrill/evidence/ledger.py), append-only",
        f"""
        CREATE TABLE {SCHEMA}.log (
            seq         bigint PRIMARY KEY,
            drill_id    text NOT NULL UNIQUE,
            entry       text NOT NULL,
            hash        text NOT NULL,
            signature   text NOT NULL,
            public_key  text NOT NULL,
            recorded_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON {SCHEMA}.log
            FOR EACH ROW EXECUTE FUNCTION {SCHEMA}.refuse_change();
        CREATE TRIGGER no_truncate BEFORE TRUNCATE ON {SCHEMA}.log
            FOR EACH STATEMENT EXECUTE FUNCTION {SCHEMA}.refuse_change();
        """,
    ),
    (
        5,
        "schedule syncs, append-only: since when a drill's schedule provably existed",
        f"""
        CREATE TABLE {SCHEMA}.schedule_syncs (
            id               bigserial PRIMARY KEY,
            drill            text NOT NULL,
            schedule_id      text NOT NULL,
            source           text NOT NULL DEFAULT '',
            action           text NOT NULL,
            schedule_created timestamptz,
            synced_at        timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX schedule_syncs_drill ON {SCHEMA}.schedule_syncs (drill, synced_at);
        CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON {SCHEMA}.schedule_syncs
            FOR EACH ROW EXECUTE FUNCTION {SCHEMA}.refuse_change();
        CREATE TRIGGER no_truncate BEFORE TRUNCATE ON {SCHEMA}.schedule_syncs
            FOR EACH STATEMENT EXECUTE FUNCTION {SCHEMA}.refuse_change();
        """,
    ),
    (
        6,
        "resources drdrill created (what the sweep may delete), append-only",
        f"""
        CREATE TABLE {SCHEMA}.created_resources (
            drill_id    text NOT NULL,
            provider    text NOT NULL,
            kind        text NOT NULL,
            id          text NOT NULL,
            scope       text NOT NULL DEFAULT '',
            created_at  timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (provider, kind, id, drill_id)
        );
        CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON {SCHEMA}.created_resources
            FOR EACH ROW EXECUTE FUNCTION {SCHEMA}.refuse_change();
        CREATE TRIGGER no_truncate BEFORE TRUNCATE ON {SCHEMA}.created_resources
            FOR EACH STATEMENT EXECUTE FUNCTION {SCHEMA}.refuse_change();
        """,
    ),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


class EvidenceStoreError(Exception):
    pass


class EvidenceConflict(EvidenceStoreError):
    """A second, different record for a drill id the store already holds."""


@dataclass
class VerifyResult:
    drill_id: str
    ok: bool
    message: str


# ------------------------------------------------------------------ where the store is

# As root, the store of root's default state directory (inside root's private home) lives here.
ROOT_STORE_HOME = Path("/var/lib/drdrill/evidence")
# Present in a store's socket directory when a drdrill command started its server: the last drdrill
# process to stop using the store stops that server (see embedded_server).
STOP_WHEN_UNUSED = "stop-when-unused"
# The embedded store keeps evidence for years: unlike throwaway clusters, it writes durably.
DURABLE = {
    "fsync": "on",
    "full_page_writes": "on",
    "synchronous_commit": "on",
    "shared_buffers": "32MB",
    "maintenance_work_mem": "64MB",
    "max_wal_size": "1GB",
}

log = logging.getLogger("drdrill.evidence")


def store_home(state_dir: Optional[str | Path] = None) -> Path:
    """The directory holding a state directory's embedded store: `<state dir>/evidence`.

    One exception: as root, the server runs as an unprivileged user, which cannot enter root's
    private home (0700). Rather than open root's home to every user, the store of root's default
    state directory (~/.local/state/drdrill) lives in /var/lib/drdrill/evidence."""
    state = Path(state_dir or default_state_dir()).expanduser().resolve()
    if run_user() is not None and state == _default_state_in_home():
        return ROOT_STORE_HOME
    return state / "evidence"


def _default_state_in_home() -> Optional[Path]:
    home = Path.home().resolve()
    base = Path(os.environ.get("XDG_STATE_HOME") or home / ".local" / "state").expanduser().resolve()
    default = base / "drdrill"
    return default if default.is_relative_to(home) else None


def embedded_cluster(state_dir: Optional[str | Path] = None):
    """The embedded evidence cluster of a state directory (not started).

    Its data (and server log) live in store_home(), so the evidence survives a cleaned /tmp or a
    reboot, and each state directory has its own. Its Unix socket must stay short (~107 bytes), so
    it lives under the cluster root, in a directory named after a hash of the store's home: two
    state directories never share a socket or a server."""
    home = store_home(state_dir)
    try:
        user = evidence_user()
    except AccessError as exc:
        raise EvidenceStoreError(str(exc)) from None
    cluster = LocalCluster(cluster_root() / f"evidence-{hashlib.sha256(str(home).encode()).hexdigest()[:12]}", user=user)
    cluster.data = home / "pgdata"
    cluster.log = home / "server.log"
    return cluster


def embedded_dsn(state_dir: Optional[str | Path] = None) -> str:
    """Start (once) the embedded evidence PostgreSQL of a state directory and return a DSN for its
    database. Inside embedded_server(), a server started here is stopped when the block ends."""
    cluster = embedded_cluster(state_dir)
    _note_old_layout(cluster)
    managed = _use(cluster)
    if _reachable(cluster, EMBEDDED_DB):  # already up (the common case): one connection, not a `pg_ctl status` per drill
        return cluster.dsn(EMBEDDED_DB)
    cluster.path.mkdir(mode=0o700, exist_ok=True)
    with open(cluster.path / "start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not _reachable(cluster):
                _forget_stale_pid(cluster)
                if cluster.running():  # up, but its socket directory was removed (a cleaned /tmp)
                    cluster.stop(mode="fast")
                _prepare_home(cluster.data.parent, cluster.user)
                if cluster.initialised:
                    secure_existing(cluster)
                cluster.create(
                    {"drdrill:evidence": "embedded evidence store (not a drill resource; never swept)", "data": str(cluster.data)},
                    DURABLE,
                    access=access_files(),
                )
                marker = cluster.path / STOP_WHEN_UNUSED
                if managed:
                    marker.touch()
                else:
                    marker.unlink(missing_ok=True)
            with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
                if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (EMBEDDED_DB,)).fetchone():
                    conn.execute(f'CREATE DATABASE "{EMBEDDED_DB}"')
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return cluster.dsn(EMBEDDED_DB)


def _reachable(cluster, dbname: str = "postgres") -> bool:
    try:
        with psycopg.connect(cluster.dsn(dbname), connect_timeout=5):
            return True
    except psycopg.OperationalError:
        return False


def _forget_stale_pid(cluster) -> None:
    """Remove a postmaster.pid that names no server of this data directory. The data outlives
    reboots, and after one the pid in a file left by a crash may belong to another process, which
    `pg_ctl status` would take for our server (and `stop` would signal). A postmaster works in
    its data directory, so ours is the process whose working directory that is."""
    pid_file = cluster.data / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return
    try:
        ours = os.readlink(f"/proc/{pid}/cwd") == os.path.realpath(cluster.data)
    except OSError:  # no such process, or not one of ours
        ours = False
    if not ours:
        pid_file.unlink(missing_ok=True)


def _prepare_home(home: Path, user: Optional[pwd.struct_passwd]) -> None:
    """Create the store's home. As root, the server's unprivileged user must reach the data
    directory inside it: the home is 0711 (root's, traversable, not listable) and every directory
    above it that this user cannot enter gets the search (x) permission it lacks, and only that:
    nothing becomes listable or readable. Each such change is logged."""
    home.mkdir(mode=0o711 if user else 0o700, parents=True, exist_ok=True)
    if user is None:
        return
    os.chmod(home, 0o711)
    groups = set(os.getgrouplist(user.pw_name, user.pw_gid))
    for d in reversed(home.parents):
        st = d.stat()
        bit = stat.S_IXUSR if st.st_uid == user.pw_uid else stat.S_IXGRP if st.st_gid in groups else stat.S_IXOTH
        if not st.st_mode & bit:
            os.chmod(d, stat.S_IMODE(st.st_mode) | bit)
            log.warning(
                "made %s traversable by %s (%o -> %o: enter only, not list) so the evidence server, which runs as %s, reaches %s",
                d, user.pw_name, stat.S_IMODE(st.st_mode), stat.S_IMODE(st.st_mode) | bit, user.pw_name, home,
            )


_noted_old: set[Path] = set()


def _note_old_layout(cluster) -> None:
    """Say once (per process) where a store of the old layout is. It is neither migrated nor deleted:
    its runs can be imported from their evidence files."""
    old = cluster.path.parent / f"evidence-{os.getuid()}"
    if old in _noted_old or not old.is_dir():
        return
    _noted_old.add(old)
    previous = LocalCluster(old)
    if not previous.data.exists():  # as a non-root user, the old layout kept its data in the state directory
        previous.data = Path(default_state_dir()).expanduser() / "evidence-pgdata"
    data = previous.data
    running = f"; its server still runs (stop it with `pg_ctl stop -D {data}`)" if previous.running() else ""
    log.warning(
        "an evidence store left by an older drdrill is in %s (data: %s)%s. It is no longer used and was "
        "left as it is; the store of this state directory is %s. To carry its runs over, import their "
        "evidence files: `drdrill evidence import %s`",
        old, data, running, cluster.data, Path(default_state_dir()).expanduser() / "runs",
    )


# ------------------------------------------------------------------ who stops the server

_guard = threading.Lock()
_depth = 0  # embedded_server() blocks open in this process
_held: dict[Path, tuple] = {}  # socket directory -> (cluster, users.lock held shared)


@contextmanager
def embedded_server() -> Iterator[None]:
    """The span of a drdrill command (or of a worker's life) for the embedded evidence store.

    An embedded server started inside the block (on the store's first use) is stopped when the
    block ends, so a command leaves no PostgreSQL behind. Every drdrill process that uses a store
    holds a shared lock on it while in the block; if another one still does when the block ends, the
    server is left to it, and the last one out stops it. A server that was already running without
    having been started this way (by hand, or by code outside any block) is left alone. Nestable;
    nothing to do with DRDRILL_EVIDENCE_DSN."""
    global _depth
    with _guard:
        _depth += 1
    try:
        yield
    finally:
        with _guard:
            _depth -= 1
            done = list(_held.values()) if _depth == 0 else []
            if _depth == 0:
                _held.clear()
        for cluster, users in done:
            try:
                _let_go(cluster, users)
            except Exception as exc:  # noqa: BLE001 - must not hide the command's own outcome
                log.warning("could not stop the evidence server of %s: %s", cluster.data, exc)


def _use(cluster) -> bool:
    """Inside embedded_server(): hold the store's shared `users.lock` until the block ends (waiting
    while another process is stopping its server). False outside any block."""
    with _guard:
        if _depth == 0:
            return False
        if cluster.path in _held:
            return True
    cluster.path.mkdir(mode=0o700, exist_ok=True)
    users = open(cluster.path / "users.lock", "a")
    fcntl.flock(users, fcntl.LOCK_SH)
    with _guard:
        if cluster.path in _held:  # another thread of this process got there first
            users.close()
        else:
            _held[cluster.path] = (cluster, users)
    return True


def _let_go(cluster, users) -> None:
    """Stop the store's server if a drdrill command started it and no other drdrill process uses it."""
    try:
        try:
            fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # still in use elsewhere: the last one out stops it
        marker = cluster.path / STOP_WHEN_UNUSED
        if marker.exists():
            _forget_stale_pid(cluster)
            cluster.stop(mode="fast")
            marker.unlink(missing_ok=True)
    finally:
        users.close()


def evidence_dsn(state_dir: Optional[str | Path] = None) -> str:
    """DRDRILL_EVIDENCE_DSN, else the embedded store of `state_dir` (default: the state directory)."""
    return os.environ.get("DRDRILL_EVIDENCE_DSN") or embedded_dsn(state_dir)


@contextmanager
def open_store(dsn: Optional[str] = None, state_dir: Optional[str | Path] = None) -> Iterator["EvidenceStore"]:
    """The evidence store at `dsn`, else the one of `state_dir` (evidence_dsn), migrated."""
    store = EvidenceStore(dsn or evidence_dsn(state_dir))
    try:
        store.migrate()
        yield store
    finally:
        store.close()


# ------------------------------------------------------------------ the store


def _dt(value: Optional[str]) -> Optional[datetime]:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


class EvidenceStore:
    def __init__(self, dsn: str):
        try:
            self.conn = psycopg.connect(dsn, connect_timeout=10, autocommit=True)
        except psycopg.OperationalError as exc:
            raise EvidenceStoreError(f"cannot reach the evidence store: {redact(str(exc)).strip()}") from None

    def close(self) -> None:
        self.conn.close()

    # -------------------------------------------------------------- schema

    def version(self) -> int:
        with self.conn.transaction():
            exists = self.conn.execute("SELECT to_regclass(%s)", (f"{SCHEMA}.schema_version",)).fetchone()[0]
            if not exists:
                return 0
            return self.conn.execute(f"SELECT coalesce(max(version), 0) FROM {SCHEMA}.schema_version").fetchone()[0]

    def migrate(self) -> int:
        """Bring the schema to SCHEMA_VERSION (serialised by an advisory lock). Returns the version."""
        if self.version() == SCHEMA_VERSION:
            return SCHEMA_VERSION
        with self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(hashtext('drdrill_evidence_migrate'))")
            self.conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
            self.conn.execute(
                f"CREATE TABLE IF NOT EXISTS {SCHEMA}.schema_version ("
                "version integer PRIMARY KEY, description text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            current = self.conn.execute(f"SELECT coalesce(max(version), 0) FROM {SCHEMA}.schema_version").fetchone()[0]
            if current > SCHEMA_VERSION:
                raise EvidenceStoreError(
                    f"the evidence store has schema version {current}, newer than this drdrill ({SCHEMA_VERSION}): upgrade drdrill"
                )
            for version, description, sql in MIGRATIONS:
                if version > current:
                    self.conn.execute(sql)
                    self.conn.execute(
                        f"INSERT INTO {SCHEMA}.schema_version (version, description) VALUES (%s, %s)", (version, description)
                    )
        return SCHEMA_VERSION

    # -------------------------------------------------------------- writing

    def record(self, doc: dict, signer: Signer) -> bool:
        """Store one run's evidence document (drdrill.evidence.chain.evidence_document) and append it,
        signed, to the log. Idempotent on the drill id: the same document again stores nothing and
        returns False; a different one for a drill id already stored raises EvidenceConflict."""
        record = split_record(doc)
        run = doc["drill_id"]
        with self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(hashtext('drdrill_evidence_log'))")  # one writer of the log at a time
            row = self.conn.execute(
                f"""INSERT INTO {SCHEMA}.runs (drill_id, workflow_run_id, name, verdict, declared, ended, started_by,
                        spec_sha256, drdrill_version, rto_seconds, rpo_seconds, event_count, chain_head, record, record_hash)
                    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                    ON CONFLICT (drill_id) DO NOTHING RETURNING drill_id""",
                (
                    run,
                    doc.get("run_id") or "",
                    doc["name"],
                    doc["verdict"],
                    _dt(doc["declared"]),
                    _dt(doc.get("ended")),
                    doc.get("started_by") or "",
                    doc.get("spec_sha256"),
                    doc["drdrill_version"],
                    doc.get("rto_seconds"),
                    doc.get("rpo_seconds"),
                    len(doc["events"]),
                    doc["chain_head"],
                    canonical(record),
                    doc["record_hash"],
                ),
            ).fetchone()
            if row is None:
                stored = self.conn.execute(f"SELECT record_hash, verdict FROM {SCHEMA}.runs WHERE drill_id = %s", (run,)).fetchone()
                if stored[0] != doc["record_hash"]:
                    raise EvidenceConflict(
                        f"run {run} is already in the evidence store with a different record (verdict {stored[1]}, record hash "
                        f"{stored[0][:12]}…; this one: verdict {doc['verdict']}, {doc['record_hash'][:12]}…): refused, the stored one stands"
                    )
                return False
            with self.conn.cursor() as cur:
                cur.executemany(
                    f"INSERT INTO {SCHEMA}.events (drill_id, seq, kind, body, prev_hash, hash) VALUES (%s, %s, %s, %s, %s, %s)",
                    [(run, e["seq"], e["kind"], canonical(e["content"]), e["prev_hash"], e["hash"]) for e in doc["events"]],
                )
            self._append_log(doc, signer)
        return True

    def _append_log(self, doc: dict, signer: Signer) -> None:
        """Sign the run into the log (inside record's transaction, under its lock). A store that held
        runs before the log began has them adopted first, oldest first."""
        last = self.conn.execute(f"SELECT seq, hash FROM {SCHEMA}.log ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (last[0] + 1, last[1]) if last else (0, GENESIS)
        todo: list[tuple[dict, bool]] = []
        if last is None:
            older = self.conn.execute(
                f"SELECT record, record_hash FROM {SCHEMA}.runs WHERE drill_id <> %s ORDER BY recorded_at, declared, drill_id", (doc["drill_id"],)
            ).fetchall()
            todo = [({**json.loads(r), "record_hash": h}, True) for r, h in older]
        for item, adopted in todo + [(doc, False)]:
            entry = sign_entry(signer, seq, prev, item, adopted)
            self.conn.execute(
                f"INSERT INTO {SCHEMA}.log (seq, drill_id, entry, hash, signature, public_key) VALUES (%s, %s, %s, %s, %s, %s)",
                (seq, entry["drill_id"], entry["entry"], entry["hash"], entry["signature"], entry["public_key"]),
            )
            seq, prev = seq + 1, entry["hash"]

    def record_sweep(self, record: dict) -> bool:
        """Store one orphan sweep (a redacted SweepRecord as JSON). Idempotent on the sweep id."""
        text = canonical(record)
        with self.conn.transaction():
            row = self.conn.execute(
                f"""INSERT INTO {SCHEMA}.sweeps (sweep_id, started, ended, dry_run, record, record_hash)
                    VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (sweep_id) DO NOTHING RETURNING sweep_id""",
                (record["sweep_id"], _dt(record["started"]), _dt(record["ended"]), bool(record.get("dry_run")), text, sha256(text)),
            ).fetchone()
        return row is not None

    def record_created(self, drill_id: str, provider: str, resources: list[tuple[str, str, str]]) -> int:
        """Record that drill `drill_id` created these (kind, id, scope) of `provider`: the only
        resources an orphan sweep may delete. Idempotent; returns how many rows were new."""
        if not resources:
            return 0
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.executemany(
                f"""INSERT INTO {SCHEMA}.created_resources (drill_id, provider, kind, id, scope) VALUES (%s, %s, %s, %s, %s)
                    ON CONFLICT DO NOTHING""",
                [(drill_id, provider, kind, rid, scope or "") for kind, rid, scope in resources],
            )
            return max(cur.rowcount, 0)

    def created(self, provider: str) -> dict[tuple[str, str], list[str]]:
        """(kind, id) -> the drills that recorded creating it, for `provider`."""
        rows = self.conn.execute(
            f"SELECT kind, id, drill_id FROM {SCHEMA}.created_resources WHERE provider = %s ORDER BY created_at", (provider,)
        ).fetchall()
        out: dict[tuple[str, str], list[str]] = {}
        for kind, rid, drill in rows:
            out.setdefault((kind, rid), []).append(drill)
        return out

    def sweeps(self, since: Optional[datetime] = None, until: Optional[datetime] = None) -> list[dict]:
        """Stored sweeps, oldest first."""
        with self.conn.transaction():
            rows = self.conn.execute(
                f"SELECT record FROM {SCHEMA}.sweeps WHERE started >= coalesce(%s, '-infinity'::timestamptz) "
                f"AND started < coalesce(%s, 'infinity'::timestamptz) ORDER BY started, sweep_id",
                (since, until),
            ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def record_schedule_sync(self, rows: list[dict], at: Optional[datetime] = None) -> None:
        """Record what one `drdrill schedule sync` did: {drill, schedule_id, source, action,
        schedule_created} per drill schedule (the period report counts missed drills from these)."""
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO {SCHEMA}.schedule_syncs (drill, schedule_id, source, action, schedule_created, synced_at) "
                "VALUES (%s, %s, %s, %s, %s, coalesce(%s, now()))",
                [(r["drill"], r["schedule_id"], r.get("source") or "", r["action"], r.get("schedule_created"), at) for r in rows],
            )

    def schedule_since(self) -> dict[str, dict]:
        """{drill name: {first_sync, schedule_created, first_run}}: the earliest recorded sync of its
        schedule, the earliest creation time Temporal reported for it, and its first recorded run."""
        with self.conn.transaction():
            syncs = self.conn.execute(
                f"SELECT drill, min(synced_at), min(schedule_created) FROM {SCHEMA}.schedule_syncs "
                "WHERE action <> 'delete' GROUP BY drill"
            ).fetchall()
            runs = self.conn.execute(f"SELECT name, min(declared) FROM {SCHEMA}.runs GROUP BY name").fetchall()
        out: dict[str, dict] = {}
        for name, first in runs:
            out.setdefault(name, {"first_sync": None, "schedule_created": None})["first_run"] = first
        for name, first, created in syncs:
            out.setdefault(name, {"first_run": None}).update(first_sync=first, schedule_created=created)
        return out

    # -------------------------------------------------------------- reading

    def _rows(self, drill_id: str) -> list[dict]:
        rows = self.conn.execute(
            f"SELECT seq, kind, body, prev_hash, hash FROM {SCHEMA}.events WHERE drill_id = %s ORDER BY seq, id", (drill_id,)
        ).fetchall()
        out = []
        for seq, kind, body, prev, digest in rows:
            try:
                content = json.loads(body)
            except ValueError:
                content = body  # unparseable: verify reports it as altered
            out.append({"run": drill_id, "seq": seq, "kind": kind, "content": content, "prev_hash": prev, "hash": digest})
        return out

    def _run_row(self, drill_id: str):
        return self.conn.execute(
            f"SELECT drill_id, name, verdict, declared, event_count, chain_head, record, record_hash FROM {SCHEMA}.runs WHERE drill_id = %s",
            (drill_id,),
        ).fetchone()

    def load(self, drill_id: str) -> dict:
        """The run's evidence document, as stored, with its signed log entry (`log_entry`)."""
        with self.conn.transaction():
            run = self._run_row(drill_id)
            if run is None:
                raise KeyError(drill_id)
            rows = self._rows(drill_id)
            entry = self._log("drill_id = %s", (drill_id,))
        doc = document_from_parts(json.loads(run[6]), rows, run[5], run[7])
        doc["log_entry"] = entry[0] if entry else None
        return doc

    def _log(self, where: str = "true", args: tuple = ()) -> list[dict]:
        rows = self.conn.execute(
            f"SELECT seq, drill_id, entry, hash, signature, public_key FROM {SCHEMA}.log WHERE {where} ORDER BY seq", args
        ).fetchall()
        out = []
        for seq, run, entry, digest, signature, public_key in rows:
            try:
                alg = json.loads(entry).get("alg")
            except (ValueError, AttributeError):
                alg = None
            out.append({"seq": seq, "drill_id": run, "entry": entry, "hash": digest, "signature": signature, "public_key": public_key, "alg": alg})
        return out

    def log_head(self) -> Optional[dict]:
        """The newest entry of the signed log (what a bundle anchors), or None."""
        with self.conn.transaction():
            head = self._log(f"seq = (SELECT max(seq) FROM {SCHEMA}.log)")
        return head[0] if head else None

    def log_between(self, first: int, last: int) -> list[dict]:
        with self.conn.transaction():
            return self._log("seq BETWEEN %s AND %s", (first, last))

    def verify_log(self, trusted: dict[str, str], anchor: Optional[dict] = None) -> LogCheck:
        """Walk the signed log (drdrill/evidence/ledger.py): signatures by trusted keys, the chain,
        every stored run in it with the record it signed; and, with `anchor`, the anchored head."""
        with self.conn.transaction():
            rows = self._log()
            runs = {
                r[0]: {"record_hash": r[1], "verdict": r[2]}
                for r in self.conn.execute(f"SELECT drill_id, record_hash, verdict FROM {SCHEMA}.runs").fetchall()
            }
        return walk(rows, runs, trusted, anchor)

    def drill_ids(self, since: Optional[datetime] = None, until: Optional[datetime] = None, name: Optional[str] = None) -> list[str]:
        sql = f"SELECT drill_id FROM {SCHEMA}.runs WHERE true"
        args: list = []
        if since is not None:
            sql += " AND declared >= %s"
            args.append(since)
        if until is not None:
            sql += " AND declared < %s"
            args.append(until)
        if name:
            sql += " AND name = %s"
            args.append(name)
        with self.conn.transaction():
            return [r[0] for r in self.conn.execute(sql + " ORDER BY declared, drill_id", args).fetchall()]

    def runs(self, since: Optional[datetime] = None, until: Optional[datetime] = None, name: Optional[str] = None) -> list[dict]:
        return [self.load(d) for d in self.drill_ids(since, until, name)]

    def latest(self) -> Optional[str]:
        with self.conn.transaction():
            row = self.conn.execute(f"SELECT drill_id FROM {SCHEMA}.runs ORDER BY recorded_at DESC, declared DESC LIMIT 1").fetchone()
        return row[0] if row else None

    # -------------------------------------------------------------- verifying

    def verify(self, drill_id: Optional[str] = None) -> list[VerifyResult]:
        """Recompute the chain of one run (or every run); each result names the first bad row."""
        with self.conn.transaction():
            if drill_id is not None:
                ids = [drill_id]
            else:
                ids = [
                    r[0]
                    for r in self.conn.execute(
                        f"SELECT drill_id FROM {SCHEMA}.runs UNION SELECT drill_id FROM {SCHEMA}.events ORDER BY 1"
                    ).fetchall()
                ]
            return [self._verify_one(d) for d in ids]

    def _verify_one(self, drill_id: str) -> VerifyResult:
        run = self._run_row(drill_id)
        rows = self._rows(drill_id)
        if run is None:
            if rows:
                return VerifyResult(drill_id, False, f"run {drill_id} final record missing ({len(rows)} events without it)")
            return VerifyResult(drill_id, False, f"run {drill_id}: no evidence recorded")
        _, name, verdict, declared, count, head, record_text, rhash = run
        try:
            record = json.loads(record_text)
        except ValueError:
            return VerifyResult(drill_id, False, f"run {drill_id} final record: content altered (not JSON)")
        ok, message = verify_rows(drill_id, rows, head=head, count=count)
        if not ok:
            return VerifyResult(drill_id, False, message)
        if record_hash(head, record) != rhash or record.get("event_count") != count:
            return VerifyResult(drill_id, False, f"run {drill_id} final record: content altered")
        copied = (record.get("name") == name, record.get("verdict") == verdict, _dt(record.get("declared")) == declared)
        if not all(copied):
            return VerifyResult(drill_id, False, f"run {drill_id} final record: content altered (name, verdict or declared time changed)")
        return VerifyResult(drill_id, True, message)
