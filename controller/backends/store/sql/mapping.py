"""Rows to records and back, for every record kind, driven by the record's ``dataclasses.fields``.

One generic mapper instead of one hand-written function per record: a row's
columns carry the fields' names, so a record is built from the columns its
fields name, converting only what a column cannot hold as the field's type
(a JSON array read back for a ``tuple``, JSON objects for nested records
such as a run's :class:`~controller.backends.store.StepResult`). Values are
otherwise handed over as the database returns them: a JSON ``1`` in a run's
metrics stays ``1`` (pydantic's ``TypeAdapter`` would turn it into ``1.0``,
and cost ten times as much per row). SQLAlchemy's ORM mapping of the
dataclasses was the other way, but it instruments the classes themselves,
which frozen records do not allow.

Used by the record kinds' SQL modules of :mod:`controller.backends.store.sql`,
which read single records through :func:`found` and :func:`one`.
"""

from __future__ import annotations

import dataclasses
import functools
import types
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, Union, cast, get_args, get_origin, get_type_hints

from sqlalchemy import Connection, Select, Table, select

from controller.backends.store.common import NotFound

__all__ = ["found", "json_ready", "keyed", "one", "record", "records"]

R = TypeVar("R")
_Convert = Callable[[Any], Any]


def record(cls: type[R], values: Mapping[Any, Any]) -> R:
    """A ``cls`` from the ``values`` its fields name (a row, or a JSON object); absent ones take defaults."""
    given: dict[str, Any] = {}
    for name, convert in _fields(cast(type, cls)):
        if name in values:
            value = values[name]
            given[name] = value if convert is None or value is None else convert(value)
    return cls(**given)


def records(cls: type[R], rows: Any) -> list[R]:
    """One ``cls`` per row of ``rows`` (an iterable of row mappings)."""
    return [record(cls, row) for row in rows]


def keyed(table: Table, **key: Any) -> Select[Any]:
    """The rows of ``table`` whose columns hold the values ``key`` names."""
    return select(table).where(*(table.c[name] == value for name, value in key.items()))


def found(conn: Connection, cls: type[R], query: Select[Any]) -> R | None:
    """A ``cls`` from the first row ``query`` returns, or ``None`` when it returns none."""
    row = conn.execute(query).mappings().first()
    return None if row is None else record(cls, row)


def one(conn: Connection, cls: type[R], query: Select[Any], *, missing: str) -> R:
    """A ``cls`` from the first row ``query`` returns; :class:`NotFound` saying ``missing`` when none."""
    result = found(conn, cls, query)
    if result is None:
        raise NotFound(missing)
    return result


def json_ready(value: Any) -> Any:
    """``value`` as a JSON column takes it: records as objects, mappings as dicts, tuples as lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: json_ready(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, tuple | list):
        return [json_ready(item) for item in value]
    return value


@functools.cache
def _fields(cls: type) -> tuple[tuple[str, _Convert | None], ...]:
    hints = get_type_hints(cls)
    return tuple((field.name, _converter(hints[field.name])) for field in dataclasses.fields(cls))


def _converter(hint: Any) -> _Convert | None:
    """How a stored value becomes a field of type ``hint``; ``None`` when it needs nothing."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        present = [arg for arg in args if arg is not type(None)]
        return _converter(present[0]) if len(present) == 1 else None
    if origin is tuple:
        return tuple
    if origin is dict and len(args) == 2 and isinstance(args[1], type) and dataclasses.is_dataclass(args[1]):
        nested = args[1]
        return lambda mapping: {key: record(nested, item) for key, item in mapping.items()}
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return functools.partial(record, hint)
    if hint is bool:
        return bool
    return None
