"""The documentation stands on its own and keeps up with the code.

Pins down: every ``FLYWHEEL_*`` environment variable the code reads or sets
(settings, the step contract, the custom server contract) is documented in
README.md, and README documents none that the code does not know (as
datasette's tests do for its plugin hooks); README, ARCHITECTURE.md and the
docs shipped in the package link only to files inside the repository, never
to anything beside it; every file ARCHITECTURE.md names exists; the README
opens with the two commands a new user runs.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TEMPLATE = ROOT / "controller" / "scaffold" / "template"
ARCHITECTURE = ROOT / "ARCHITECTURE.md"
SHIPPED_DOCS = [README, ARCHITECTURE, ROOT / "bench" / "README.md", TEMPLATE / "README.md"]
_VARIABLE = re.compile(r"FLYWHEEL_[A-Z0-9_]*[A-Z0-9]")
_PLACEHOLDER = re.compile(r"FLYWHEEL_[A-Z0-9_]*<[A-Z]+>")  # FLYWHEEL_DATA_<NAME>: one per data input
_FAMILY = re.compile(r"FLYWHEEL_[A-Z0-9_]*_\*")  # FLYWHEEL_GITHUB_*: a family, documented one by one too


def _variables_in_code() -> set[str]:
    names: set[str] = set()
    for package in ("controller", "webhooks"):
        for path in (ROOT / package).rglob("*.py"):
            if "scaffold/template" in path.as_posix():
                continue  # the example model's own code, not Flywheel's
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    if _VARIABLE.fullmatch(node.value):
                        names.add(node.value)
                elif isinstance(node, ast.JoinedStr):  # f"FLYWHEEL_DATA_{name}" and the like
                    head = node.values[0] if node.values else None
                    text = head.value if isinstance(head, ast.Constant) else None
                    if isinstance(text, str) and text.endswith("_") and _VARIABLE.fullmatch(text.rstrip("_")):
                        names.add(text + "*")
    return names


def _documented(text: str) -> tuple[set[str], set[str]]:
    """Names documented in ``text``, and prefixes documented as ``FLYWHEEL_DATA_<NAME>``.

    A family such as ``FLYWHEEL_GITHUB_*`` names no variable of its own.
    """
    prefixes = {m.group(0).split("<")[0] for m in _PLACEHOLDER.finditer(text)}
    text = _FAMILY.sub("", _PLACEHOLDER.sub("", text))
    names = {m.group(0) for m in _VARIABLE.finditer(text)}
    return names, prefixes


def test_every_environment_variable_the_code_knows_is_documented_in_the_readme() -> None:
    documented, prefixes = _documented(README.read_text())
    missing = []
    for name in sorted(_variables_in_code()):
        if name.endswith("*"):
            if name[:-1] not in prefixes:
                missing.append(name[:-1] + "<NAME>")
        elif name not in documented and not any(name.startswith(p) for p in prefixes):
            missing.append(name)
    assert missing == [], f"document these in README.md: {missing}"


def test_the_readme_documents_no_variable_the_code_does_not_know() -> None:
    known = _variables_in_code()
    documented, prefixes = _documented(README.read_text())
    stale = sorted(name for name in documented if name not in known)
    unknown_prefixes = sorted(p for p in prefixes if p + "*" not in known)
    assert stale == [] and unknown_prefixes == []


def test_docs_link_only_to_files_inside_the_repository() -> None:
    outside = []
    for doc in SHIPPED_DOCS:
        text = doc.read_text()
        if "../shared" in text or "DESIGN.md" in text:
            outside.append(f"{doc.relative_to(ROOT)}: mentions a file outside the repository")
        for target in re.findall(r"\]\(([^)#\s]+)", text):
            if "://" in target or target.startswith("mailto:"):
                continue
            resolved = (doc.parent / target).resolve()
            if not resolved.is_relative_to(ROOT) or not resolved.exists():
                outside.append(f"{doc.relative_to(ROOT)}: link to {target}")
    assert outside == []


def test_every_path_the_architecture_names_exists() -> None:
    path = r"(?:controller|webhooks|tests|\.ci)/[\w/.]+|pyproject\.toml"
    named = re.findall(rf"`({path})`", ARCHITECTURE.read_text())
    assert named, "ARCHITECTURE.md names no file"
    assert [path for path in named if not (ROOT / path).exists()] == []


def test_the_readme_starts_with_the_install_and_run_and_the_test_commands() -> None:
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.S)
    assert "pip install -e ." in blocks[0] and "flywheel" in blocks[0]
    assert "pip install -e '.[test]'" in blocks[1] and "pytest" in blocks[1]
