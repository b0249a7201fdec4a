"""The fast reader for plain spec YAML agrees with the full loader wherever it answers.

Pins down: whatever :func:`controller.specs.fastyaml.load_plain` accepts, the
full loader accepts too, with equal data (same types, not just ``==``) and the
same line and column for every path, key or value, present or missing; it
accepts the example repository and the corpus's base files (so the fast path
is really taken); it refuses (returns ``None``) anchors, aliases, tags,
duplicate and non-string keys, and every other construct outside its subset,
so the full loader reports them; and ``parse_document`` gives the same
:class:`ParsedFile` — errors, locations, references, typed records — with the
fast path as with the full loader alone, on every corpus case, on random
documents built from tricky lines (Hypothesis, fixed seed) and on thousands
of mutated real specs.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import controller.specs.parse as parse_module
from controller.specs import check_catalog, find_spec_files, parse_document
from controller.specs.fastyaml import load_plain
from controller.specs.loader import YamlError, decode_spec, load_text

REPO = Path(__file__).resolve().parent.parent
CORPUS = Path(__file__).parent / "spec_corpus"


# ----------------------------------------------------------------- helpers


def same(a: Any, b: Any) -> bool:
    """Equal data with equal types all the way down (``1``, ``1.0`` and ``True`` differ; NaN equals NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


def paths(data: Any, prefix: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    """Every path in ``data``, and for each a child that does not exist."""
    yield prefix
    yield (*prefix, "no-such-key")
    yield (*prefix, 99)
    if isinstance(data, dict):
        for key, value in data.items():
            yield from paths(value, (*prefix, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from paths(value, (*prefix, index))
        if data:
            yield (*prefix, -1)


def assert_agrees(text: str) -> bool:
    """If the fast reader accepts ``text``, the full loader reads the same data and locations."""
    fast = load_plain(text)
    if fast is None:
        return False
    slow = load_text(text)  # raises if the fast reader accepted what the full loader refuses
    assert same(fast.data, slow.data), (fast.data, slow.data)
    for path in paths(slow.data):
        for key in (False, True):
            assert fast.locate(path, key=key) == slow.locate(path, key=key), (path, key)
    return True


def spec_texts() -> dict[str, str]:
    """Every YAML file of the example repository and of the corpus that decodes as text."""
    files = [REPO / rel for rel in find_spec_files(REPO)] + sorted(CORPUS.glob("**/*.yaml"))
    texts: dict[str, str] = {}
    for file in files:
        try:
            texts[str(file.relative_to(REPO))] = decode_spec(file.read_bytes())
        except YamlError:
            continue
    return texts


def parse_both(path: str, data: bytes, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    fast = parse_document(path, data)
    with monkeypatch.context() as patch:
        patch.setattr(parse_module, "load_plain", lambda text: None)
        slow = parse_document(path, data)
    return fast, slow


# ------------------------------------------------------ real documents


@pytest.mark.unit
def test_every_example_and_corpus_file_reads_alike() -> None:
    accepted = [name for name, text in spec_texts().items() if assert_agrees(text)]
    assert len(accepted) >= 60


@pytest.mark.unit
@pytest.mark.parametrize(
    "rel",
    [
        "specs/iris/model.yaml",
        "policies/default.yaml",
        "environments/staging.yaml",
        "environments/production.yaml",
        "tests/spec_corpus/_base/specs/demo/model.yaml",
        "tests/spec_corpus/_base/policies/default.yaml",
    ],
)
def test_plain_specs_take_the_fast_path(rel: str) -> None:
    assert load_plain(decode_spec((REPO / rel).read_bytes())) is not None


@pytest.mark.unit
def test_a_valid_document_is_the_same_either_way(monkeypatch: pytest.MonkeyPatch) -> None:
    for rel in find_spec_files(REPO):
        fast, slow = parse_both(rel, (REPO / rel).read_bytes(), monkeypatch)
        assert fast.ok
        assert fast == slow


CASES = sorted(p.name for p in CORPUS.iterdir() if p.is_dir() and p.name != "_base")


@pytest.mark.unit
@pytest.mark.parametrize("case", CASES)
def test_corpus_case_is_the_same_either_way(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    base, overlay = CORPUS / "_base", CORPUS / case
    files = {rel: (base / rel).read_bytes() for rel in find_spec_files(base)}
    files.update({rel: (overlay / rel).read_bytes() for rel in find_spec_files(overlay)})
    pairs = [parse_both(rel, data, monkeypatch) for rel, data in sorted(files.items())]
    for fast, slow in pairs:
        assert fast == slow
    assert check_catalog(f for f, _ in pairs) == check_catalog(s for _, s in pairs)


# ------------------------------------------------- what it leaves alone

REFUSED = {
    "anchor": "a: &x 1\nb: 2\n",
    "alias": "a: 1\nb: *x\n",
    "anchor on a block": "a: &x\n  b: 1\n",
    "tag": "a: !!str 1\n",
    "custom tag": "a: !thing x\n",
    "python tag": "a: !!python/object:os.system x\n",
    "tag on a block": "a: !!map\n  b: 1\n",
    "tag in a list": "a: [!!int 1]\n",
    "duplicate key": "a: 1\nb: 2\na: 3\n",
    "duplicate nested key": "a:\n  b: 1\n  b: 2\n",
    "boolean key": "yes: 1\n",
    "null key": "null: 1\n",
    "number key": "1: a\n",
    "quoted key": '"a": 1\n',
    "merge key": "<<: x\n",
    "complex key": "? a\n: 1\n",
    "empty value": "a:\nb: 1\n",
    "empty value at the end": "a: 1\nb:\n",
    "empty item": "a:\n  -\n  - 1\n",
    "literal block": "a: |\n  text\n",
    "folded block": "a: >-\n  text\n",
    "multi-line plain": "a: one\n  two\n",
    "multi-line plain looking like a list": "a: one\n  - two\n",
    "multi-line quoted": 'a: "one\n  two"\n',
    "escape": 'a: "x\\ty"\n',
    "doubled single quote": "a: 'it''s'\n",
    "flow mapping": "a: {b: 1}\n",
    "nested flow": "a: [[1]]\n",
    "flow pair": "a: [b: 1]\n",
    "empty flow item": "a: [1, , 2]\n",
    "trailing flow comma": "a: [1, 2,]\n",
    "quote in a flow item": 'a: [x"y]\n',
    "escape in a flow item": 'a: ["x\\y"]\n',
    "mapping value in a value": "a: b: c\n",
    "no space after the colon": "a:b\n",
    "comment glued to a quote": 'a: "b"#c\n',
    "document start": "---\na: 1\n",
    "document end": "a: 1\n...\n",
    "directive": "%YAML 1.1\n---\na: 1\n",
    "two documents": "a: 1\n---\nb: 2\n",
    "top-level list": "- a\n- b\n",
    "top-level scalar": "hello\n",
    "only comments": "# nothing\n",
    "tab": "a:\n\tb: 1\n",
    "carriage return": "a: 1\r\nb: 2\r\n",
    "non-ASCII": "a: café\n",
    "next line": "a: x\x85y\n",
    "control character": "a: x\x07y\n",
    "reserved indicator": "a: @x\n",
    "backtick": "a: `x`\n",
    "bad indentation": "a:\n  b: 1\n c: 2\n",
    "over-indented key": "a: 1\n  b: 2\n",
    "key after a list": "a:\n  - 1\n  b: 2\n",
    "list after keys": "a:\n  b: 1\n  - 2\n",
    "dedent below the document": "  a: 1\nb: 2\n",
    "nested dash": "a:\n  - - 1\n",
    "block entry as value": "a: - b\n",
    "question mark in a flow": "a: [?x]\n",
}


@pytest.mark.unit
@pytest.mark.parametrize("name", sorted(REFUSED))
def test_outside_the_subset_is_left_to_the_full_loader(name: str) -> None:
    assert load_plain(REFUSED[name]) is None


@pytest.mark.unit
def test_refused_documents_are_reported_by_the_full_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, text in REFUSED.items():
        data = text.encode()
        fast, slow = parse_both("specs/demo/model.yaml", data, monkeypatch)
        assert fast == slow, name
        assert not fast.ok, name


ACCEPTED = {
    "indentless list": ("a:\n- 1\n- x\nb: 2\n", {"a": [1, "x"], "b": 2}),
    "list of mappings": (
        "a:\n  - b: 1\n    c: [x, 2]\n  - d: {}\n",
        {"a": [{"b": 1, "c": ["x", 2]}, {"d": {}}]},
    ),
    "comments and blank lines": (
        "# head\na: 1 # one\n\n  # deep\nb: 'q # not' # c\n",
        {"a": 1, "b": "q # not"},
    ),
    "colon and hash inside plain": ("a: http://x/y#z\n", {"a": "http://x/y#z"}),
    "resolution": ('a: [yes, No, ~, 0x1F, 1_000, .5, -.inf, 2024-01-31, "1"]\nb: 0o17\n', None),
    "indented document": ("  a: 1\n  b:\n    c: 2\n", {"a": 1, "b": {"c": 2}}),
    "wide dash": ("a:\n  -   b: 1\n      c: 2\n", {"a": [{"b": 1, "c": 2}]}),
}


@pytest.mark.unit
@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_common_shapes_are_read_fast(name: str) -> None:
    text, expected = ACCEPTED[name]
    assert assert_agrees(text)
    fast = load_plain(text)
    assert fast is not None
    if expected is not None:
        assert same(fast.data, expected)


# ------------------------------------------------ random and mutated text

KEYS = ["a", "b", "name", "x.y", "a-b", "_k", "app.io/v", "y", "C"] * 5
KEYS += ["yes", "on", "Null", "1", "k k", "é"]
PLAIN = ["plain", "two words", "a:b", "http://x/y#z", "-x", "-1", "1", "1.5", "1e3", "0x1F", "1_0", ".5"]
PLAIN += ["~", "null", "yes", "No", "2024-01-31", "12:30", "<<", "=", "+", "'s'", "''", '"d"', '""', "[]"]
PLAIN += ["[a, b]", "[1, 2.5, yes]", '["*", x]', "{}", "{ }", "[ ]", ".inf", "-.INF", ".nan", "0o17", "a\\b"]
TRICKY = ["a: b", "a #b", "x:", ":x", "- x", "--", "?x", "? x", "'it''s'", '"e\\n"', '"a"b', "'a' #c", "[a,]"]
TRICKY += ["[, a]", "[a b]", "[[a]]", "[a: b]", "{a: 1}", "&x 1", "*x", "!!str 1", "!x y", "|", ">-", "@x"]
TRICKY += ["`x`", "%x", "a\tb", "x\x85y", "ü", ""]
scalars = st.sampled_from(PLAIN * 8 + TRICKY)  # mostly plain: the agreement on accepted text is the point
trees = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, min_size=1, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS), children, min_size=1, max_size=4)
    ),
    max_leaves=12,
)


def render(tree: dict[str, Any], rng: random.Random) -> str:
    """Block YAML for ``tree`` in a randomly chosen style (indent, dashes, comments, blank lines)."""
    step = rng.choice([1, 2, 2, 4])
    out: list[str] = []

    def tail() -> str:
        return rng.choice(["", "", "", "", "", "", " # note", "  ", "#glued"])

    def mapping(node: dict[str, Any], indent: int, first: str | None = None) -> None:
        for n, (key, value) in enumerate(node.items()):
            lead = first if n == 0 and first is not None else " " * indent
            if rng.random() < 0.05:
                out.append(" " * rng.randint(0, 6) + rng.choice(["", "# comment"]))
            if isinstance(value, dict):
                out.append(f"{lead}{key}:{tail()}")
                mapping(value, indent + step)
            elif isinstance(value, list):
                if all(isinstance(v, str) for v in value) and rng.random() < 0.3:
                    out.append(f"{lead}{key}: [{', '.join(value)}]{tail()}")
                else:
                    out.append(f"{lead}{key}:{tail()}")
                    sequence(value, indent if rng.random() < 0.3 else indent + step)
            else:
                out.append(f"{lead}{key}: {value}{tail()}")

    def sequence(node: list[Any], indent: int) -> None:
        for item in node:
            dash = rng.choice(["- ", "- ", "-  "])
            lead = " " * indent + dash
            if isinstance(item, dict):
                mapping(item, indent + len(dash), first=lead)
            elif isinstance(item, list):
                out.append(lead.rstrip())
                sequence(item, indent + step)
            else:
                out.append(f"{lead}{item}{tail()}")

    mapping(tree, rng.choice([0, 0, 0, 2]))
    return "\n".join(out) + rng.choice(["\n", "", "\n\n"])


@pytest.mark.integration  # a long fuzzer (800 documents): kept out of the fast unit tier
@settings(max_examples=800, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(st.sampled_from(KEYS), trees, min_size=1, max_size=5),
    st.randoms(use_true_random=False),
)
def test_random_documents_read_alike(tree: dict[str, Any], rng: random.Random) -> None:
    text = render(tree, rng)
    try:
        assert_agrees(text)
    except YamlError as exc:  # would mean the fast reader accepted what the full loader refuses
        raise AssertionError(f"accepted what the full loader refuses: {exc.message}\n{text}") from None


NOISE = [
    " ",
    "  ",
    ":",
    "-",
    "- ",
    "#",
    " #",
    "[",
    "]",
    "{",
    "}",
    ",",
    "'",
    '"',
    "&",
    "*",
    "!",
    "|",
    ">",
    "?",
]
NOISE += ["\n", "\t"]


def mutations(text: str, rng: random.Random, count: int) -> Iterator[str]:
    for _ in range(count):
        chars = list(text)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(chars))
            action = rng.random()
            if action < 0.4:
                chars[at] = rng.choice(NOISE)
            elif action < 0.7:
                chars.insert(at, rng.choice(NOISE))
            else:
                del chars[at : at + rng.randint(1, 4)]
        yield "".join(chars)


@pytest.mark.unit
def test_mutated_specs_read_alike() -> None:
    rng = random.Random(20261121)
    accepted = 0
    for rel in ("specs/iris/model.yaml", "policies/default.yaml", "environments/production.yaml"):
        text = (REPO / rel).read_text()
        for mutated in mutations(text, rng, 1000):
            try:
                accepted += assert_agrees(mutated)
            except YamlError as exc:
                message = f"accepted what the full loader refuses: {exc.message}"
                raise AssertionError(f"{message}\n{mutated}") from None
    assert accepted > 300  # many mutations stay plain YAML; those must agree, not just be refused


@pytest.mark.unit
def test_mutated_specs_parse_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(7)
    text = (REPO / "specs/iris/model.yaml").read_text()
    for mutated in mutations(text, rng, 300):
        fast, slow = parse_both("specs/iris/model.yaml", mutated.encode(), monkeypatch)
        assert fast == slow, mutated
