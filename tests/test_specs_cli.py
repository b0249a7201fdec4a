"""``flywheel validate`` and ``flywheel schema`` on the command line.

Pins down: the example repository validates clean with a one-line summary
(exit 0); spec errors exit 1 in text, json and github formats; a file given
alone is checked with its repository as context but only its own errors are
reported; usage errors (bad option, nonexistent path, nothing to print)
exit 2; ``schema --out`` writes the three schemas editors use.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from controller.cli import main
from controller.specs import schemas

REPO = Path(__file__).resolve().parent.parent
CORPUS = Path(__file__).parent / "spec_corpus"


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the corpus base repository, as the working directory."""
    root = tmp_path / "repo"
    shutil.copytree(CORPUS / "_base", root)
    monkeypatch.chdir(root)
    return root


def break_model(root: Path) -> None:
    model = root / "specs/demo/model.yaml"
    model.write_text(model.read_text().replace("min: 0.8", "min: high").replace("timeout: 10m", "timeout: x"))


def test_example_repository_is_clean(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    result = CliRunner().invoke(main, ["validate"])
    assert result.exit_code == 0, result.output
    assert result.output == "ok: 2 models, 1 policy, 2 environments\n"
    result = CliRunner().invoke(main, ["validate", str(REPO)])
    assert result.exit_code == 0 and result.output.startswith("ok: 2 models")


def test_text_format_lists_every_error(repo: Path) -> None:
    break_model(repo)
    result = CliRunner().invoke(main, ["validate", "."])
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        "specs/demo/model.yaml:13:18: spec.pipeline.steps[0].timeout: "
        "expected a duration like 30s, 10m or 1h30m, got 'x'",
        "specs/demo/model.yaml:25:14: spec.validation.gates[0].min: expected a number, got 'high'",
        "2 errors in 1 file",
    ]


def test_json_format(repo: Path) -> None:
    break_model(repo)
    result = CliRunner().invoke(main, ["validate", "--format", "json"])
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert report["ok"] is False
    assert (report["models"], report["policies"], report["environments"]) == (0, 1, 2)
    assert report["errors"][1] == {
        "file": "specs/demo/model.yaml",
        "line": 25,
        "column": 14,
        "path": "spec.validation.gates[0].min",
        "message": "expected a number, got 'high'",
        "kind": "Model",
        "name": "demo",
    }


def test_json_format_when_clean(repo: Path) -> None:
    result = CliRunner().invoke(main, ["validate", "--format", "json"])
    assert result.exit_code == 0
    assert json.loads(result.output) == {
        "ok": True,
        "models": 1,
        "policies": 1,
        "environments": 2,
        "errors": [],
    }


def test_github_format(repo: Path) -> None:
    break_model(repo)
    (repo / "environments/staging.yaml").write_text("a: 1\na: 2\n")
    result = CliRunner().invoke(main, ["validate", "--format", "github"])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0] == "::error file=environments/staging.yaml,line=2,col=1,title=flywheel::duplicate key 'a'"
    assert lines[2] == (
        "::error file=specs/demo/model.yaml,line=25,col=14,title=flywheel::"
        "spec.validation.gates[0].min: expected a number, got 'high'"
    )


def test_github_format_escapes_workflow_command_characters(repo: Path) -> None:
    model = repo / "specs/demo/model.yaml"
    model.write_text(model.read_text().replace("min: 0.8", "min: '100%'"))
    result = CliRunner().invoke(main, ["validate", "--format", "github"])
    assert "got '100%25'" in result.output


def test_single_file_uses_its_repository_as_context(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    break_model(repo)
    # the environment alone is valid, although the model next to it is not
    result = CliRunner().invoke(main, ["validate", "environments/staging.yaml"])
    assert result.exit_code == 0, result.output
    assert result.output == "ok: 0 models, 0 policies, 1 environment\n"
    # run from elsewhere: the model is reported with a path relative to where the command runs
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = CliRunner().invoke(main, ["validate", str(repo / "specs/demo/model.yaml")])
    assert result.exit_code == 1
    assert "../repo/specs/demo/model.yaml:25:14: spec.validation.gates[0].min" in result.output


def test_single_file_needs_its_repository_for_references(repo: Path) -> None:
    (repo / "environments/production.yaml").unlink()
    result = CliRunner().invoke(main, ["validate", "specs/demo/model.yaml"])
    assert result.exit_code == 1
    assert "unknown environment 'production'" in result.output
    assert CliRunner().invoke(main, ["validate", "policies/default.yaml"]).exit_code == 0


def test_paths_are_shown_relative_to_the_working_directory(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    break_model(repo)
    monkeypatch.chdir(repo.parent)
    result = CliRunner().invoke(main, ["validate", "repo"])
    assert result.exit_code == 1
    assert result.output.startswith("repo/specs/demo/model.yaml:13:18: ")


@pytest.mark.parametrize(
    "args",
    [
        ["validate", "does-not-exist"],
        ["validate", "--format", "xml"],
        ["validate", "--no-such-option"],
        ["schema"],
        ["schema", "workflow"],
    ],
)
def test_usage_errors_exit_2(repo: Path, args: list[str]) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output


def test_schema_out_writes_the_three_schemas(tmp_path: Path) -> None:
    out = tmp_path / "schemas"
    result = CliRunner().invoke(main, ["schema", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "environment.schema.json",
        "model.schema.json",
        "policy.schema.json",
    ]
    assert json.loads((out / "model.schema.json").read_text()) == schemas()["Model"]


def test_schema_prints_one_kind() -> None:
    result = CliRunner().invoke(main, ["schema", "policy"])
    assert result.exit_code == 0
    assert json.loads(result.output)["$id"].endswith("/policy.schema.json")
