"""A fast reader for the plain block-style YAML that nearly every spec file is written in.

:func:`controller.specs.parse.parse_document` tries :func:`load_plain` first
and falls back to the full loader (:func:`controller.specs.loader.load_yaml`)
when it returns ``None``, or when the document it read has any problem at all;
so every refusal and every error message comes from the full loader, and this
module only has to be right about the documents it accepts.

It accepts a deliberately small subset of YAML, read line by line with one
regular expression: block mappings with plain keys, block sequences (also
"indentless" ones under a key), plain, single- and double-quoted scalars on
one line without escapes, one-line flow sequences of such scalars, and ``{}``.
Anything else — a non-ASCII or control character, an anchor, alias, tag,
block scalar, directive, document marker, multi-line scalar, empty value,
flow mapping, complex or quoted or duplicate key, a key that does not resolve
to a string, an indentation it does not expect — returns ``None``, never a
guess. What it accepts resolves to exactly the data the full loader builds
(plain scalars go through the same resolver), and :meth:`PlainDocument.locate`
gives the same line and column as :meth:`controller.specs.loader.YamlDocument.locate`:
the tests compare both readers on every path of every document they have.

It earns its lines: ``bench/bench_specs.py --variants as-is,no-fastyaml``
(the cold catalog of 10,000 specs, 2-core machine at load 2.1-3.1, three
windows of three interleaved runs) took 1.55-1.9x the CPU without it (median
4.4-5.0 s against 7.0-9.3 s; 1.3-2.6x the wall-clock time).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from controller.specs.loader import NUMERIC_START, WORDS, resolve_plain

# Only printable ASCII and line feeds: anything else is for the full loader (BOM, NEL, tabs, CR, ...).
_UNSAFE = re.compile(r"[^\n\x20-\x7e]")

_PLAIN_START = r"[A-Za-z0-9_./~$(+=^;<)]|-(?=[^ \n])"
_PLAIN = rf"(?:{_PLAIN_START})(?:[^ :\n]++|:(?=[^ \n])| ++(?=[^ #\n]))*+"
# First characters of plain scalars that are strings whatever follows (unless the whole is a WORD);
# with NUMERIC_START ("-" only before a non-space), every first character _PLAIN_START allows.
_STRING_START = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_/~$(^;)")
_VALUE = rf"\"[^\"\\\n]*\"|'[^'\n]*'|\[[^\[\]{{}}#'\\:?\n]*\]|\{{ *\}}|{_PLAIN}"

# One line: indent, "- " (a sequence entry), "key:" and the spaces after it, a value, a comment.
# Every line matches or the document is not in the subset (the count of matches tells).
_ROW = re.compile(
    r"^( *+)(- ++|-$)?(?:([A-Za-z_][A-Za-z0-9_./-]*+):( ++|$))?(" + _VALUE + r")? *+(?:(?<![^ \n])#.*)?$",
    re.MULTILINE,
)

Row = tuple[str, str, str, str, str]  # indent, "- " or "", key or "", spaces after the colon, value or ""
Entries = dict[str, int] | list[int]  # the row of each key of a mapping, or of each item of a sequence


class _NotPlain(Exception):
    """The document is outside the subset: let the full loader read it."""


@dataclass(frozen=True)
class PlainDocument:
    """One document read by :func:`load_plain`: its data, and what :meth:`locate` needs.

    ``rows`` are the matched lines; ``entries`` maps the ``id`` of each block
    mapping in ``data`` to the row of each of its keys, and of each block
    sequence to the row of each of its items. Locations are worked out only
    when asked for.
    """

    data: dict[str, Any]
    rows: Sequence[Row]
    entries: dict[int, Entries]

    def locate(self, path: Sequence[str | int], *, key: bool = False) -> tuple[int, int]:
        """1-based (line, column) of the value at ``path``, or of its key when ``key`` is true.

        Same answer as :meth:`controller.specs.loader.YamlDocument.locate`,
        including for paths that do not exist (the nearest existing ancestor).
        """
        # Find the deepest element of ``path`` that exists; only its position is worked out.
        node: Any = self.data
        parent: Any = None
        last: str | int = ""
        flow_parent: Any = None  # the parent of ``parent``, when ``parent`` is a flow sequence
        flow_element: str | int = ""
        for element in path:
            if type(node) is dict and isinstance(element, str):
                if element not in node:
                    break
            elif not (type(node) is list and isinstance(element, int) and element < len(node)):
                break
            if type(node) is list and id(node) not in self.entries:
                flow_parent, flow_element = parent, last
            parent, last = node, element
            node = node[element]
        if parent is None:
            line, column = self._start(node)
        elif type(parent) is dict:
            line, column = self._key_start(parent, last) if key else self._value_start(parent, last)
        elif id(parent) in self.entries:
            index = self.entries[id(parent)][last]  # type: ignore[index]
            line, column = index, len(self.rows[index][0]) + len(self.rows[index][1])
        else:  # an item of a flow sequence: find where the sequence starts, then the item in it
            if type(flow_parent) is dict:
                line, column = self._value_start(flow_parent, flow_element)
            else:
                index = self.entries[id(flow_parent)][flow_element]  # type: ignore[index]
                line, column = index, len(self.rows[index][0]) + len(self.rows[index][1])
            column += _flow_offsets(self.rows[line][4])[last]  # type: ignore[index]
        return line + 1, column + 1

    # -- 0-based positions

    def _key_start(self, mapping: dict[str, Any], name: str | int) -> tuple[int, int]:
        index = self.entries[id(mapping)][name]  # type: ignore[index]
        return index, len(self.rows[index][0]) + len(self.rows[index][1])

    def _value_start(self, mapping: dict[str, Any], name: str | int) -> tuple[int, int]:
        value = mapping[name]  # type: ignore[index]
        if (type(value) is dict or type(value) is list) and id(value) in self.entries:
            return self._start(value)
        index = self.entries[id(mapping)][name]  # type: ignore[index]
        indent, dash, key, spaces, _ = self.rows[index]
        return index, len(indent) + len(dash) + len(key) + 1 + len(spaces)

    def _start(self, container: Any) -> tuple[int, int]:
        """0-based start of a block collection: its first key, or its first "-"."""
        rows = self.entries[id(container)]
        if type(rows) is dict:
            index = next(iter(rows.values()))
            indent, dash = self.rows[index][0], self.rows[index][1]
            return index, len(indent) + len(dash)
        index = rows[0]  # type: ignore[index]
        return index, len(self.rows[index][0])


def _flow_offsets(text: str) -> list[int]:
    """Offsets within ``[a, b, ...]`` of where each item starts."""
    offsets: list[int] = []
    position = 1
    for part in text[1:-1].split(","):
        stripped = len(part) - len(part.lstrip(" "))
        offsets.append(position + stripped)
        position += len(part) + 1
    return offsets


def load_plain(text: str) -> PlainDocument | None:
    """Read ``text`` (already decoded and size-checked) if it is in the subset, else ``None``.

    The result's ``data`` is a mapping, as for the full loader; a document
    whose top level is anything else returns ``None``.
    """
    if _UNSAFE.search(text) is not None:
        return None
    rows: list[Row] = _ROW.findall(text)
    if len(rows) != text.count("\n") + 1:
        return None  # some line is outside the subset
    try:
        data, entries = _build(rows)
    except _NotPlain:
        return None
    return PlainDocument(data=data, rows=rows, entries=entries)


def _build(rows: list[Row]) -> tuple[dict[str, Any], dict[int, Entries]]:
    """The data of the matched lines, and the row of every entry of every block collection."""
    root: dict[str, Any] = {}
    root_rows: dict[str, int] = {}
    entries: dict[int, Entries] = {id(root): root_rows}
    # The collection being filled: its indent (and the same as spaces), itself, the rows of its
    # entries, whether it is a sequence; and the collections around it, innermost last.
    # An indent of -1 (and spaces that no line has): no line read yet.
    now: Any = root
    now_rows: Any = root_rows
    indent_now, spaces_now, now_seq = -1, "\n", False
    outer: list[tuple[int, str, Any, Any, bool]] = []
    pending: str | None = None  # a "key:" of ``now`` whose value is the block that follows
    pending_row = 0
    for index, (indent_text, dash, key, _, value) in enumerate(rows):
        if key and not dash and indent_text == spaces_now and pending is None and not now_seq:
            pass  # the commonest line: one more key of the mapping being filled
        elif not key and not dash:
            if value:
                raise _NotPlain  # a scalar on its own line: a continuation, or the whole document
            continue  # a blank or comment line
        else:
            indent = len(indent_text)
            if pending is not None:
                if not (indent > indent_now or (dash and indent == indent_now)):
                    raise _NotPlain  # an empty value (null)
                child: Any
                child_rows: Any
                child, child_rows = ([], []) if dash else ({}, {})
                entries[id(child)] = child_rows
                now[pending] = child
                now_rows[pending] = pending_row
                outer.append((indent_now, spaces_now, now, now_rows, now_seq))
                indent_now, spaces_now, now_seq = indent, indent_text, dash != ""
                now, now_rows, pending = child, child_rows, None
            elif indent != indent_now or (not dash) is now_seq:  # neither a key here nor an item here
                if indent_now < 0:
                    if dash:
                        raise _NotPlain  # the document is a list
                    indent_now, spaces_now = indent, indent_text
                else:
                    while indent < indent_now:
                        if not outer:
                            raise _NotPlain  # less indented than the document
                        indent_now, spaces_now, now, now_rows, now_seq = outer.pop()
                    if now_seq and not dash and indent == indent_now and outer:
                        # an indentless sequence ends at the next key of its mapping
                        indent_now, spaces_now, now, now_rows, now_seq = outer.pop()
                    if indent != indent_now or (not dash) is now_seq:
                        raise _NotPlain
            if dash:
                now_rows.append(index)
                if not key:
                    if not value:
                        raise _NotPlain  # "-" alone: an empty or nested entry
                    first = value[0]
                    if first in _STRING_START:
                        now.append(WORDS.get(value, value))
                    else:
                        now.append(resolve_plain(value) if first in NUMERIC_START else _scalar(value))
                    continue
                item: dict[str, Any] = {}
                item_rows: dict[str, int] = {}
                entries[id(item)] = item_rows
                now.append(item)
                outer.append((indent_now, spaces_now, now, now_rows, now_seq))
                indent_now = indent + len(dash)
                spaces_now, now, now_rows, now_seq = " " * indent_now, item, item_rows, False
        if key in now or key in WORDS:
            raise _NotPlain  # a duplicate key, or a key that is not a string
        if value:
            # a plain string (or a word: true, null, ...), a plain number, or anything else
            first = value[0]
            if first in _STRING_START:
                now[key] = WORDS.get(value, value)
            else:
                now[key] = resolve_plain(value) if first in NUMERIC_START else _scalar(value)
            now_rows[key] = index
        else:
            pending, pending_row = key, index
    if pending is not None or indent_now < 0:
        raise _NotPlain
    return root, entries


def _scalar(value: str) -> Any:
    """The value of a matched scalar, ``[...]`` or ``{}``."""
    first = value[0]
    if first == '"' or first == "'":
        return value[1:-1]
    if first == "[":
        return _flow(value)
    if first == "{":
        return {}
    if first in NUMERIC_START or value in WORDS:
        return resolve_plain(value)
    return value


def _flow(value: str) -> list[Any]:
    inner = value[1:-1]
    if not inner.strip(" "):
        return []
    out: list[Any] = []
    for part in inner.split(","):
        item = part.strip(" ")
        if not item:
            raise _NotPlain  # an empty entry
        first = item[0]
        if first == '"':
            if len(item) < 2 or item[-1] != '"' or '"' in item[1:-1] or "\\" in item:
                raise _NotPlain
            out.append(item[1:-1])
        elif '"' in item or not (first in _STRING_START or first in NUMERIC_START):
            raise _NotPlain  # a quote inside, or not a plain scalar's first character
        elif first in _STRING_START:
            out.append(WORDS.get(item, item))
        elif first == "-" and item[1:2] in ("", " "):
            raise _NotPlain  # "-" alone, or a block entry
        else:
            out.append(resolve_plain(item))
    return out
