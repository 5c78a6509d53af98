"""Drill files: what `drdrill lint` tells a user about their mistakes, word for word."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from drdrill.core.spec import SpecError, format_duration, load_spec, parse_duration

REPO = Path(__file__).resolve().parent.parent
DRDRILL = str(Path(sys.executable).parent / "drdrill")

GOOD = """\
version: 1
name: shop
objectives: {rto: 15m, rpo: 1h}
targets:
  - name: shop
    provider: postgres
    source: {repository: /var/backups/shop}
validations:
  - {type: checksum, target: shop}
"""


def lint(tmp_path: Path, text: str) -> subprocess.CompletedProcess:
    f = tmp_path / "drill.yaml"
    f.write_text(text)
    return subprocess.run([DRDRILL, "lint", str(f)], capture_output=True, text=True, cwd=tmp_path)


@pytest.mark.parametrize(
    "change, expected",
    [
        (
            ("    source: {repository: /var/backups/shop}\n", "    source: {repository: /var/backups/shop}\n    recovery_piont: {rule: latest}\n"),
            "  targets[0].recovery_piont: unknown key 'recovery_piont' (did you mean 'recovery_point'?); "
            "allowed here: name, recovery_point, restore, provider, source",
        ),
        (
            ("rto: 15m", "rto: 15 minutes"),
            "  objectives.rto: '15 minutes' is not a duration: write it like 30s, 15m, 1h30m, 7d or 1y",
        ),
        (
            ("target: shop}", "target: shopp}"),
            "  validations[0].target: no target named 'shopp'; this drill's targets are: shop",
        ),
        (
            ("provider: postgres", "provider: oracle"),
            "  targets[0].provider: unknown provider 'oracle'; allowed: postgres, aws.ebs, aws.ec2, aws.rds, "
            "azure.disk, azure.vm, gcp.disk, gcp.instance, sim",
        ),
        (
            ("type: checksum", "type: smoke"),
            "  validations[0].type: unknown validation type 'smoke'; allowed: sql, row_count, checksum, freshness, tcp, http, command",
        ),
    ],
    ids=["typo-key", "bad-duration", "unknown-target", "unknown-provider", "unknown-check"],
)
def test_lint_names_file_field_and_fix(tmp_path, change, expected):
    old, new = change
    assert old in GOOD
    proc = lint(tmp_path, GOOD.replace(old, new, 1))

    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"{tmp_path / 'drill.yaml'}: 1 problem", expected]


def test_lint_accepts_every_shipped_drill():
    files = sorted(str(p) for p in (REPO / "drills").glob("*.yaml"))
    proc = subprocess.run([DRDRILL, "lint", *files], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == len(files)


def test_every_problem_is_reported_at_once(tmp_path):
    text = GOOD.replace("rto: 15m", "rto: soon").replace("name: shop\n", "name: Shop Drill\n", 1) + "colour: blue\n"
    proc = lint(tmp_path, text)
    assert proc.stderr.splitlines()[0].endswith("3 problems")
    assert any(line.startswith("  name: 'Shop Drill' is not a valid name: lowercase letters") for line in proc.stderr.splitlines())
    assert any(line.startswith("  colour: unknown key 'colour'") for line in proc.stderr.splitlines())


def test_not_yaml_and_not_a_mapping(tmp_path):
    assert lint(tmp_path, "name: [unclosed\n").stderr.splitlines()[1].startswith("  line 2, column 1: not valid YAML")
    assert "this one is a list" in lint(tmp_path, "- a\n- b\n").stderr


def test_rules_need_their_fields():
    with pytest.raises(SpecError) as exc:
        from drdrill.core.spec import parse_spec

        parse_spec(GOOD.replace("    source: {repository: /var/backups/shop}\n", "    source: {repository: /r}\n    recovery_point: {rule: random}\n"), "d.yaml")
    assert exc.value.problems == [("targets[0].recovery_point", "rule 'random' needs 'within: <duration>', e.g. within: 30d")]


@pytest.mark.parametrize("text, seconds", [("30s", 30), ("15m", 900), ("1h30m", 5400), ("2d", 172800), ("1y", 31536000), (45, 45)])
def test_durations(text, seconds):
    assert parse_duration(text) == timedelta(seconds=seconds)


def test_duration_formatting():
    assert [format_duration(s) for s in (4.24, 33, 900, 5400, 90061)] == ["4.2s", "33s", "15m", "1h30m", "1d1h1m"]


def test_relative_repository_is_resolved_against_the_drill_file(tmp_path):
    f = tmp_path / "d.yaml"
    f.write_text(GOOD.replace("/var/backups/shop", "backups/shop"))
    assert load_spec(f).targets[0].source.repository == str(tmp_path / "backups" / "shop")


def test_yaml_1_2_booleans_so_on_is_a_key():
    from drdrill.core.spec import parse_spec

    spec = parse_spec(GOOD + "notify: {webhooks_env: [HOOK], on: [PASSED, FAILED]}\n", "d.yaml")
    assert spec.notify.on == ["PASSED", "FAILED"]
    assert parse_spec(GOOD.replace("type: checksum, target: shop", "type: checksum, target: shop, required: false"), "d.yaml").validations[0].required is False
