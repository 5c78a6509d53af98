"""Fixtures for PostgreSQL drills: a seeded source database on the machine's PostgreSQL server
(127.0.0.1:5432, trust auth) and backups of it taken with `take_backup`, the code `drdrill backup` runs."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import psycopg
import pytest

from drdrill.localpg.cluster import postmaster_alive
from drdrill.providers.postgres.backup import take_backup

ADMIN_DSN = os.environ.get("DRDRILL_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")

SEED_SQL = """
CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, email text UNIQUE);
CREATE TABLE orders (
    id bigserial PRIMARY KEY,
    customer_id int REFERENCES customers(id),
    amount numeric(10,2) NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE audit.events (id bigserial PRIMARY KEY, payload jsonb, at timestamptz DEFAULT now());
INSERT INTO customers (name, email) SELECT 'customer ' || g, 'c' || g || '@example.com' FROM generate_series(1, 200) g;
INSERT INTO orders (customer_id, amount, created_at)
    SELECT 1 + (g % 200), (g * 7 % 1000) / 10.0, now() - make_interval(secs => 2000 - g) FROM generate_series(1, 2000) g;
INSERT INTO audit.events (payload) SELECT jsonb_build_object('n', g) FROM generate_series(1, 50) g;
"""


def create_source_db(seed: str = SEED_SQL) -> str:
    name = f"drdrill_src_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = ADMIN_DSN.replace("dbname=postgres", f"dbname={name}")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA audit")
        conn.execute(seed)
    return dsn


def drop_db(dsn: str) -> None:
    name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def shop_dsn():
    dsn = create_source_db()
    yield dsn
    drop_db(dsn)


@pytest.fixture
def shop_repo(shop_dsn, tmp_path) -> Path:
    """A backup repository holding one fresh backup of the shop database."""
    repo = tmp_path / "backups" / "shop"
    take_backup(shop_dsn, repo)
    return repo


@pytest.fixture
def cluster_root(tmp_path_factory, monkeypatch) -> Path:
    root = Path("/tmp") / f"drdrill-test-{uuid.uuid4().hex[:6]}"
    root.mkdir(mode=0o711)
    monkeypatch.setenv("DRDRILL_CLUSTER_ROOT", str(root))
    yield root
    from drdrill.localpg.cluster import LocalCluster

    for p in list(root.iterdir()):  # a failed test must not leak servers into the next one
        if p.is_dir():
            LocalCluster(p).destroy()
        else:
            p.unlink()
    root.rmdir()


def clusters_left(root: Path) -> list[str]:
    """What a user would find left by drills: tagged cluster directories or servers still running."""
    from drdrill.localpg.cluster import LocalCluster

    left = []
    if not root.exists():  # a host whose worker never created a cluster
        return left
    for p in root.iterdir():
        tags = LocalCluster(p).tags() if p.is_dir() else None
        if tags and tags.get("drdrill:drill-id"):
            left.append(str(p))
            if postmaster_alive(p):
                left.append(f"server running from {p}")
    return left
