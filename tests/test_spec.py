"""Drill files: what `drdrill lint` tells a user about their mistakes, word for word."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from drdrill.core.durations import format_duration, parse_duration
from drdrill.core.schema import SpecError
from drdrill.providers.spec import DrillSpec, load_spec

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


def _env_without(*names: str, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in names}
    env.update(extra)
    return env


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
            "allowed here: name, recovery_point, restore, select, provider, source",
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
            "  validations[0].type: unknown validation type 'smoke'; allowed: sql, row_count, checksum, freshness, volume, boundary, tcp, http, command",
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


def test_lint_accepts_every_shipped_drill(tmp_path):
    # As on a fresh machine: DRDRILL_STATE_DIR unset (the demo drill's repository uses it).
    files = sorted(str(p) for p in (REPO / "drills").glob("*.yaml"))
    proc = subprocess.run([DRDRILL, "lint", *files], capture_output=True, text=True, cwd=tmp_path, env=_env_without("DRDRILL_STATE_DIR"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", "the shipped drills lint with no warnings"
    assert proc.stdout.splitlines() == [f"{f}: ok ({len(load_spec(f).targets)} targets, {len(load_spec(f).validations)} validations)" for f in files]
    assert list(tmp_path.iterdir()) == []


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
        from drdrill.providers.spec import parse_spec

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
    from drdrill.providers.spec import parse_spec

    spec = parse_spec(GOOD + "notify: {webhooks_env: [HOOK], on: [PASSED, FAILED]}\n", "d.yaml")
    assert spec.notify.on == ["PASSED", "FAILED"]
    assert parse_spec(GOOD.replace("type: checksum, target: shop", "type: checksum, target: shop, required: false"), "d.yaml").validations[0].required is False


# ---------------------------------------------------------------- variables in paths

UNSET = "DRDRILL_TEST_NEVER_SET_ROOT"


def _with_repository(repository: str) -> str:
    return GOOD.replace("{repository: /var/backups/shop}", f"{{repository: '{repository}', dsn_env: SHOP_DSN}}")


def _dollar_paths(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if "$" in p.name]


@pytest.mark.parametrize("value, state", [(None, "not set"), ("", "empty")], ids=["unset", "empty"])
def test_a_path_variable_that_is_not_set_is_an_error_and_nothing_is_written(tmp_path, value, state):
    """`${VAR}` kept literally was a relative directory: a backup landed in `./${DRDRILL_STATE_DIR}/`
    and was committed. An empty one would write to `/backups/shop`. Both are refused before any I/O."""
    drill = tmp_path / "drills" / "shop.yaml"
    drill.parent.mkdir()
    drill.write_text(_with_repository("${" + UNSET + "}/backups/shop"))
    extra = {} if value is None else {UNSET: value}
    # A reachable source database: were the path accepted, the backup would really be written.
    env = _env_without(UNSET, SHOP_DSN="host=127.0.0.1 port=5432 user=postgres dbname=postgres", **extra)
    expected = [
        f"{drill}: 1 problem",
        f"  targets[0].source.repository: '${{{UNSET}}}/backups/shop' uses ${{{UNSET}}}, which is {state}: "
        f"set {UNSET} or write an absolute path",
    ]

    for command in ("backup", "lint"):
        proc = subprocess.run([DRDRILL, command, str(drill)], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert proc.stderr.splitlines() == expected
    assert _dollar_paths(tmp_path) == []
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["drills", "shop.yaml"]


def test_parsing_without_a_drill_file_expands_paths_too(monkeypatch, tmp_path):
    """In-memory drills (no base directory) once kept `${VAR}` verbatim, relative to the working directory."""
    from drdrill.providers.spec import parse_spec

    monkeypatch.delenv(UNSET, raising=False)
    monkeypatch.setenv("DRDRILL_TEST_BACKUP_ROOT", str(tmp_path))
    with pytest.raises(SpecError) as exc:
        parse_spec(_with_repository("$" + UNSET + "/shop"), "d.yaml")
    assert exc.value.problems == [
        ("targets[0].source.repository", f"'${UNSET}/shop' uses ${{{UNSET}}}, which is not set: set {UNSET} or write an absolute path")
    ]
    spec = parse_spec(_with_repository("${DRDRILL_TEST_BACKUP_ROOT}/shop"), "d.yaml")
    assert spec.targets[0].source.repository == f"{tmp_path}/shop"


@pytest.mark.parametrize(
    "repository, message",
    [
        ("/srv/$/shop", "'/srv/$/shop' has a '$' that is not a variable such as ${BACKUP_ROOT}: remove it or write an absolute path"),
        ("${}/shop", "'${}/shop' has a '$' that is not a variable such as ${BACKUP_ROOT}: remove it or write an absolute path"),
        ("~drdrill-no-such-user/shop", "'~drdrill-no-such-user/shop' starts with '~', but there is no home directory for "
         "drdrill-no-such-user: write an absolute path"),
    ],
)
def test_a_path_that_cannot_be_expanded_is_an_error(tmp_path, repository, message):
    f = tmp_path / "d.yaml"
    f.write_text(_with_repository(repository))
    with pytest.raises(SpecError) as exc:
        load_spec(f)
    assert exc.value.problems == [("targets[0].source.repository", message)]
    assert _dollar_paths(tmp_path) == [] and not (tmp_path / "~drdrill-no-such-user").exists()


def test_drdrill_state_dir_defaults_to_the_state_directory_a_run_uses(monkeypatch, tmp_path):
    """Lint and `drdrill backup` without DRDRILL_STATE_DIR name the directory `drdrill run` reads
    (app.runtime.state_dir exports drdrill.core.paths.default_state_dir as DRDRILL_STATE_DIR)."""
    from drdrill.core.paths import default_state_dir

    monkeypatch.delenv("DRDRILL_STATE_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    expected = os.path.join(default_state_dir(), "backups", "shop")
    assert expected == str(tmp_path / "xdg" / "drdrill" / "backups" / "shop")
    assert load_spec(REPO / "drills" / "demo-postgres.yaml").targets[0].source.repository == expected

    monkeypatch.setenv("DRDRILL_STATE_DIR", "")  # empty is unset, as for default_state_dir; never "/backups/shop"
    assert load_spec(REPO / "drills" / "demo-postgres.yaml").targets[0].source.repository == expected

    monkeypatch.setenv("DRDRILL_STATE_DIR", str(tmp_path / "state"))
    assert load_spec(REPO / "drills" / "demo-postgres.yaml").targets[0].source.repository == str(tmp_path / "state" / "backups" / "shop")
    assert not (tmp_path / "state").exists() and not (tmp_path / "xdg").exists(), "loading a drill creates nothing"


# ---------------------------------------------------------------- duplicate keys


def test_lint_refuses_duplicate_keys_naming_both_lines(tmp_path):
    text = (
        "version: 1\n"
        "name: shop\n"
        "owner: platform-team\n"
        "objectives: {rto: 15m, rpo: 1h}\n"
        "targets:\n"
        "  - name: shop\n"
        "    provider: postgres\n"
        "    source: {repository: /var/backups/shop, format: custom, format: directory}\n"
        "    restore:\n"
        "      jobs: 2\n"
        "      jobs: 4\n"
        "owner: dba-team\n"
    )
    proc = lint(tmp_path, text)

    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"{tmp_path / 'drill.yaml'}: 3 problems",
        "  line 8: duplicate key 'format' (first earlier on the same line); remove one",
        "  line 11: duplicate key 'jobs' (first at line 10); remove one",
        "  line 12: duplicate key 'owner' (first at line 3); remove one",
    ]


def test_a_merge_key_may_be_overridden_and_booleans_stay_yaml_1_2():
    from drdrill.providers.spec import parse_spec

    text = GOOD.replace("    source: {repository: /var/backups/shop}\n", "    source: &src {repository: /var/backups/shop, format: custom}\n")
    text = text.replace("validations:", "  - {name: copy, provider: postgres, source: {<<: *src, format: directory}}\nvalidations:")
    spec = parse_spec(text + "notify: {on: [FAILED]}\n", "d.yaml")
    assert [t.source.format for t in spec.targets] == ["custom", "directory"]
    assert spec.notify.on == ["FAILED"]


# ---------------------------------------------------------------- warnings

SLOW_RTO = GOOD.replace("rto: 15m", "rto: 2h") + "max_duration: 30m\n"
SLOW_RTO_WARNING = (
    "objectives.rto: objectives.rto (2h) is longer than max_duration (30m); the drill is stopped at max_duration, "
    "so it can never meet this objective: raise max_duration to at least 2h or lower objectives.rto"
)


def test_lint_warns_when_the_rto_exceeds_max_duration_and_still_exits_0(tmp_path):
    proc = lint(tmp_path, SLOW_RTO)

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"{tmp_path / 'drill.yaml'}: ok (1 targets, 1 validations, 1 warning)"]
    assert proc.stderr.splitlines() == [f"warning: {tmp_path / 'drill.yaml'}: {SLOW_RTO_WARNING}"]


def test_warnings_are_part_of_the_spec(tmp_path):
    from drdrill.providers.spec import parse_spec

    assert [str(w) for w in parse_spec(SLOW_RTO, "d.yaml").warnings()] == [f"d.yaml: {SLOW_RTO_WARNING}"]
    assert parse_spec(GOOD.replace("rto: 15m", "rto: 30m") + "max_duration: 30m\n", "d.yaml").warnings() == []


def test_run_prints_the_warnings_before_starting(tmp_path, temporal_server):
    import uuid

    drill = tmp_path / "slow.yaml"
    drill.write_text("name: slow\nobjectives: {rto: 2h, rpo: 1h}\nmax_duration: 30m\ntargets: [{name: db, provider: sim}]\n")
    env = _env_without(
        "DRDRILL_TASK_QUEUE",
        DRDRILL_STATE_DIR=str(tmp_path / "state"),
        TEMPORAL_ADDRESS=temporal_server.address,
        DRDRILL_TASK_QUEUE=f"spec-{uuid.uuid4().hex[:6]}",
    )
    proc = subprocess.run([DRDRILL, "run", str(drill), "--worker"], capture_output=True, text=True, env=env, timeout=240)

    assert proc.stderr.splitlines()[0] == (
        f"warning: {drill}: objectives.rto: objectives.rto (2h) is longer than max_duration (30m); the drill is stopped at "
        "max_duration, so it can never meet this objective: raise max_duration to at least 2h or lower objectives.rto"
    )
    assert proc.stdout.startswith("drill slow  run slow-"), proc.stdout


@pytest.mark.parametrize("schedule", ["quarterly", "{quarterly: {month: 2, day: 3}}", "{cron: \"0 3 1 */3 *\"}"])
def test_a_drill_survives_its_trip_to_the_workflow_as_json(tmp_path, schedule):
    """The workflow receives the drill as JSON and validates it again: every schedule form must
    come back as it was (a dumped cron schedule carries `quarterly: null`)."""
    f = tmp_path / "d.yaml"
    f.write_text((REPO / "drills" / "demo-postgres.yaml").read_text().replace("# schedule: quarterly", "") + f"\nschedule: {schedule}\n")
    spec = load_spec(f)
    again = DrillSpec.model_validate_json(spec.model_dump_json())
    assert again.schedule == spec.schedule
