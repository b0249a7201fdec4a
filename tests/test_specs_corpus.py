"""Every broken document in tests/spec_corpus/ is reported with its exact located message.

Each case directory holds files laid over the valid repository in
``spec_corpus/_base`` and an ``expected.txt`` with the errors, one per line,
as ``file:line:column: path: message``. Each case runs through the library
(``load_catalog`` on bytes in memory and ``load_tree`` on disk) and through
``flywheel validate`` (exit code 1, the same lines); nothing may raise. The
oversized file is generated here rather than committed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from controller.cli import main
from controller.specs import MAX_BYTES, find_spec_files, load_catalog, load_tree

pytestmark = pytest.mark.unit
CORPUS = Path(__file__).parent / "spec_corpus"
CASES = sorted(p.name for p in CORPUS.iterdir() if p.is_dir() and p.name != "_base")


def make_repo(case: str, tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(CORPUS / "_base", repo)
    shutil.copytree(CORPUS / case, repo, dirs_exist_ok=True, ignore=shutil.ignore_patterns("expected.txt"))
    return repo


def expected_lines(case: str) -> list[str]:
    return (CORPUS / case / "expected.txt").read_text(encoding="utf-8").splitlines()


def test_corpus_is_big_enough() -> None:
    assert len(CASES) >= 45
    for case in CASES:
        assert expected_lines(case), f"{case} has no expected errors"


@pytest.mark.parametrize("case", CASES)
def test_library_reports_exact_errors(case: str, tmp_path: Path) -> None:
    repo = make_repo(case, tmp_path)
    files = {rel: (repo / rel).read_bytes() for rel in find_spec_files(repo)}
    in_memory = load_catalog(files)
    on_disk = load_tree(repo)
    assert [str(e) for e in in_memory.errors] == expected_lines(case)
    assert on_disk.errors == in_memory.errors
    for error in in_memory.errors:
        assert error.location.line >= 0 and error.location.file


@pytest.mark.parametrize("case", CASES)
def test_cli_reports_exact_errors(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = make_repo(case, tmp_path)
    monkeypatch.chdir(repo)
    result = CliRunner().invoke(main, ["validate"])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    lines = result.output.splitlines()
    expected = expected_lines(case)
    assert lines[: len(expected)] == expected
    assert lines[len(expected)].startswith(f"{len(expected)} error")


def test_oversized_file_is_refused_unread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = make_repo("model-bad-name", tmp_path)  # any case: the model is replaced below
    filler = b"# " + b"x" * 78 + b"\n"
    (repo / "specs/demo/model.yaml").write_bytes(filler * (MAX_BYTES // len(filler) + 1))
    expected = f"specs/demo/model.yaml: file is too large: the limit is {MAX_BYTES} bytes"
    files = {rel: (repo / rel).read_bytes() for rel in find_spec_files(repo)}
    assert [str(e) for e in load_catalog(files).errors] == [expected]
    assert [str(e) for e in load_tree(repo).errors] == [expected]
    monkeypatch.chdir(repo)
    result = CliRunner().invoke(main, ["validate"])
    assert result.exit_code == 1
    assert result.output.splitlines()[0] == expected
