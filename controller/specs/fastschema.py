"""A fast yes/no check of a document against a JSON Schema.

jsonschema takes about a millisecond to accept one model spec, too slow for a
repository of ten thousand models. :func:`compile_schema` turns a schema into
a tree of small closures that answers valid (``True``) or invalid (``False``)
with jsonschema's semantics for the keywords it supports.
:mod:`controller.specs.schema` trusts a ``True`` and asks jsonschema, the
reference, for the errors (and the final word) on a ``False``. It interprets
the schema, it does not restate it: the schemas stay the one definition of
validity. Every check is exact, never merely conservative, because ``not``
and ``oneOf`` turn a wrong "no" into a wrong "yes".

Only the keywords the Flywheel schemas use are supported; any other keyword
makes :func:`compile_schema` raise :class:`UnsupportedSchema`, so a schema
change cannot silently weaken the check.

It earns its lines: ``bench/bench_specs.py --variants as-is,no-fastschema``
(the cold catalog of 10,000 specs, 2-core machine at load 2.2-3.0, three
windows of three interleaved runs) took 4.7-5.1x the CPU with jsonschema
deciding every document (median 4.4-5.0 s against 22-23.5 s; 3.9-7.7x the
wall-clock time).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sized
from typing import Any

Check = Callable[[Any], bool]

_ANNOTATIONS = frozenset(
    {"$schema", "$id", "$comment", "$defs", "title", "description", "default", "examples", "deprecated"}
)
_OBJECT_KEYWORDS = frozenset({"properties", "additionalProperties", "required"})


class UnsupportedSchema(ValueError):
    """The schema uses a keyword this compiler does not implement."""


def compile_schema(schema: Mapping[str, Any]) -> Check:
    """Compile a draft 2020-12 ``schema`` (local ``$ref`` only) into a conservative validity check."""
    return _Compiler(schema).compile(schema)


def _always(instance: Any) -> bool:
    return True


def _never(instance: Any) -> bool:
    return False


_TYPES: dict[str, Check] = {
    "string": lambda x: type(x) is str,
    "object": lambda x: type(x) is dict,
    "array": lambda x: type(x) is list,
    "boolean": lambda x: type(x) is bool,
    "null": lambda x: x is None,
    "number": lambda x: type(x) is int or type(x) is float,
    "integer": lambda x: type(x) is int or (type(x) is float and x.is_integer()),
}


def _equal(a: Any, b: Any) -> bool:
    """JSON equality: booleans are not numbers, 1 == 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if type(a) is str or type(b) is str or a is None or b is None:
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return bool(a == b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return False


def _all(checks: list[Check]) -> Check:
    if not checks:
        return _always
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:
        first, second = checks
        return lambda x: first(x) and second(x)
    frozen = tuple(checks)

    def check(x: Any) -> bool:
        for c in frozen:  # noqa: SIM110 - a loop is faster than all() over a generator here
            if not c(x):
                return False
        return True

    return check


_STRING_KEYWORDS = frozenset({"minLength", "maxLength", "pattern"})
_NUMBER_KEYWORDS = frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"})


def _fused_scalar(schema: Mapping[str, Any]) -> Check | None:
    """One closure for the commonest leaves: a string or number type with its bounds or pattern.

    The same logic as the type check and the keyword checks joined by
    :func:`_all`, in one call instead of three.
    """
    kind = schema.get("type")
    keywords = schema.keys() - _ANNOTATIONS - {"type"}
    if kind == "string" and keywords and keywords <= _STRING_KEYWORDS:
        shortest: int = schema.get("minLength", 0)
        longest: int | None = schema.get("maxLength")
        search = re.compile(schema["pattern"]).search if "pattern" in schema else None
        if longest is None and search is None:
            return lambda x: type(x) is str and len(x) >= shortest
        if longest is None and shortest == 0 and search is not None:
            return lambda x: type(x) is str and search(x) is not None

        def string(x: Any) -> bool:
            return (
                type(x) is str
                and len(x) >= shortest
                and (longest is None or len(x) <= longest)
                and (search is None or search(x) is not None)
            )

        return string
    if kind in ("number", "integer") and keywords and keywords <= _NUMBER_KEYWORDS:
        is_type = _TYPES[kind]
        low, high = schema.get("minimum"), schema.get("maximum")
        above, below = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
        if keywords == {"minimum"} and kind == "number":
            least: float = schema["minimum"]
            return lambda x: (type(x) is int or type(x) is float) and not x < least

        def number(x: Any) -> bool:
            return (
                is_type(x)
                and (low is None or not x < low)
                and (high is None or not x > high)
                and (above is None or not x <= above)
                and (below is None or not x >= below)
            )

        return number
    return None


# The bounds on the size of an object, an array or a string: the type they apply to, and whether at most.
_SIZE_BOUNDS: dict[str, tuple[type[Sized], bool]] = {
    "minProperties": (dict, False),
    "maxProperties": (dict, True),
    "minItems": (list, False),
    "maxItems": (list, True),
    "minLength": (str, False),
    "maxLength": (str, True),
}


def _size_bound(kind: type[Sized], at_most: bool, n: int) -> Check:
    """``len(x)`` at least (or at most) ``n`` when ``x`` is of ``kind``; anything else passes."""
    if at_most:
        return lambda x: type(x) is not kind or len(x) <= n
    return lambda x: type(x) is not kind or len(x) >= n


class _Compiler:
    def __init__(self, root: Mapping[str, Any]) -> None:
        self.root = root
        self.refs: dict[str, Check] = {}

    def ref(self, ref: str) -> Check:
        if ref in self.refs:
            return self.refs[ref]
        if not ref.startswith("#"):
            raise UnsupportedSchema(f"only local $ref is supported: {ref}")
        target: Any = self.root
        for part in ref[1:].split("/")[1:]:
            target = target[part.replace("~1", "/").replace("~0", "~")]
        late: list[Check] = []
        self.refs[ref] = lambda x: late[0](x)  # for recursive schemas
        compiled = self.compile(target)
        late.append(compiled)
        self.refs[ref] = compiled
        return compiled

    def compile(self, schema: Any) -> Check:
        if schema is True:
            return _always
        if schema is False:
            return _never
        if not isinstance(schema, Mapping):
            raise UnsupportedSchema(f"not a schema: {schema!r}")
        if schema.keys() == {"required"}:
            names = tuple(schema["required"])
            if len(names) == 1:
                name = names[0]
                return lambda x: type(x) is not dict or name in x
            return lambda x: type(x) is not dict or all(n in x for n in names)
        fused = _fused_scalar(schema)
        if fused is not None:
            return fused
        checks: list[Check] = []
        handled = set(_ANNOTATIONS)
        if "$ref" in schema:
            checks.append(self.ref(schema["$ref"]))
            handled.add("$ref")
        types = schema.get("type")
        handled.add("type")
        if types == "object" and _OBJECT_KEYWORDS & schema.keys():
            checks.append(self._object(schema))
            handled |= _OBJECT_KEYWORDS
        elif isinstance(types, str):
            checks.append(_TYPES[types])
        elif isinstance(types, list):
            alternatives = [_TYPES[t] for t in types]
            checks.append(lambda x: any(t(x) for t in alternatives))
        if _OBJECT_KEYWORDS & schema.keys() and not handled >= _OBJECT_KEYWORDS:
            checks.append(self._object(schema, typed=False))
            handled |= _OBJECT_KEYWORDS
        for keyword, value in schema.items():
            if keyword in handled:
                continue
            if keyword in _SIZE_BOUNDS:
                checks.append(_size_bound(*_SIZE_BOUNDS[keyword], value))
                continue
            make = getattr(self, "_kw_" + keyword.replace("$", ""), None)
            if make is None:
                raise UnsupportedSchema(f"keyword {keyword!r} is not supported")
            checks.append(make(value, schema))
        return _all(checks)

    # -- objects

    def _object(self, schema: Mapping[str, Any], *, typed: bool = True) -> Check:
        props: dict[str, Check] = {k: self.compile(v) for k, v in schema.get("properties", {}).items()}
        required = tuple(schema.get("required", ()))
        additional_schema = schema.get("additionalProperties", True)
        additional: Check | None = None if additional_schema is True else self.compile(additional_schema)
        forbid_extra = additional_schema is False
        get = props.get

        def check(x: Any) -> bool:
            if type(x) is not dict:
                return not typed
            for key in required:
                if key not in x:
                    return False
            for key, value in x.items():
                c = get(key)
                if c is not None:
                    if not c(value):
                        return False
                elif forbid_extra or (additional is not None and not additional(value)):
                    return False
            return True

        return check

    def _kw_propertyNames(self, sub: Any, schema: Any) -> Check:
        c = self.compile(sub)
        return lambda x: type(x) is not dict or all(c(k) for k in x)

    def _kw_dependentRequired(self, deps: Mapping[str, list[str]], schema: Any) -> Check:
        items = [(k, tuple(v)) for k, v in deps.items()]
        return lambda x: type(x) is not dict or all(all(r in x for r in rs) for k, rs in items if k in x)

    def _kw_dependentSchemas(self, deps: Mapping[str, Any], schema: Any) -> Check:
        items = [(k, self.compile(v)) for k, v in deps.items()]
        return lambda x: type(x) is not dict or all(c(x) for k, c in items if k in x)

    # -- arrays

    def _kw_items(self, sub: Any, schema: Any) -> Check:
        c = self.compile(sub)

        def check(x: Any) -> bool:
            if type(x) is list:
                for item in x:  # a loop: faster than all() over a generator
                    if not c(item):
                        return False
            return True

        return check

    def _kw_uniqueItems(self, unique: bool, schema: Any) -> Check:
        if not unique:
            return _always

        def check(x: Any) -> bool:
            if type(x) is not list:
                return True
            if all(type(i) is str for i in x):
                return len(set(x)) == len(x)
            return not any(_equal(a, b) for i, a in enumerate(x) for b in x[i + 1 :])

        return check

    # -- scalars

    def _kw_const(self, value: Any, schema: Any) -> Check:
        if type(value) is str:
            return lambda x: type(x) is str and x == value
        return lambda x: _equal(x, value)

    def _kw_enum(self, values: list[Any], schema: Any) -> Check:
        if all(type(v) is str for v in values):
            allowed = frozenset(values)
            return lambda x: type(x) is str and x in allowed
        return lambda x: any(_equal(x, v) for v in values)

    def _kw_pattern(self, pattern: str, schema: Any) -> Check:
        search = re.compile(pattern).search
        return lambda x: type(x) is not str or search(x) is not None

    def _kw_minimum(self, n: float, schema: Any) -> Check:
        return lambda x: (type(x) is not int and type(x) is not float) or not x < n

    def _kw_maximum(self, n: float, schema: Any) -> Check:
        return lambda x: (type(x) is not int and type(x) is not float) or not x > n

    def _kw_exclusiveMinimum(self, n: float, schema: Any) -> Check:
        return lambda x: (type(x) is not int and type(x) is not float) or not x <= n

    def _kw_exclusiveMaximum(self, n: float, schema: Any) -> Check:
        return lambda x: (type(x) is not int and type(x) is not float) or not x >= n

    # -- combinators

    def _kw_allOf(self, subs: list[Any], schema: Any) -> Check:
        return _all([self.compile(s) for s in subs])

    def _kw_anyOf(self, subs: list[Any], schema: Any) -> Check:
        checks = [self.compile(s) for s in subs]
        return lambda x: any(c(x) for c in checks)

    def _kw_oneOf(self, subs: list[Any], schema: Any) -> Check:
        checks = [self.compile(s) for s in subs]

        def check(x: Any) -> bool:
            matched = 0
            for c in checks:
                if c(x):
                    matched += 1
            return matched == 1

        return check

    def _kw_not(self, sub: Any, schema: Any) -> Check:
        c = self.compile(sub)
        return lambda x: not c(x)

    def _kw_if(self, sub: Any, schema: Mapping[str, Any]) -> Check:
        condition = self.compile(sub)
        then = self.compile(schema.get("then", True))
        otherwise = self.compile(schema.get("else", True))
        return lambda x: then(x) if condition(x) else otherwise(x)

    def _kw_then(self, sub: Any, schema: Any) -> Check:
        return _always  # applied by "if"

    def _kw_else(self, sub: Any, schema: Any) -> Check:
        return _always  # applied by "if"
