"""`drdrill demo`: a complete PostgreSQL drill on a machine with nothing running.

1. a sample "production" database in a throwaway cluster (private socket), with a writer adding orders;
2. a backup of it (`drdrill backup`'s code) into the state directory;
3. the drill `drills/demo-postgres.yaml` on an embedded Temporal dev server and worker;
4. the result, where the evidence is, and everything the demo made cleaned up (unless --keep).

`drdrill demo --pitr`: the same for point-in-time recovery: a cluster archiving WAL into a
pgBackRest stanza, a full backup, an order a second, a "disaster", and drills/pgbackrest-pitr.yaml
aimed at 20 seconds before it, its boundary check showing the moment held.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Iterator

import psycopg
from rich.console import Console

from app.runtime import state_dir
from drdrill.providers.spec import DrillSpec, load_spec, parse_spec
from drdrill.providers.postgres.backup import take_backup
from drdrill.localpg.cluster import LocalCluster, cluster_root

DRILL = Path(__file__).resolve().parents[1] / "drills" / "demo-postgres.yaml"

SEED = """
CREATE TABLE IF NOT EXISTS customers (id serial PRIMARY KEY, name text NOT NULL, email text UNIQUE, created_at timestamptz DEFAULT now());
CREATE TABLE IF NOT EXISTS products (id serial PRIMARY KEY, sku text UNIQUE, price numeric(10,2));
CREATE TABLE IF NOT EXISTS orders (
    id bigserial PRIMARY KEY, customer_id int REFERENCES customers(id), product_id int REFERENCES products(id),
    quantity int NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS order_events (id bigserial PRIMARY KEY, order_id bigint, kind text, at timestamptz DEFAULT now());
INSERT INTO customers (name, email) SELECT 'Customer ' || g, 'customer' || g || '@shop.example' FROM generate_series(1, 1000) g ON CONFLICT DO NOTHING;
INSERT INTO products (sku, price) SELECT 'SKU-' || g, (g % 97) + 0.99 FROM generate_series(1, 200) g ON CONFLICT DO NOTHING;
INSERT INTO orders (customer_id, product_id, quantity, created_at)
    SELECT 1 + g % 1000, 1 + g % 200, 1 + g % 5, now() - make_interval(secs => 20000 - g) FROM generate_series(1, 20000) g;
INSERT INTO order_events (order_id, kind) SELECT g, 'created' FROM generate_series(1, 20000) g;
"""


class Writer(threading.Thread):
    """Production keeps writing while we back up and drill: that is what makes RPO real."""

    def __init__(self, dsn: str):
        super().__init__(daemon=True)
        self.dsn = dsn
        self.stop = threading.Event()
        self.rows = 0

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stop.wait(0.1):
                conn.execute(
                    "WITH o AS (INSERT INTO orders (customer_id, product_id, quantity) VALUES (1 + (random()*999)::int, 1 + (random()*199)::int, 1) RETURNING id) "
                    "INSERT INTO order_events (order_id, kind) SELECT id, 'created' FROM o"
                )
                self.rows += 1


@contextmanager
def sample_production(console: Console, keep: bool = False) -> Iterator[DrillSpec]:
    """A sample production database with a writer and a fresh backup; yields the demo drill to run.

    Afterwards the writer stops and the database is removed (unless `keep`); the drill's output names its report."""
    state = state_dir()
    prod = LocalCluster(cluster_root() / f"demo-production-{os.getuid()}")
    console.print("[bold]drdrill demo[/]: a PostgreSQL drill, end to end")
    console.print(f"  state directory   {state}")
    try:
        prod.create({"drdrill:demo": "sample production database (not a drill resource)"})
        with psycopg.connect(prod.dsn(), autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = 'shop'").fetchone():
                conn.execute("CREATE DATABASE shop")
        dsn = prod.dsn("shop")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SEED)
    except BaseException:
        prod.destroy()  # a demo that could not start leaves nothing behind, --keep or not
        raise
    os.environ["DEMO_SHOP_DSN"] = dsn
    writer = Writer(dsn)
    writer.start()
    console.print(f"  production        {prod.path} (database shop, a writer adding orders)")
    drilled = False
    try:
        spec = load_spec(DRILL)
        point = take_backup(dsn, spec.targets[0].source.repository)
        console.print(f"  backup            {point}")
        console.print()
        drilled = True
        yield spec
    finally:
        writer.stop.set()
        writer.join(timeout=5)
        if not keep or not drilled:  # --keep keeps a database that was drilled, never a half-made one
            prod.destroy()
    console.print(f"  the writer added {writer.rows} orders during the demo; the backup and the drill's RPO account for them")


# ---------------------------------------------------------------------- drdrill demo --pitr

PITR_DRILL = DRILL.parent / "pgbackrest-pitr.yaml"
PITR_WRITE_BEFORE_DISASTER = 30  # seconds of orders written between the backup and the disaster
PITR_REWIND = 20  # the drill recovers to this many seconds before the disaster


class OrderWriter(Writer):
    """One order a second, each stamped with the moment it was written: the boundary holds to the second."""

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while True:
                conn.execute("INSERT INTO orders (amount) VALUES (round((random() * 100)::numeric, 2))")
                self.rows += 1
                if self.stop.wait(1.0):  # allowed: the writer's pacing, one order a second
                    return


def _pgbackrest(conf: Path, *args: str) -> str:
    from drdrill.localpg.cluster import run_user

    user = run_user()
    ids = {"user": user.pw_uid, "group": user.pw_gid} if user else {}
    proc = subprocess.run(["pgbackrest", f"--config={conf}", "--stanza=main", *args], capture_output=True, text=True, **ids)
    if proc.returncode != 0:
        raise RuntimeError(f"pgbackrest {args[0]} failed: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


def _archived(conn: psycopg.Connection) -> None:
    """Close the current WAL segment and wait until the archiver has pushed it into the repository."""
    segment = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
    deadline = time.monotonic() + 120
    while (conn.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()[0] or "") < segment:
        if time.monotonic() > deadline:
            raise RuntimeError(f"WAL segment {segment} was not archived within 2 minutes (see the production server's log)")
        time.sleep(0.1)  # allowed: polling the archiver (a condition)


@contextmanager
def sample_pitr_production(console: Console, keep: bool = False) -> Iterator[DrillSpec]:
    """A sample production cluster archiving WAL into a pgBackRest stanza under the state directory,
    a full backup, an order written every second, and a "disaster" (DELETE FROM orders, no WHERE);
    yields drills/pgbackrest-pitr.yaml aimed at 20 seconds before the disaster.

    Afterwards the writer and the cluster stop, and the stanza is removed (unless `keep`)."""
    if shutil.which("pgbackrest") is None:
        raise DemoUnavailable("pgbackrest is not installed: `apt-get install pgbackrest` (Debian/Ubuntu), then run it again")
    state = state_dir()
    prod = LocalCluster(cluster_root() / f"demo-pitr-production-{os.getuid()}")
    home, conf = _pitr_stanza(state, prod)
    console.print("[bold]drdrill demo --pitr[/]: point-in-time recovery from pgBackRest, end to end")
    console.print(f"  state directory   {state}")
    writer = None
    drilled = False
    try:
        dsn = _archiving_production(prod, conf)
        _pgbackrest(conf, "stanza-create")
        console.print(f"  production        {prod.path} (WAL archived by pgBackRest into {home / 'repo'})")
        _pgbackrest(conf, "backup", "--type=full")
        label = json.loads(_pgbackrest(conf, "info", "--output=json"))[0]["backup"][-1]["label"]
        console.print(f"  full backup       {label}")
        writer = OrderWriter(dsn)
        writer.start()
        console.print(f"  writer            one order a second, for {PITR_WRITE_BEFORE_DISASTER}s ...")
        writer.stop.wait(PITR_WRITE_BEFORE_DISASTER)  # allowed: the demo lets production run a while
        writer.stop.set()
        writer.join()
        with psycopg.connect(dsn, autocommit=True) as conn:
            disaster = conn.execute("SELECT clock_timestamp()").fetchone()[0]
            lost = conn.execute("DELETE FROM orders").rowcount
            _archived(conn)
        target = disaster - timedelta(seconds=PITR_REWIND)
        console.print(f"  disaster          {disaster:%H:%M:%S.%f}Z: DELETE FROM orders (no WHERE) removed {lost} orders")
        console.print(f"  drill             to {target:%H:%M:%S.%f}Z, {PITR_REWIND}s before the disaster")
        console.print()
        spec = _pitr_spec(conf, target)
        drilled = True
        yield spec
    finally:
        if writer is not None:
            writer.stop.set()
            writer.join(timeout=5)
        if not keep or not drilled:  # --keep keeps what was drilled, never a half-made stanza
            prod.destroy()
            shutil.rmtree(home, ignore_errors=True)
    console.print("  the boundary check shows the orders written up to the moment came back, and none after it")


def _pitr_stanza(state: Path, prod: LocalCluster) -> tuple[Path, Path]:
    """The demo's pgBackRest stanza directory and its configuration, for the production cluster `prod`.

    It lives under the state directory, where the server's user can reach it (as root with the
    default state directory, beside the evidence store in /var/lib/drdrill): never in /tmp."""
    from drdrill.evidence.embedded import prepare_home, store_home
    from drdrill.localpg.cluster import run_user

    home = store_home(state).parent / "pitr-demo"
    prepare_home(home)
    user = run_user()
    for d in (home / "repo", home / "lock", home / "log"):
        d.mkdir(parents=True, exist_ok=True)
        if user is not None:
            os.chown(d, user.pw_uid, user.pw_gid)
    conf = home / "pgbackrest.conf"
    conf.write_text(
        f"[global]\nrepo1-path={home / 'repo'}\nrepo1-retention-full=2\nlock-path={home / 'lock'}\nlog-path={home / 'log'}\n"
        f"log-level-file=off\nstart-fast=y\n[main]\npg1-path={prod.data}\npg1-socket-path={prod.sock}\npg1-port=5432\npg1-user=drdrill\n"
    )
    os.chmod(conf, 0o644)
    return home, conf


def _archiving_production(prod: LocalCluster, conf: Path) -> str:
    """Create the sample production cluster, archiving its WAL into the stanza, with the `shop`
    database and its `orders` table; return the database's DSN."""
    prod.create(
        {"drdrill:demo": "sample production cluster for the PITR demo (not a drill resource)"},
        settings={
            "wal_level": "replica",
            "archive_mode": "on",
            "archive_command": f"'pgbackrest --config={conf} --stanza=main archive-push %p'",
            "max_wal_senders": "4",
        },
        checksums=True,  # as a production cluster should: the drill checks the restored pages
    )
    with psycopg.connect(prod.dsn(), autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'postgres'").fetchone():
            conn.execute("CREATE ROLE postgres SUPERUSER LOGIN")
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = 'shop'").fetchone():
            conn.execute("CREATE DATABASE shop")
    dsn = prod.dsn("shop")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS orders (id bigserial PRIMARY KEY, amount numeric(10,2), "
            "created_at timestamptz NOT NULL DEFAULT clock_timestamp())"
        )
    return dsn


def _pitr_spec(conf: Path, target: datetime) -> DrillSpec:
    """drills/pgbackrest-pitr.yaml aimed at the demo's stanza and moment (the evidence keeps this text)."""
    text = PITR_DRILL.read_text()
    for old, new in (
        ("        # config: /etc/pgbackrest/pgbackrest.conf     # default: pgBackRest's own search", f"        config: {conf}"),
        ("      rule: latest ", f"      at: '{target.isoformat()}'\n      rule: at "),
    ):
        if old not in text:
            raise RuntimeError(f"{PITR_DRILL} no longer has {old.strip()!r}: update app/demo.py")
        text = text.replace(old, new, 1)
    return parse_spec(text, str(PITR_DRILL), base_dir=PITR_DRILL.parent)


class DemoUnavailable(RuntimeError):
    """The demo cannot run on this machine (a tool is missing): the message says what to install."""
