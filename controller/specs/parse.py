"""Parse and check one spec file on its own: YAML, schema, typed record, in-document checks.

Positions are only needed for errors, so :func:`parse_document` reads a file
with the fast reader for plain YAML (:mod:`controller.specs.fastyaml`) first;
when that reader declines the file, or the document it read has any problem
at all, the full loader (:mod:`controller.specs.loader`) reads it again and
every error is located from there.

:func:`parse_document` depends only on the file's path and bytes, so a caller
that reads specs from git can cache its result by blob id (and path) and hand
the results to :func:`controller.specs.validate.check_catalog` for the checks
across documents. It never raises on bad input: every problem becomes a
located :class:`~controller.specs.types.SpecError`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from controller.specs import schema
from controller.specs.build import Document, build
from controller.specs.checks import Target, check_document, mentions, not_supported
from controller.specs.fastyaml import PlainDocument, load_plain
from controller.specs.loader import MAX_BYTES, DocPath, YamlError, decode_spec, load_text
from controller.specs.paths import spec_kind
from controller.specs.schema import KINDS, Problem, describe
from controller.specs.types import Kind, Location, SpecError


@dataclass(frozen=True)
class Reference:
    """A name one document refers to, or declares, for the checks across documents."""

    target: Target
    name: str
    path: str  # rendered path inside the document
    location: Location


@dataclass(frozen=True)
class ParsedFile:
    """One spec file, parsed and checked on its own.

    ``document`` is the typed record when the file had no error of its own
    (the checks across documents may still exclude it from the catalog).
    """

    path: str
    kind: Kind | None = None
    name: str | None = None
    name_location: Location | None = None
    document: Document | None = None
    errors: tuple[SpecError, ...] = ()
    references: tuple[Reference, ...] = ()  # environments and approval rules it needs
    declarations: tuple[Reference, ...] = ()  # approval rules it declares

    @property
    def ok(self) -> bool:
        return not self.errors


def render_path(path: DocPath) -> str:
    """``("spec", "gates", 0, "min")`` → ``spec.gates[0].min``."""
    out = ""
    for element in path:
        if isinstance(element, int):
            out += f"[{element}]"
        elif _WORD.fullmatch(element):
            out += f".{element}" if out else element
        else:
            out += f"[{element!r}]"
    return out


_WORD = re.compile(r"[\w-]+")  # letters and digits (str.isalnum), "_" and "-"


def parse_document(path: str, data: bytes, *, max_bytes: int = MAX_BYTES) -> ParsedFile:
    """Parse, schema-check, build and self-check the spec file at repo-relative ``path``.

    The kind is fixed by the path (see :func:`controller.specs.paths.spec_kind`);
    for any other path it is taken from the document's ``kind``.
    """
    expected = spec_kind(path)
    try:
        text = decode_spec(data, max_bytes=max_bytes)
    except Exception as exc:  # YamlError, or anything a hostile file could set off
        return _unreadable(path, expected, exc)
    plain = _load_plain(text)
    if plain is not None:
        parsed = _check_loaded(path, plain, expected)
        if parsed.ok:
            return parsed
    # outside the fast reader's subset, or not valid: the full loader reads it and locates every error
    try:
        loaded = load_text(text)
    except Exception as exc:  # never let a hostile file take the caller down
        return _unreadable(path, expected, exc)
    return _check_loaded(path, loaded, expected)


def _unreadable(path: str, expected: Kind | None, exc: Exception) -> ParsedFile:
    if isinstance(exc, YamlError):
        error = SpecError(Location(path, exc.line, exc.column), "", exc.message, kind=expected or "")
    else:
        error = SpecError(Location(path), "", f"cannot read the file as YAML: {exc}", kind=expected or "")
    return ParsedFile(path=path, kind=expected, errors=(error,))


def _load_plain(text: str) -> PlainDocument | None:
    try:
        return load_plain(text)
    except Exception:  # a flaw in the fast reader must cost only time: the full loader decides
        return None


class _Loaded(Protocol):
    """A loaded document: :class:`~controller.specs.loader.YamlDocument` or :class:`PlainDocument`."""

    @property
    def data(self) -> dict[str, Any]: ...

    def locate(self, path: Sequence[str | int], *, key: bool = False) -> tuple[int, int]: ...


def _check_loaded(path: str, loaded: _Loaded, expected: Kind | None) -> ParsedFile:
    data = loaded.data
    metadata = data.get("metadata")
    raw_name = metadata.get("name") if isinstance(metadata, dict) else None
    name = raw_name if isinstance(raw_name, str) and raw_name else None
    kind = expected
    if kind is None:
        raw_kind = data.get("kind")
        kind = next((k for k in KINDS if k == raw_kind), None)
    name_location = Location(path, *loaded.locate(("metadata", "name")))

    def located(problem: Problem) -> SpecError:
        line, column = loaded.locate(problem.path, key=problem.at_key)
        shown = problem.path[:-1] if problem.at_key and not problem.named else problem.path
        return SpecError(
            Location(path, line, column), render_path(shown), problem.message, kind or "", name or ""
        )

    if kind is None:
        if "kind" in data:
            message = f"expected one of {', '.join(KINDS)}, got {describe(data['kind'])}"
            problem = Problem(("kind",), message)
        else:
            problem = Problem((), "missing required field 'kind'")
        return ParsedFile(path=path, name=name, name_location=name_location, errors=(located(problem),))

    problems = schema.check(kind, data)
    refused = not_supported(kind, data)  # reported with the schema's errors, whatever they are
    document: Document | None = None
    references: list[Reference] = []
    declarations: list[Reference] = []
    if not problems:
        try:
            document, problems = build(kind, data, path)
            problems += check_document(kind, data)
            refers, declares = mentions(kind, data)
        except Exception as exc:  # a schema gap must not crash the controller
            problems = [Problem((), f"internal error while reading this {kind}: {exc!r}")]
            document, refers, declares = None, [], []

        def reference(mention: Any) -> Reference:
            line, column = loaded.locate(mention.path)
            return Reference(
                mention.target, mention.name, render_path(mention.path), Location(path, line, column)
            )

        references = [reference(m) for m in refers]
        declarations = [reference(m) for m in declares]
    elif kind == "Policy":
        # an invalid policy still says which approval rules it meant to declare, for better messages
        rules = data.get("spec", {}).get("approvals") if isinstance(data.get("spec"), dict) else None
        for index, rule in enumerate(rules if isinstance(rules, list) else []):
            if isinstance(rule, dict) and isinstance(rule.get("name"), str):
                where: DocPath = ("spec", "approvals", index, "name")
                line, column = loaded.locate(where)
                declarations.append(
                    Reference("approval rule", rule["name"], render_path(where), Location(path, line, column))
                )
    problems += refused
    errors = sorted((located(p) for p in problems), key=lambda e: (e.location.line, e.location.column))
    return ParsedFile(
        path=path,
        kind=kind,
        name=name,
        name_location=name_location,
        document=None if errors else document,
        errors=tuple(errors),
        references=tuple(references),
        declarations=tuple(declarations),
    )
