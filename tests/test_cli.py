"""The `drdrill` command as a user runs it: demo, backup, run (embedded and against a service)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from tests.pg_fixtures import clusters_left, cluster_root, shop_dsn  # noqa: F401

DRDRILL = str(Path(sys.executable).parent / "drdrill")


def cli(*args: str, env: dict, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([DRDRILL, *args], capture_output=True, text=True, env=env, timeout=timeout)


def clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "DRDRILL_"))}
    env.update(extra)
    return env


def test_demo_runs_a_whole_drill_with_nothing_running(tmp_path, cluster_root):
    env = clean_env(DRDRILL_STATE_DIR=str(tmp_path / "state"), DRDRILL_CLUSTER_ROOT=str(cluster_root))
    proc = cli("demo", env=env)

    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    for phase in ("recovery point", "isolate", "verify isolation", "restore", "validate", "teardown"):
        assert f"[ok  ] {phase}" in out
    assert "tables-match-backup" in out and "RTO " in out and "(objective 15m)" in out and "(objective 1h)" in out
    evidence = Path(out.split("evidence: ")[1].split()[0])
    doc = json.loads(evidence.read_text())
    assert doc["verdict"] == "PASSED" and doc["name"] == "demo-postgres"
    assert "\n  PASSED" in out
    assert clusters_left(cluster_root) == [], "the demo cleans up its production database and the drill's cluster"


def _drill_file(tmp_path: Path, dsn_env: str, expect: str) -> Path:
    f = tmp_path / "shop.yaml"
    f.write_text(
        f"""version: 1
name: cli-shop
objectives: {{rto: 15m, rpo: 1h}}
targets:
  - name: shop
    provider: postgres
    source: {{repository: backups/shop, dsn_env: {dsn_env}}}
validations:
  - {{type: checksum, target: shop}}
  - {{type: sql, target: shop, name: orders, query: "SELECT count(*) FROM orders", expect: "{expect}"}}
"""
    )
    return f


def test_backup_then_run_against_a_running_service(tmp_path, shop_dsn, temporal_server, cluster_root):
    drill = _drill_file(tmp_path, "SHOP_DSN", "== 2000")
    env = clean_env(SHOP_DSN=shop_dsn, DRDRILL_STATE_DIR=str(tmp_path / "state"), DRDRILL_CLUSTER_ROOT=str(cluster_root))

    backup = cli("backup", str(drill), env=env)
    assert backup.returncode == 0, backup.stderr
    assert backup.stdout.startswith("target shop: backup ") and "(3 tables, 2250 rows" in backup.stdout
    assert shop_dsn not in backup.stdout + backup.stderr

    env.update(TEMPORAL_ADDRESS=temporal_server.address, DRDRILL_TASK_QUEUE=f"cli-{uuid.uuid4().hex[:6]}")
    run = cli("run", str(drill), "--worker", env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "PASSED" in run.stdout and "3/3 tables match the backup" in run.stdout

    as_json = cli("run", str(drill), "--worker", "--json", env=env)
    assert json.loads(as_json.stdout)["verdict"] == "PASSED"
    assert clusters_left(cluster_root) == []


def test_run_exits_1_on_failed_and_shows_why(tmp_path, shop_dsn, temporal_server, cluster_root):
    drill = _drill_file(tmp_path, "SHOP_DSN", "== 1")
    env = clean_env(
        SHOP_DSN=shop_dsn,
        DRDRILL_STATE_DIR=str(tmp_path / "state"),
        DRDRILL_CLUSTER_ROOT=str(cluster_root),
        TEMPORAL_ADDRESS=temporal_server.address,
        DRDRILL_TASK_QUEUE=f"cli-{uuid.uuid4().hex[:6]}",
    )
    assert cli("backup", str(drill), env=env).returncode == 0
    run = cli("run", str(drill), "--worker", env=env)

    assert run.returncode == 1, run.stdout
    assert "[FAIL]" in run.stdout and "= 2000 (expected == 1)" in run.stdout
    assert "\n  FAILED" in run.stdout


def test_backup_refuses_without_the_dsn_variable(tmp_path):
    drill = _drill_file(tmp_path, "NOT_SET_ANYWHERE", "== 1")
    proc = cli("backup", str(drill), env=clean_env())
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"{drill}: target shop: environment variable NOT_SET_ANYWHERE is not set (it must hold the source DSN)"
    )
