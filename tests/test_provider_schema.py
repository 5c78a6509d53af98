"""A drill format per provider (issue 24): each family's schema lives in its own folder, the registry
lists each family in one line, and nothing else names a family.

A module "names" a family when its code holds the family as a provider key: a string constant that is
the family or one of its kinds (`"sim"`, `"aws.ebs"`, `"gcp:"`), or an import of
`drdrill.providers.<family>…`. Prose (docstrings such as "a postgres source", descriptions) and field
names (`aws_region`) do not count; neither do tests/, docs/, bench/ and drills/*.yaml, which describe
or exercise the families rather than implement the drill format.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

from drdrill.core.schema import ProbeBase, TargetBase
from drdrill.providers import load_provider
from drdrill.providers.registry import FAMILIES
from drdrill.providers.spec import PROVIDERS, SCHEMAS, DrillSpec, ProbeSpec, parse_spec

ROOT = Path(__file__).resolve().parent.parent
REGISTRY = "drdrill/providers/registry.py"
SOURCE_ROOTS = ("drdrill", "app", "activities", "workflows", "worker.py")

# Modules outside a family's folder that name it, each with why. Everything here is a feature of
# that family used from above (or data already recorded), never part of the drill format: the
# format's code (drdrill/core, drdrill/providers/spec.py, evidence/coverage.py's drill reading) names
# no family. Shrink this list; never grow it for the drill format.
ALLOWED: dict[str, dict[str, str]] = {
    # PostgreSQL's own names, not the family: the `postgres` database, OS user and server binary, in
    # the local-PostgreSQL toolkit (drdrill/localpg/) and the evidence store it runs.
    "drdrill/localpg/binaries.py": {"postgres": "the `postgres` server binary"},
    "drdrill/localpg/cluster.py": {"postgres": "the `postgres` database, server and OS user"},
    "drdrill/localpg/recovered.py": {"postgres": "the `postgres` server binary"},
    "drdrill/localpg/sandbox.py": {"postgres": "the `postgres` OS user the sandbox never runs as"},
    "drdrill/evidence/embedded.py": {"postgres": "the evidence store's `postgres` database"},
    # Users of the toolkit and of the postgres family from above.
    "app/cli_evidence.py": {"postgres": "the evidence store's local cluster (PostgreSQL toolkit)"},
    "app/cli_reference.py": {"postgres": "`drdrill reference` reads a restored postgres target's catalog"},
    "app/demo.py": {"postgres": "the demo backs up and restores a local PostgreSQL"},
    "app/errors.py": {"postgres": "cluster errors have their own exit line (PostgreSQL toolkit)"},
    "app/entry.py": {"postgres": "`drdrill dump` (pg_dump + manifest) starts without the CLI"},
    "drdrill/evidence/store.py": {"postgres": "the evidence store is a PostgreSQL cluster (toolkit; 'postgres' is its database)"},
    "drdrill/validation.py": {"postgres": "data checks fingerprint tables (PostgreSQL toolkit)"},
    # Commands that exist for one family.
    "app/cli.py": {"postgres": "`drdrill backup` writes drdrill's postgres repository"},
    "app/cli_sweep.py": {"postgres": "`drdrill sweep` defaults to postgres"},
    "app/cli_schedule.py": {"postgres": "`schedule sweep` defaults to postgres, as `drdrill sweep` does"},
    "app/cli_check.py": {"aws": "`drdrill check aws-volume|aws-instance|aws-db` reads a restored AWS resource back"},
    "drdrill/providers/activity_io.py": {"postgres": "SweepInput's default families, as `drdrill sweep`'s"},
    # An RDS instance's engine is called "postgres" (the database, not the family).
    "drdrill/providers/aws/rds.py": {"postgres": "the RDS engine name"},
    # Coverage reads AWS in every region the drill files and coverage.yaml name (DRDRILL_AWS_REGIONS).
    "drdrill/evidence/coverage.py": {"aws": "the AWS regions coverage reads"},
    "activities/coverage.py": {"aws": "hands the AWS provider the regions to read"},
    # A resource key is counted by (kind, id) alone, before any target model is at hand: ARM ids are
    # case-insensitive, so resource_key folds azure ids to lower case.
    "drdrill/core/selection.py": {"azure": "resource_key: ARM ids are case-insensitive"},
    # `--simulate` turns every target into a sim target: it is the sim provider's user.
    "app/simulate.py": {"sim": "--simulate runs the drill's plan on sim targets"},
    # Evidence recorded before `simulated` existed says so only by its resource keys ("sim:…").
    "drdrill/evidence/render.py": {"sim": "old evidence: simulated by its resource keys"},
}


def _modules() -> list[Path]:
    out: list[Path] = []
    for root in SOURCE_ROOTS:
        path = ROOT / root
        out += [path] if path.is_file() else sorted(path.rglob("*.py"))
    return out


def _mentions(path: Path, family: str) -> list[tuple[int, str]]:
    """(line, what) for every place the module's code names `family` as a provider key."""
    key = re.compile(rf"{re.escape(family)}([.:][a-z0-9_-]*)?")
    module = re.compile(rf"drdrill\.providers\.{re.escape(family)}(\.|$)")
    hits = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and key.fullmatch(node.value):
            hits.append((node.lineno, node.value))
        elif isinstance(node, ast.Import):
            hits += [(node.lineno, a.name) for a in node.names if module.match(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.module and module.match(node.module):
            hits.append((node.lineno, node.module))
    return hits


def _folder(family: str) -> str:
    return f"drdrill/providers/{family}/"


def test_each_family_names_itself_in_its_own_schema():
    """registry.py: one line a family, naming a schema module inside the family's folder, whose
    FAMILY is that name and whose PROVIDER is a class in the same folder."""
    assert list(FAMILIES) == ["postgres", "aws", "azure", "gcp", "sim"]
    for family, module in FAMILIES.items():
        schema = importlib.import_module(module)
        assert module == f"drdrill.providers.{family}.schema"
        assert schema.FAMILY == family
        assert schema.PROVIDER.startswith(f"drdrill.providers.{family}."), schema.PROVIDER
        assert schema.TARGETS and all(issubclass(t, TargetBase) for t in schema.TARGETS)
        assert schema.PROBE is None or issubclass(schema.PROBE, ProbeBase)
        for target in schema.TARGETS:
            kind = target.model_fields["provider"].annotation.__args__[0]
            assert kind == family or kind.startswith(family + "."), (family, kind)


def test_the_target_union_is_the_registry_in_order():
    """DrillSpec's targets are exactly the families' TARGETS, in the registry's order: none is written by hand."""
    kinds = [t.model_fields["provider"].annotation.__args__[0] for s in SCHEMAS.values() for t in s.TARGETS]
    assert PROVIDERS == kinds
    probes = [f for f, s in SCHEMAS.items() if s.PROBE is not None]
    assert list(ProbeSpec.model_fields) == probes
    assert DrillSpec.model_fields["isolation"].annotation.model_fields["probe"].annotation is ProbeSpec


def test_sim_is_named_only_in_its_folder_and_one_registry_line():
    """Adding the sim provider's schema touched drdrill/providers/sim/ and one line of registry.py;
    the drill format's code (core, providers/spec.py, the coverage and selection logic) never names it."""
    registry = _mentions(ROOT / REGISTRY, "sim")
    assert len({line for line, _ in registry}) == 1, registry
    line = (ROOT / REGISTRY).read_text(encoding="utf-8").splitlines()[registry[0][0] - 1]
    assert line.strip() == '"sim": "drdrill.providers.sim.schema",'
    outside = {
        str(p.relative_to(ROOT)): hits
        for p in _modules()
        if not str(p.relative_to(ROOT)).startswith(_folder("sim")) and str(p.relative_to(ROOT)) != REGISTRY
        and "sim" not in ALLOWED.get(str(p.relative_to(ROOT)), {})
        and (hits := _mentions(p, "sim"))
    }
    assert outside == {}, f"modules outside drdrill/providers/sim/ that name sim: {outside}"
    for path in ("drdrill/core", "drdrill/providers/spec.py", "drdrill/providers/__init__.py", "drdrill/evidence/coverage.py"):
        for p in [ROOT / path] if (ROOT / path).is_file() else sorted((ROOT / path).rglob("*.py")):
            assert _mentions(p, "sim") == [], p


def test_no_module_outside_a_family_folder_names_it():
    """For each family, the modules that name it: its own folder, its registry line, and the
    exceptions in ALLOWED (each with its reason); any other fails."""
    found: dict[str, list[str]] = {}
    unexpected = []
    for family in FAMILIES:
        for p in _modules():
            rel = str(p.relative_to(ROOT))
            hits = _mentions(p, family)
            if not hits:
                continue
            found.setdefault(family, []).append(rel)
            if rel.startswith(_folder(family)) or family in ALLOWED.get(rel, {}):
                continue
            if rel == REGISTRY and len({line for line, _ in hits}) == 1:
                continue
            unexpected.append(f"{rel} names {family}: {hits}")
    assert not unexpected, "\n".join(unexpected)
    for family in FAMILIES:
        assert REGISTRY in found[family]
        assert any(m.startswith(_folder(family)) for m in found[family])


def test_endpoint_fields_are_linted_whatever_was_imported_before(tmp_path):
    """No import side effect decides what lint checks: a fresh interpreter that imports only
    drdrill.providers.spec refuses a url template naming a field the target does not publish."""
    import subprocess
    import sys

    drill = (
        "name: t\nobjectives: {rto: 1h, rpo: 1h}\ntargets: [{name: db, provider: sim}]\n"
        "validations: [{type: http, target: db, url: 'http://{nope}/'}]\n"
    )
    code = (
        "import sys\nfrom drdrill.providers.spec import parse_spec\nfrom drdrill.core.schema import SpecError\n"
        "try:\n    parse_spec(sys.stdin.read())\nexcept SpecError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], input=drill, capture_output=True, text=True, cwd=tmp_path, check=True)
    assert "{nope} is not an endpoint field of target db (sim); known fields: resource_id, sim_state" in out.stdout


def test_reading_a_drill_needs_no_cloud_sdk(tmp_path):
    """The schemas are pure: reading every example drill imports neither boto3, the Azure SDK,
    google-cloud-compute nor psycopg (a worker needs only the SDKs of the families it drills)."""
    import subprocess
    import sys

    code = (
        "import glob, sys\nfrom drdrill.providers.spec import load_spec\n"
        f"[load_spec(f) for f in sorted(glob.glob({str(ROOT / 'drills' / '*.yaml')!r}))]\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('boto3', 'botocore', 'azure', 'google', 'psycopg')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_a_family_schema_names_its_provider_class():
    """load_provider finds each family's Provider through its schema's PROVIDER."""
    assert type(load_provider("sim")).__module__ == "drdrill.providers.sim.provider"
    spec = parse_spec("name: t\nobjectives: {rto: 1h, rpo: 1h}\ntargets: [{name: db, provider: sim}]\n")
    assert spec.targets[0].family == "sim" and spec.targets[0].SIMULATED
