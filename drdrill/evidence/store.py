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

Where the embedded store lives, and who starts and stops its server: embedded.py.
"""

from __future__ import annotations

import json
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterator, Optional

import psycopg

from drdrill.core.redact import redact
from drdrill.evidence.chain import GENESIS, canonical, document_from_parts, record_hash, sha256, split_record, verify_rows
from drdrill.evidence.ledger import LogCheck, sign_entry, walk
from drdrill.evidence.signing import Signer
from drdrill.evidence.embedded import EvidenceStoreError, evidence_dsn

SCHEMA = "drdrill_evidence"

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


class EvidenceConflict(EvidenceStoreError):
    """A second, different record for a drill id the store already holds."""


@dataclass
class VerifyResult:
    drill_id: str
    ok: bool
    message: str


@contextmanager
def open_store(dsn: Optional[str] = None, state_dir: Optional[str | Path] = None) -> Iterator["EvidenceStore"]:
    """The evidence store at `dsn`, else the one of `state_dir` (evidence_dsn), migrated."""
    store = EvidenceStore(dsn or evidence_dsn(state_dir))
    try:
        store.migrate()
        yield store
    finally:
        store.close()


class StorePool:
    """Evidence-store connections kept open between uses by one process's activities, as open_store
    gives them (schema checked at every use), at most `keep` of them idle. A burst of drills opened
    a new PostgreSQL connection (a server process forked, authenticated, ended) four times per
    drill (bench/RESULTS.md §18). A connection that saw an error is closed, never reused; one the
    server closed while it was idle is replaced once."""

    def __init__(self, keep: int = 4):
        self.keep = keep
        self._idle: list[EvidenceStore] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def _take(self, dsn: str) -> Optional["EvidenceStore"]:
        with self._lock:
            if self._pid != os.getpid():  # a forked child must not share its parent's sockets
                self._idle, self._pid = [], os.getpid()
            for i, store in enumerate(self._idle):
                if store.dsn == dsn:
                    return self._idle.pop(i)
        return None

    @contextmanager
    def open(self, dsn: Optional[str] = None, state_dir: Optional[str | Path] = None) -> Iterator["EvidenceStore"]:
        target = dsn or evidence_dsn(state_dir)
        store = self._take(target)
        if store is not None:
            try:
                store.migrate()
            except psycopg.OperationalError:  # closed by the server while idle: a new one below
                store.close()
                store = None
            except BaseException:
                store.close()
                raise
        if store is None:
            store = EvidenceStore(target)
            try:
                store.migrate()
            except BaseException:
                store.close()
                raise
        try:
            yield store
        except BaseException:
            store.close()
            raise
        with self._lock:
            if len(self._idle) < self.keep and not store.conn.closed:
                self._idle.append(store)
                return
        store.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for store in idle:
            store.close()


# ------------------------------------------------------------------ the store


def _dt(value: Optional[str]) -> Optional[datetime]:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


class EvidenceStore:
    def __init__(self, dsn: str):
        self.dsn = dsn
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

    def log_entry(self, drill_id: str) -> Optional[dict]:
        """The run's signed log entry, as `load` gives it in `log_entry` (without reading the run back)."""
        with self.conn.transaction():
            entry = self._log("drill_id = %s", (drill_id,))
        return entry[0] if entry else None

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
