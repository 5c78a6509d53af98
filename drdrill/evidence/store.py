"""The evidence store: PostgreSQL, append-only, hash-chained (psycopg 3).

Where: DRDRILL_EVIDENCE_DSN, or else an embedded PostgreSQL that drdrill starts on demand (a
LocalCluster on a private Unix socket under the cluster root) and leaves running between commands.

Schema `drdrill_evidence`, created and migrated by drdrill (`schema_version` holds what was applied):
- runs:   one row per drill run, keyed by drill id: the final record (spec as run, verdict, objectives,
          recovery points, isolation, teardown, started_by, drdrill version...) as canonical JSON,
          a few columns copied out of it for queries, the event count, the chain head and the record hash.
- events: every timeline event, validation result and finding, in order, each row holding the hash
          of its predecessor.
UPDATE, DELETE and TRUNCATE are refused by triggers; `verify` recomputes everything anyway, because
whoever owns the database can disable a trigger.
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterator, Optional

import psycopg

from drdrill.evidence.chain import canonical, document_from_parts, record_hash, sha256, split_record, verify_rows

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
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


class EvidenceStoreError(Exception):
    pass


@dataclass
class VerifyResult:
    drill_id: str
    ok: bool
    message: str


# ------------------------------------------------------------------ where the store is


def embedded_cluster():
    """The embedded evidence cluster (not started). Its socket must stay short, so its directory is
    under the cluster root; when we are not root, its data directory is in the state directory so the
    evidence survives a cleaned /tmp. As root the server runs as an unprivileged user that cannot
    enter root's home, so the data stays beside the socket under the cluster root."""
    from drdrill.core.paths import default_state_dir
    from drdrill.providers.postgres.cluster import LocalCluster, cluster_root, run_user

    cluster = LocalCluster(cluster_root() / f"evidence-{os.getuid()}")
    if run_user() is None:
        state = Path(default_state_dir()).expanduser()
        state.mkdir(parents=True, exist_ok=True)
        cluster.data = state / "evidence-pgdata"
    return cluster


def embedded_dsn() -> str:
    """Start (once) the embedded evidence PostgreSQL and return a DSN for its database."""
    cluster = embedded_cluster()
    try:  # already up (the common case): one connection, not a `pg_ctl status` subprocess per drill
        with psycopg.connect(cluster.dsn(EMBEDDED_DB), connect_timeout=5):
            return cluster.dsn(EMBEDDED_DB)
    except psycopg.OperationalError:
        pass
    cluster.path.mkdir(mode=0o700, exist_ok=True)
    with open(cluster.path / "start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not cluster.running():
                cluster.create({"drdrill:evidence": "embedded evidence store (not a drill resource; never swept)"})
            with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
                if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (EMBEDDED_DB,)).fetchone():
                    conn.execute(f'CREATE DATABASE "{EMBEDDED_DB}"')
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return cluster.dsn(EMBEDDED_DB)


def evidence_dsn() -> str:
    return os.environ.get("DRDRILL_EVIDENCE_DSN") or embedded_dsn()


def record_sweep(record: dict) -> bool:
    """Keep an orphan sweep in the evidence store (DRDRILL_EVIDENCE_DSN or the embedded one)."""
    with open_store() as store:
        return store.record_sweep(record)


@contextmanager
def open_store(dsn: Optional[str] = None) -> Iterator["EvidenceStore"]:
    store = EvidenceStore(dsn or evidence_dsn())
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
            from drdrill.core.redact import redact

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

    def record(self, doc: dict) -> bool:
        """Store one run's evidence document (drdrill.evidence.chain.evidence_document). Idempotent on
        the drill id: a second call stores nothing and returns False."""
        record = split_record(doc)
        run = doc["drill_id"]
        with self.conn.transaction():
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
                return False
            with self.conn.cursor() as cur:
                cur.executemany(
                    f"INSERT INTO {SCHEMA}.events (drill_id, seq, kind, body, prev_hash, hash) VALUES (%s, %s, %s, %s, %s, %s)",
                    [(run, e["seq"], e["kind"], canonical(e["content"]), e["prev_hash"], e["hash"]) for e in doc["events"]],
                )
        return True

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

    def sweeps(self, since: Optional[datetime] = None, until: Optional[datetime] = None) -> list[dict]:
        """Stored sweeps, oldest first."""
        with self.conn.transaction():
            rows = self.conn.execute(
                f"SELECT record FROM {SCHEMA}.sweeps WHERE started >= coalesce(%s, '-infinity'::timestamptz) "
                f"AND started < coalesce(%s, 'infinity'::timestamptz) ORDER BY started, sweep_id",
                (since, until),
            ).fetchall()
        return [json.loads(r[0]) for r in rows]

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
        """The run's evidence document, as stored."""
        with self.conn.transaction():
            run = self._run_row(drill_id)
            if run is None:
                raise KeyError(drill_id)
            rows = self._rows(drill_id)
        return document_from_parts(json.loads(run[6]), rows, run[5], run[7])

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
