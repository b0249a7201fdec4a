"""Safe YAML loading for spec files, keeping where every value came from.

:func:`load_yaml` is called by :mod:`controller.specs.parse` for every spec
file. It refuses, before or while parsing, everything a spec has no use for
and an attacker could: oversized files, binary or non-UTF-8 content, anchors
and aliases (so a "billion laughs" bomb is refused, never expanded),
non-standard tags such as ``!!python/object``, duplicate keys and non-string
keys. Scalars resolve as PyYAML's safe loader resolves them (YAML 1.1 ints,
floats, booleans, null), except timestamps, which stay strings.

The libyaml parser builds the node tree (with marks) in C; this module turns
it into plain ``dict``/``list``/scalars in one lean pass and keeps the tree so
that a path inside the document can be located later, only when an error needs
a line and column (:meth:`YamlDocument.locate`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

MAX_BYTES = 1024 * 1024  # default per-file size limit: 1 MiB

DocPath = tuple[str | int, ...]  # path inside a document: keys and list indexes

_Parser: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_T = "tag:yaml.org,2002:"
_STR, _MAP, _SEQ = _T + "str", _T + "map", _T + "seq"
_INT, _FLOAT, _BOOL, _NULL = _T + "int", _T + "float", _T + "bool", _T + "null"
_MERGE = _T + "merge"
_PLAIN = "?plain"  # our marker: a plain (unquoted) scalar without a tag, resolved on construction

# The same implicit resolvers PyYAML's safe loader uses, keyed by first character.
_IMPLICIT: dict[str, list[tuple[str, re.Pattern[str]]]] = Resolver.yaml_implicit_resolvers
_SCALARS = SafeConstructor()
_EXPLICIT_SCALAR = {
    _INT: _SCALARS.construct_yaml_int,
    _FLOAT: _SCALARS.construct_yaml_float,
    _BOOL: _SCALARS.construct_yaml_bool,
    _NULL: _SCALARS.construct_yaml_null,
}
_TAG_NAMES = {_INT: "!!int", _FLOAT: "!!float", _BOOL: "!!bool", _NULL: "!!null"}


class YamlError(Exception):
    """A problem with the file as YAML; ``line``/``column`` are 1-based (0 when unknown)."""

    def __init__(self, message: str, line: int = 0, column: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column


class _Loader(_Parser):  # type: ignore[misc]
    """libyaml's parser with a resolver that defers scalar resolution to construction."""

    def resolve(self, kind: type[Node], value: Any, implicit: tuple[bool, bool]) -> str:
        if kind is ScalarNode:
            return _PLAIN if implicit[0] else _STR
        return _MAP if kind is MappingNode else _SEQ


@dataclass(frozen=True)
class YamlDocument:
    """One loaded document: its plain-Python data and the node tree it came from."""

    data: dict[str, Any]
    root: MappingNode

    def locate(self, path: Sequence[str | int], *, key: bool = False) -> tuple[int, int]:
        """1-based (line, column) of the value at ``path``, or of its key when ``key`` is true.

        A path that does not exist is located at its nearest existing ancestor.
        """
        node: Node = self.root
        mark = node.start_mark
        for element in path:
            found: Node | None = None
            if isinstance(node, MappingNode) and isinstance(element, str):
                for key_node, value_node in node.value:
                    if isinstance(key_node, ScalarNode) and key_node.value == element:
                        found = value_node
                        mark = key_node.start_mark if key else value_node.start_mark
                        break
            elif isinstance(node, SequenceNode) and isinstance(element, int) and element < len(node.value):
                found = node.value[element]
                mark = found.start_mark
            if found is None:
                break
            node = found
        return mark.line + 1, mark.column + 1


def load_yaml(data: bytes, *, max_bytes: int = MAX_BYTES) -> YamlDocument:
    """Parse one spec file's bytes into a :class:`YamlDocument`; raise :class:`YamlError` if unfit."""
    return load_text(decode_spec(data, max_bytes=max_bytes))


def decode_spec(data: bytes, *, max_bytes: int = MAX_BYTES) -> str:
    """The text of one spec file, without a BOM; raise :class:`YamlError` if it is too big, binary or empty.

    The checks on the bytes that come before any YAML reader, shared by
    :func:`load_yaml` and the fast reader of :mod:`controller.specs.fastyaml`.
    """
    if len(data) > max_bytes:
        raise YamlError(f"file is too large: the limit is {max_bytes} bytes")
    if b"\0" in data:
        raise YamlError("file is binary, not YAML text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - data.rfind(b"\n", 0, exc.start)
        raise YamlError("file is not valid UTF-8 text", line, column) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text.strip():
        raise YamlError("file is empty")
    return text


def load_text(text: str) -> YamlDocument:
    """Parse text from :func:`decode_spec` into a :class:`YamlDocument`; raise :class:`YamlError` if unfit."""
    if "&" in text:
        _refuse_anchors(text)
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(exc, text) from None
    except yaml.YAMLError as exc:
        raise YamlError(f"invalid YAML: {exc}") from None
    finally:
        loader.dispose()
    if root is None:
        raise YamlError("file is empty")
    if not isinstance(root, MappingNode) or root.tag != _MAP:
        mark = root.start_mark
        raise YamlError(
            f"expected a mapping (apiVersion, kind, metadata, spec), got {_node_kind(root)}",
            mark.line + 1,
            mark.column + 1,
        )
    data_out = _mapping(root)
    return YamlDocument(data=data_out, root=root)


def _refuse_anchors(text: str) -> None:
    """Refuse anchors and aliases from the token stream, before any node is built."""
    scanner = _Loader(text)
    try:
        while True:
            token = scanner.get_token()
            if token is None or isinstance(token, yaml.StreamEndToken):
                return
            if isinstance(token, yaml.AnchorToken | yaml.AliasToken):
                mark = token.start_mark
                raise YamlError("anchors and aliases (&, *) are not allowed", mark.line + 1, mark.column + 1)
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(exc, text) from None
    finally:
        scanner.dispose()


def _syntax_error(exc: yaml.MarkedYAMLError, text: str) -> YamlError:
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or exc.context or "syntax error"
    if mark is not None and _char_at(text, mark.line, mark.column) == "\t":
        message = "tab character: YAML must be indented with spaces"
    elif "undefined alias" in problem:
        message = "anchors and aliases (&, *) are not allowed"
    elif "expected a single document" in (exc.context or ""):
        message = "expected a single YAML document, found more than one ('---')"
    else:
        message = f"invalid YAML: {problem}"
        if exc.context:
            message += f" ({exc.context})"
    if mark is None:
        return YamlError(message)
    return YamlError(message, mark.line + 1, mark.column + 1)


def _char_at(text: str, line: int, column: int) -> str:
    lines = text.split("\n", line + 1)
    return lines[line][column : column + 1] if line < len(lines) else ""


def _node_kind(node: Node) -> str:
    if isinstance(node, SequenceNode):
        return "a list"
    if isinstance(node, MappingNode):
        return f"a node tagged {node.tag}"
    return f"a scalar ({node.value!r})" if node.value else "an empty value"


def _fail(node: Node, message: str) -> YamlError:
    return YamlError(message, node.start_mark.line + 1, node.start_mark.column + 1)


# Plain scalars that are booleans or null under YAML 1.1 (PyYAML's bool and null resolvers).
WORDS: dict[str, Any] = {
    **dict.fromkeys(("yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"), True),
    **dict.fromkeys(("no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"), False),
    **dict.fromkeys(("~", "null", "Null", "NULL", ""), None),
}
# First characters of plain scalars that may be numbers (or merge/value keys): resolved by regex.
NUMERIC_START = frozenset("0123456789-+.<=")
_WORDS, _NUMERIC = WORDS, NUMERIC_START


def _plain(value: str) -> Any:
    """Resolve a plain scalar exactly as PyYAML's safe loader does (timestamps stay strings)."""
    if value in _WORDS:
        return _WORDS[value]
    first = value[:1]
    if first not in _NUMERIC:
        return value
    if value.isdigit() and value.isascii() and (first != "0" or len(value) == 1):
        return int(value)
    for tag, regexp in _IMPLICIT[first]:
        if regexp.match(value):
            if tag == _FLOAT:
                if "_" not in value and ":" not in value and first != ".":
                    try:
                        return float(value)
                    except ValueError:
                        pass
                return _SCALARS.construct_yaml_float(ScalarNode(tag, value))
            if tag == _INT:
                return _SCALARS.construct_yaml_int(ScalarNode(tag, value))
            if tag == _MERGE:
                return _MERGE
            return value  # timestamps and "=" stay strings
    return value


# The same few numbers and words recur across thousands of specs; their values are immutable.
resolve_plain = functools.lru_cache(maxsize=4096)(_plain)


def _value(node: Node) -> Any:
    tag = node.tag
    if tag is _PLAIN:
        return resolve_plain(node.value)
    if tag == _STR:
        if type(node) is ScalarNode:
            return node.value
    elif tag == _MAP:
        if type(node) is MappingNode:
            return _mapping(node)
    elif tag == _SEQ:
        if type(node) is SequenceNode:
            return [_value(item) for item in node.value]
    elif tag in _EXPLICIT_SCALAR:
        if type(node) is ScalarNode:
            try:
                return _EXPLICIT_SCALAR[tag](node)
            except (ValueError, KeyError, IndexError, ConstructorError):
                raise _fail(node, f"{node.value!r} is not a valid {_TAG_NAMES[tag]}") from None
    else:
        shown = "!!" + tag[len(_T) :] if tag.startswith(_T) else tag
        raise _fail(node, f"tag {shown} is not allowed; specs use plain YAML values")
    raise _fail(node, f"tag !!{tag[len(_T) :]} does not fit this kind of node")


def _key(node: Node) -> str:
    if type(node) is not ScalarNode:
        raise _fail(node, "mapping keys must be plain strings, not lists or mappings")
    key = _value(node)
    if type(key) is not str:
        shown = "null" if key is None else str(key).lower() if isinstance(key, bool) else str(key)
        raise _fail(node, f"mapping key {shown} is not a string; put it in quotes")
    if key == _MERGE and node.tag is _PLAIN:
        raise _fail(node, "merge keys (<<) are not allowed")
    return key


def _mapping(node: MappingNode) -> dict[str, Any]:
    # The hot loop of loading: plain string keys and plain scalar values take the short paths.
    out: dict[str, Any] = {}
    for key_node, value_node in node.value:
        key = key_node.value
        if key_node.tag is not _PLAIN or key in _WORDS or key[:1] in _NUMERIC:
            key = _key(key_node)
        if key in out:
            raise _fail(key_node, f"duplicate key '{key}'")
        tag = value_node.tag
        if tag is _PLAIN:
            value = value_node.value
            out[key] = value if value[:1] not in _NUMERIC and value not in _WORDS else resolve_plain(value)
        elif tag is _MAP and type(value_node) is MappingNode:
            out[key] = _mapping(value_node)
        else:
            out[key] = _value(value_node)
    return out
