"""Bad input: a hypothesis fuzz of the drill loader. Random YAML, wrong types, huge values, unicode,
deep nesting: parse_spec either returns a DrillSpec or raises SpecError naming the file, never
anything else. 1,000 structured cases (mutations of a valid drill) plus raw text run in CI."""

from __future__ import annotations

import copy
import math

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drdrill.core.schema import SpecError
from drdrill.providers.spec import DrillSpec, parse_spec

PATH = "fuzz/ünïcode drill.yaml"

VALID = {
    "version": 1,
    "name": "fuzz-drill",
    "objectives": {"rto": "15m", "rpo": "1h"},
    "max_duration": "1h",
    "targets": [
        {"name": "db", "provider": "sim", "source": {"points": 3, "faults": {"throttle": 1, "latency": {"restore": "2s"}}}},
        {"name": "pg", "provider": "postgres", "source": {"repository": "/tmp/x"}, "recovery_point": {"rule": "random", "within": "7d"}},
        {"name": "vol", "provider": "aws.ebs", "source": {"volume_id": "vol-0abc"}},
    ],
    "validations": [
        {"type": "sql", "target": "pg", "query": "SELECT 1", "expect": "== 1"},
        {"type": "row_count", "target": "pg", "table": "t", "min": 1},
        {"type": "tcp", "host": "127.0.0.1", "port": 5432},
        {"type": "command", "argv": ["true"], "target": "db"},
        {"type": "freshness", "target": "pg", "table": "t", "column": "c", "max_lag": "1h"},
    ],
    "teardown": {"hold": "0s", "max_hold": "1h"},
    "schedule": {"cron": "0 2 * * 1", "jitter": "5m"},
    "evidence": {"retention": "7y", "controls": ["SOC2-A1.3"]},
    "notify": {"webhooks_env": ["HOOK"], "on": ["FAILED"]},
}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["", "0", "-1", "1e400", "nan", "inf", "99999999999y", "P1Y", "PT-5S", "~", "null", "yes", "no",
                     "2026-13-45T99:99:99Z", "1h30m", "x" * 5000, "\u202e\u0000\ufeff", "latest", "random", "at", "sim",
                     "postgres", "sql", "command", "targets", "==", "> 'a'", "ü" * 100]),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=12), st.sampled_from(list(VALID) + ["provider", "type", "source", "faults", "rule"])), children, max_size=4),
    ),
    max_leaves=20,
)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


ALL_PATHS = list(_paths(VALID))


@st.composite
def mutated_drills(draw):
    doc = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(ALL_PATHS))
        action = draw(st.sampled_from(["replace", "delete", "add_key", "nest"]))
        parent, key = None, None
        node = doc
        try:
            for part in path:
                parent, key = node, part
                node = node[part]
        except (KeyError, IndexError, TypeError):
            continue
        if parent is None:
            if action == "replace":
                doc = draw(values)
            continue
        if action == "replace":
            parent[key] = draw(values)
        elif action == "delete":
            del parent[key]
        elif action == "add_key" and isinstance(node, dict):
            node[draw(st.one_of(st.text(max_size=10), st.integers(), st.booleans()))] = draw(values)
        elif action == "nest":
            depth = draw(st.integers(1, 200))
            inner = parent[key]
            for _ in range(depth):
                inner = [inner] if depth % 2 else {"x": inner}
            parent[key] = inner
    return doc


def check(text: str) -> None:
    try:
        spec = parse_spec(text, PATH)
    except SpecError as exc:
        message = str(exc)
        assert message.startswith(PATH + ":"), message
        assert exc.problems and all(isinstance(m, str) and m for _, m in exc.problems)
        return
    assert isinstance(spec, DrillSpec)


def _dump(doc) -> str:
    try:
        return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)
    except (yaml.YAMLError, RecursionError, ValueError):
        return repr(doc)  # not representable as YAML: its repr is a fine malformed input too


FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)


@FUZZ
@given(mutated_drills())
def test_mutated_drills_only_ever_raise_spec_errors(doc):
    check(_dump(doc))


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
@given(st.one_of(st.text(max_size=400), values.map(_dump)))
def test_random_text_and_random_yaml_only_ever_raise_spec_errors(text):
    check(text)


def test_the_valid_base_drill_is_valid():
    assert parse_spec(_dump(VALID), PATH).name == "fuzz-drill"


@pytest.mark.parametrize(
    "text",
    [
        "[" * 50_000,
        "{a: " * 20_000,
        "- " * 10_000 + "x",
        "name: x\ntargets: " + "[" * 3000 + "]" * 3000,
        "name: \ud800",
        "\x00\x01\x02",
        "name: x\n\tobjectives: 1",
        "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
        "d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n"
        "name: x\nobjectives: {rto: 1m, rpo: 1m}\ntargets: *e\nvalidations: *e\n",
        "name: x\nobjectives: {rto: 1m, rpo: 1m}\ntargets: [{name: a, provider: sim, source: {points: " + "9" * 5000 + "}}]",
        "name: x\nobjectives: {rto: 1e308, rpo: -1e308}\ntargets: [{name: a, provider: sim}]\nmax_duration: .nan",
        "name: x\nobjectives: {rto: 99999999999999999999999y, rpo: 1h}\ntargets: [{name: a, provider: sim}]",
        "name: x\nobjectives: {rto: 1h, rpo: 1h}\ntargets: [{name: a, provider: sim, source: {faults: {latency: {restore: {mean: 1e999}}}}}]",
        "name: x\nobjectives: {rto: 1h, rpo: 1h}\ntargets: [{name: a, provider: sim, source: {faults: {fail: [{}], latency: [1]}}}]",
        "? [a, b]\n: c\nname: x",
        "!!python/object/apply:os.system ['true']",
        "name: x\nobjectives: {rto: 1h, rpo: 1h}\ntargets: [{name: a, provider: sim}]\nschedule: {cron: '" + "* " * 1000 + "'}",
        "name: " + "a" * 100_000,
        "version: 1\nversion: 2",
        "---\nname: a\n---\nname: b\n",
    ],
)
def test_pathological_inputs(text):
    check(text)


def test_non_finite_and_huge_numbers_are_spec_errors():
    for rto in (math.inf, -math.inf, math.nan, 10**400, -5):
        doc = copy.deepcopy(VALID)
        doc["objectives"]["rto"] = rto
        with pytest.raises(SpecError):
            parse_spec(_dump(doc), PATH)
