"""`drdrill demo`: a complete PostgreSQL drill on a machine with nothing running.

1. a sample "production" database in a throwaway cluster (private socket), with a writer adding orders;
2. a backup of it (`drdrill backup`'s code) into the state directory;
3. the drill `drills/demo-postgres.yaml` on an embedded Temporal dev server and worker;
4. the result, where the evidence is, and everything the demo made cleaned up (unless --keep).
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import psycopg
from rich.console import Console

from drdrill.app.runtime import state_dir
from drdrill.providers.postgres.cluster import LocalCluster, cluster_root
from drdrill.providers.postgres import take_backup
from drdrill.core.spec import DrillSpec, load_spec

DRILL = Path(__file__).resolve().parents[2] / "drills" / "demo-postgres.yaml"

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

    Afterwards the writer stops and the database is removed (unless `keep`), and the report is named."""
    state = state_dir()
    prod = LocalCluster(cluster_root() / f"demo-production-{os.getuid()}")
    console.print("[bold]drdrill demo[/]: a PostgreSQL drill, end to end")
    console.print(f"  state directory   {state}")
    prod.create({"drdrill:demo": "sample production database (not a drill resource)"})
    with psycopg.connect(prod.dsn(), autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = 'shop'").fetchone():
            conn.execute("CREATE DATABASE shop")
    dsn = prod.dsn("shop")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SEED)
    os.environ["DEMO_SHOP_DSN"] = dsn
    writer = Writer(dsn)
    writer.start()
    console.print(f"  production        {prod.path} (database shop, a writer adding orders)")
    try:
        spec = load_spec(DRILL)
        point = take_backup(dsn, spec.targets[0].source.repository)
        console.print(f"  backup            {point}")
        console.print()
        yield spec
    finally:
        writer.stop.set()
        writer.join(timeout=5)
        if not keep:
            prod.destroy()
    report = _report_hint(state)
    if report:
        console.print(f"  report: {report}")
    console.print(f"  the writer added {writer.rows} orders during the demo; the backup and the drill's RPO account for them")


def _report_hint(state: Path) -> str:
    runs = sorted((state / "runs").glob("*/report.html"), key=lambda p: p.stat().st_mtime)
    return str(runs[-1]) if runs else ""
