"""Reading a drill file: YAML 1.2 booleans, repeated keys refused, and every pydantic error turned
into (field path, message with the fix). `parse_drill` reads any drill model; drdrill/providers/spec.py
calls it with DrillSpec (every family's targets)."""

from __future__ import annotations

import difflib
import hashlib
import re
import typing
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar, Union

import yaml
from pydantic import BaseModel, ValidationError

from drdrill.core.drill import LOAD_CHECKS, DrillSpecBase
from drdrill.core.drillpaths import approvers_without_keys, read_approvers_files, resolve_paths
from drdrill.core.endpoints import endpoint_problems
from drdrill.core.schema import NAME_HELP, RefError, SpecError, discriminators
from drdrill.core.validations import VALIDATION_TYPES

SpecT = TypeVar("SpecT", bound=DrillSpecBase)


def loc_str(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out



def _tags(model: type[BaseModel]) -> list[str]:
    """The `provider` values of a drill model's target union, in its order."""
    return discriminators(typing.get_args(model.model_fields["targets"].annotation)[0], "provider")


def _allowed_keys(model: type[BaseModel]) -> list[str]:
    return [n for n, f in model.model_fields.items() if n not in ("source_path", "source_sha256", "source_text", "boundary_checks")]


def _model_at(loc: tuple, data: Any, root: type[BaseModel]) -> Optional[type[BaseModel]]:
    """Find the pydantic model that owns the mapping at `loc` (for 'allowed keys' hints)."""
    ann: Any = root
    node = data
    for part in loc:
        if isinstance(part, int):
            inner = ann
            while typing.get_origin(inner) is Annotated:
                inner = typing.get_args(inner)[0]
            if typing.get_origin(inner) is list:
                ann = typing.get_args(inner)[0]
            node = node[part] if isinstance(node, list) and part < len(node) else None
            continue
        model = _resolve(ann, node)
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = model.model_fields.get(part)
        if field is None:
            return model
        node = node.get(part) if isinstance(node, dict) else None
        ann = field.annotation
    model = _resolve(ann, node)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _resolve(ann: Any, node: Any) -> Any:
    origin = typing.get_origin(ann)
    args = typing.get_args(ann)
    if origin is Annotated:
        return _resolve(args[0], node)
    if origin in (list,):
        inner = args[0]
        if isinstance(node, list) and node:
            return _resolve(inner, node[0] if isinstance(node[0], dict) else None)
        return _resolve(inner, None)
    if origin is Union or str(origin) == "types.UnionType":
        models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        if isinstance(node, dict):
            for m in models:
                for key in ("provider", "type"):
                    f = m.model_fields.get(key)
                    if f is not None and node.get(key) in typing.get_args(f.annotation):
                        return m
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _resolve(inner[0], node)
        return models[0] if len(models) == 1 else None
    return ann


def friendly(err: dict, data: Any, root: Optional[type[BaseModel]] = None) -> tuple[str, str]:
    """One pydantic error as (field path, message with the fix); `root` is the drill model read."""
    providers = _tags(root) if root is not None else []
    loc = tuple(err.get("loc", ()))
    # Discriminated unions add the tag to the path ("targets.0.postgres.source"); drop it.
    clean = []
    for i, part in enumerate(loc):
        if isinstance(part, str) and (part in providers or part in VALIDATION_TYPES) and i > 0 and isinstance(loc[i - 1], int):
            continue
        if isinstance(part, str) and part.startswith("function-"):
            continue
        clean.append(part)
    loc = tuple(clean)
    etype = err.get("type", "")
    msg = err.get("msg", "")
    if etype == "extra_forbidden":
        owner = _model_at(loc[:-1], data, root) if root is not None else None
        allowed = ", ".join(_allowed_keys(owner)) if owner else ""
        key = loc[-1] if loc else "?"
        close = ""
        if owner:
            match = difflib.get_close_matches(str(key), _allowed_keys(owner), n=1)
            if match:
                close = f" (did you mean '{match[0]}'?)"
        return loc_str(loc), f"unknown key '{key}'{close}; allowed here: {allowed}"
    if etype == "union_tag_invalid":
        ctx = err.get("ctx", {})
        tag = ctx.get("tag", "?")
        if loc and loc[0] == "targets":
            return loc_str(loc + ("provider",)), f"unknown provider {tag!r}; allowed: {', '.join(providers)}"
        return loc_str(loc + ("type",)), f"unknown validation type {tag!r}; allowed: {', '.join(VALIDATION_TYPES)}"
    if etype == "union_tag_not_found":
        if loc and loc[0] == "targets":
            return loc_str(loc + ("provider",)), f"missing 'provider'; allowed: {', '.join(providers)}"
        return loc_str(loc + ("type",)), f"missing 'type'; allowed: {', '.join(VALIDATION_TYPES)}"
    if etype == "missing":
        return loc_str(loc), "required field is missing"
    if etype == "literal_error":
        return loc_str(loc), msg.replace("Input should be", "must be")
    if etype == "string_pattern_mismatch" and loc and loc[-1] == "name":
        return loc_str(loc), f"{err.get('input')!r} is not a valid name: {NAME_HELP}"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if msg.startswith("Assertion failed, "):
        msg = msg[len("Assertion failed, ") :]
    return loc_str(loc), msg


class _DrillLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false. YAML 1.1 also reads on/off/yes/no as
    booleans, which turns `notify: {on: [FAILED]}` into a key `True` and a country code `NO` into false.

    It also records repeated keys: YAML requires keys to be unique, but PyYAML keeps the last value,
    so a second `owner:` or `max_duration:` would silently replace the first."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self.duplicates: list[tuple[int, str]] = []  # (line, message)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` may be overridden on purpose; only explicit keys must be unique
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = first_line.get(key)
            except TypeError:
                continue  # an unhashable key: SafeLoader reports it below
            if first is None:
                first_line[key] = line
            else:
                where = "earlier on the same line" if first == line else f"at line {first}"
                self.duplicates.append((line, f"duplicate key '{key}' (first {where}); remove one"))
        return super().construct_mapping(node, deep=deep)


_DrillLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_DrillLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def parse_drill(model: type[SpecT], text: str, path: str = "<drill>", base_dir: Optional[Path] = None) -> SpecT:
    """Parse drill YAML text into `model`; raise SpecError naming the file, the field path and the fix."""
    data = _read_document(text, path)
    try:
        spec = model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            ctx_err = (err.get("ctx") or {}).get("error")
            if isinstance(ctx_err, RefError):
                problems.append((loc_str(ctx_err.loc), ctx_err.message))
                continue
            problems.append(friendly(err, data, model))
        seen = set()
        unique = [p for p in problems if not (p in seen or seen.add(p))]
        raise SpecError(path, unique) from None
    except RecursionError:
        raise SpecError(path, [("", "the YAML is nested too deeply")]) from None
    except (TypeError, ValueError, OverflowError) as exc:
        raise SpecError(path, [("", f"cannot be read as a drill: {exc}")]) from None
    for problems in (approvers_without_keys(spec), endpoint_problems(spec)):
        if problems:
            raise SpecError(path, problems)
    now = datetime.now(timezone.utc)
    late = [problem for check in LOAD_CHECKS for problem in check(spec, now)]
    if late:
        raise SpecError(path, late)
    spec.source_path = path
    spec.source_sha256 = hashlib.sha256(text.encode()).hexdigest()
    spec.source_text = text
    resolve_paths(spec, path, base_dir)
    read_approvers_files(spec, path, base_dir)
    return spec


def _read_document(text: str, path: str) -> dict:
    """The drill file's YAML as a mapping, before any model reads it: SpecError for what is not one."""
    try:
        data, duplicates = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(path, [(where, f"not valid YAML: {problem}")]) from None
    except RecursionError:
        raise SpecError(path, [("", "the YAML is nested too deeply")]) from None
    except (ValueError, OverflowError, TypeError, MemoryError) as exc:
        # PyYAML's constructors raise these for e.g. an integer of more than 4300 digits.
        raise SpecError(path, [("", f"not valid YAML: {str(exc)[:200]}")]) from None
    if duplicates:
        raise SpecError(path, [(f"line {line}", message) for line, message in duplicates])
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise SpecError(path, [("", f"a drill file is a mapping with name, objectives and targets; this one is {kind}")])
    bad_keys = [k for k in data if not isinstance(k, str)]
    if bad_keys:
        raise SpecError(path, [(str(bad_keys[0]), "keys must be strings")])
    for reserved in ("source_path", "source_sha256", "source_text"):
        if reserved in data:
            raise SpecError(path, [(reserved, f"unknown key '{reserved}'; it is set by drdrill")])
    targets = data.get("targets") if isinstance(data.get("targets"), list) else []
    for i, t in enumerate(targets):
        if isinstance(t, dict) and isinstance(t.get("source"), dict) and "boundary_checks" in t["source"]:
            raise SpecError(path, [(f"targets[{i}].source.boundary_checks", "unknown key 'boundary_checks'; it is set by drdrill")])
    return data


def load_yaml(text: str) -> tuple[Any, list[tuple[int, str]]]:
    """The document and its repeated keys as (line, message), in the file's order."""
    loader = _DrillLoader(text)
    try:
        return loader.get_single_data(), sorted(loader.duplicates)
    finally:
        loader.dispose()


# ---------------------------------------------------------------- paths

