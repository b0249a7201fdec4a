"""The shipped JSON Schemas, checking documents against them, and wording the errors.

The schemas in ``schemas/*.schema.json`` are the one definition of what is
valid. :func:`check` answers from a compiled fast check
(:mod:`controller.specs.fastschema`) for the common case of a valid document
and asks jsonschema for every error otherwise; this module then words each
jsonschema error as a plain sentence and says which node it is about.
Called by :mod:`controller.specs.parse`; :func:`schemas` is public.
"""

from __future__ import annotations

import copy
import difflib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator, ValidationError

from controller.specs.fastschema import Check, compile_schema
from controller.specs.loader import DocPath
from controller.specs.types import Kind

KINDS: tuple[Kind, ...] = ("Model", "Policy", "Environment")
SCHEMA_FILES: dict[Kind, str] = {
    "Model": "model.schema.json",
    "Policy": "policy.schema.json",
    "Environment": "environment.schema.json",
}


@dataclass(frozen=True)
class Problem:
    """One problem in a document: where (``path``, and whether the key rather than the value) and what.

    A problem located at a key names the mapping that holds the key (``spec:
    unknown field 'x'``) unless ``named``, which names the field itself.
    """

    path: DocPath
    message: str
    at_key: bool = False
    named: bool = False


@cache
def _raw_schemas() -> dict[Kind, dict[str, Any]]:
    folder = resources.files("controller.specs") / "schemas"
    return {kind: json.loads((folder / name).read_text("utf-8")) for kind, name in SCHEMA_FILES.items()}


def schemas() -> dict[str, dict[str, Any]]:
    """Kind (``Model``, ``Policy``, ``Environment``) → its JSON Schema (a fresh copy)."""
    return {kind: copy.deepcopy(schema) for kind, schema in _raw_schemas().items()}


@cache
def _validator(kind: Kind) -> Draft202012Validator:
    return Draft202012Validator(_raw_schemas()[kind])


@cache
def _fast(kind: Kind) -> Check:
    return compile_schema(_raw_schemas()[kind])


def check(kind: Kind, document: Any) -> list[Problem]:
    """Every schema error of ``document`` as a ``kind``; empty when it is valid."""
    if _fast(kind)(document):
        return []
    problems: list[Problem] = []
    for error in _validator(kind).iter_errors(document):
        problems.extend(_explain(error))
    return problems


# ------------------------------------------------------------------ wording

_TYPE_NAMES = {
    "string": "a string",
    "number": "a number",
    "integer": "a whole number",
    "boolean": "true or false",
    "object": "a mapping",
    "array": "a list",
    "null": "null",
}


def describe(value: Any) -> str:
    """A short rendering of a YAML value for a message."""
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return repr(shown)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return repr(value)


def _join(words: list[str], last: str = "and") -> str:
    if len(words) <= 1:
        return "".join(words)
    return f"{', '.join(words[:-1])} {last} {words[-1]}"


def _required_alternatives(subschemas: Any) -> list[str] | None:
    """The field names when every alternative is just ``{"required": [name]}``."""
    names: list[str] = []
    for sub in subschemas:
        if not isinstance(sub, Mapping) or set(sub) != {"required"} or len(sub["required"]) != 1:
            return None
        names.append(sub["required"][0])
    return names


def _explain(error: ValidationError) -> Iterator[Problem]:
    path: DocPath = tuple(error.absolute_path)
    instance = error.instance
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    if error.validator == "additionalProperties" and isinstance(instance, dict):
        known = list(schema.get("properties", {}))
        patterns = [re.compile(p) for p in schema.get("patternProperties", {})]
        for key in instance:
            if key in known or any(p.search(key) for p in patterns):
                continue
            message = f"unknown field '{key}'"
            close = difflib.get_close_matches(key, known, n=1)
            if close:
                message += f"; did you mean '{close[0]}'?"
            elif known:
                message += f" (expected one of: {', '.join(known)})"
            yield Problem((*path, key), message, at_key=True)
        return
    if "propertyNames" in error.absolute_schema_path and isinstance(instance, str):
        # jsonschema checks each key against propertyNames with the key as the instance
        reason = _sentence(error)
        yield Problem((*path, instance), f"invalid name {describe(instance)}: {reason}", at_key=True)
        return
    yield Problem(path, _sentence(error))


# How a number's bound reads: "must be at least 3, got 1".
_BOUNDS = {
    "minimum": "must be at least",
    "maximum": "must be at most",
    "exclusiveMinimum": "must be greater than",
    "exclusiveMaximum": "must be less than",
}
# A bound on the size of a list, a string or a mapping: which end, and what it counts.
_SIZES = {
    "minItems": ("min", "items"),
    "maxItems": ("max", "items"),
    "minLength": ("min", "characters"),
    "maxLength": ("max", "characters"),
    "minProperties": ("min", "fields"),
    "maxProperties": ("max", "fields"),
}


def _sentence(error: ValidationError) -> str:
    validator: str = str(error.validator)
    instance: Any = error.instance
    value: Any = error.validator_value
    schema: Any = error.schema
    got = describe(instance)
    if validator == "type":
        types = [value] if isinstance(value, str) else list(value)
        wanted = _join([_TYPE_NAMES.get(t, t) for t in types], "or")
        if isinstance(schema, Mapping) and schema.get("title"):
            return f"expected {schema['title']}, got {got}"
        message = f"expected {wanted}, got {got}"
        if "string" in types and isinstance(instance, int | float | bool):
            message += " (put it in quotes to make it a string)"
        return message
    if validator == "required":
        missing = [name for name in value if isinstance(instance, dict) and name not in instance]
        fields = _join([f"'{name}'" for name in missing])
        return f"missing required field{'s' if len(missing) > 1 else ''} {fields}"
    if validator == "const":
        return f"expected {describe(value)}, got {got}"
    if validator == "enum":
        return f"expected one of {', '.join(str(v) for v in value)}, got {got}"
    if validator == "pattern":
        title = schema.get("title") if isinstance(schema, Mapping) else None
        if title:
            return f"expected {title}, got {got}"
        return f"{got} does not match the pattern {value}"
    if validator in _BOUNDS:
        return f"{_BOUNDS[validator]} {value}, got {got}"
    if validator in _SIZES:
        limit, unit = _SIZES[validator]
        if limit == "max":
            return f"takes at most {value} {unit}, got {len(instance)}"
        return "must not be empty" if value == 1 else f"needs at least {value} {unit}"
    if validator == "uniqueItems":
        seen: list[Any] = []
        repeated: list[str] = []
        for item in instance:
            if item in seen and describe(item) not in repeated:
                repeated.append(describe(item))
            seen.append(item)
        return f"lists {_join(repeated)} more than once"
    if validator == "dependentRequired":
        for name, needed in value.items():
            missing = [n for n in needed if name in instance and n not in instance]
            if missing:
                return f"'{name}' needs {_join([repr(n) for n in missing])} as well"
    if validator in ("oneOf", "anyOf"):
        names = _required_alternatives(value)
        if names is not None and isinstance(instance, dict):
            present = [n for n in names if n in instance]
            options = _join(names, "or")
            if validator == "anyOf":
                return f"needs at least one of {options}"
            if not present:
                return f"needs exactly one of {options}"
            return f"takes exactly one of {options}, got {_join(present)}"
        if error.context:
            return _sentence(min(error.context, key=lambda e: len(e.relative_path)))
        return f"{got} matches none of the allowed forms"
    return error.message
