"""``flywheel validate`` and ``flywheel schema`` on the command line.

Pins down: the example repository validates clean with a one-line summary
(exit 0); spec errors exit 1 in text, json and github formats; a file given
alone is checked with its repository as context but only its own errors are
reported; a spec reached through a symbolic link out of the repository is
named and never read (links inside it are followed; linked spec directories
are not read, as in git); usage errors (bad option, nonexistent path,
nothing to print) exit 2; ``schema --out`` writes the three schemas editors use.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from controller.cli import main
from controller.specs import schemas

pytestmark = pytest.mark.unit
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


SECRET = "root:x:0:0:the outside file's content\n"
LINK_OUT = "is a symbolic link that leads out of the repository; it is not followed"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A file outside the repository whose content must never be shown."""
    secret = tmp_path / "secret.yaml"
    secret.write_text(SECRET)
    return secret


def test_a_spec_linked_out_of_the_repository_is_named_and_not_read(repo: Path, outside: Path) -> None:
    (repo / "specs/leak").mkdir()
    (repo / "specs/leak/model.yaml").symlink_to(outside)  # absolute
    (repo / "environments/leak.yaml").symlink_to("../../secret.yaml")  # relative, climbing out
    for args in (["validate"], ["validate", "--format", "json"], ["validate", "--format", "github"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1, result.output
        assert "the outside file" not in result.output and "root:x" not in result.output
    result = CliRunner().invoke(main, ["validate"])
    assert result.output.splitlines() == [
        f"environments/leak.yaml: {LINK_OUT}",
        f"specs/leak/model.yaml: {LINK_OUT}",
        "2 errors in 2 files",
    ]
    # named alone, the link is judged where it is, not where it leads
    result = CliRunner().invoke(main, ["validate", "specs/leak/model.yaml"])
    assert result.exit_code == 1
    assert result.output.splitlines() == [f"specs/leak/model.yaml: {LINK_OUT}", "1 error in 1 file"]
    (repo / "notes.yaml").symlink_to(outside)
    result = CliRunner().invoke(main, ["validate", "notes.yaml"])
    assert result.exit_code == 1 and result.output.splitlines()[0] == f"notes.yaml: {LINK_OUT}"


def test_links_inside_the_repository_are_followed(repo: Path, outside: Path) -> None:
    (repo / "shared").mkdir()
    (repo / "environments/production.yaml").rename(repo / "shared/production.yaml")
    (repo / "environments/production.yaml").symlink_to("../shared/production.yaml")
    result = CliRunner().invoke(main, ["validate"])
    assert result.exit_code == 0, result.output
    assert result.output == "ok: 1 model, 1 policy, 2 environments\n"
    # a link inside the repository that itself leads out is named where it leaves
    (repo / "shared/production.yaml").unlink()
    (repo / "shared/production.yaml").symlink_to(outside)
    result = CliRunner().invoke(main, ["validate", "environments/production.yaml"])
    assert result.output.splitlines()[0] == f"environments/production.yaml: {LINK_OUT}"
    (repo / "shared/production.yaml").unlink()
    result = CliRunner().invoke(main, ["validate", "."])
    assert result.output.splitlines()[0] == (
        "environments/production.yaml: is a symbolic link that leads to no file in the repository"
    )


def test_a_linked_spec_directory_is_not_read(repo: Path, outside: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "model.yaml").write_text(SECRET)
    (repo / "specs/leak").symlink_to(elsewhere, target_is_directory=True)
    result = CliRunner().invoke(main, ["validate"])
    assert result.exit_code == 0, result.output
    assert result.output == "ok: 1 model, 1 policy, 2 environments\n"
    result = CliRunner().invoke(main, ["validate", "specs/leak/model.yaml"])
    assert result.exit_code == 1
    assert result.output.splitlines()[0] == f"specs/leak/model.yaml: specs/leak {LINK_OUT}"
    assert "the outside file" not in result.output


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
