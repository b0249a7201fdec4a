"""`flywheel init` scaffolds a complete GitOps repository: files, a first git commit, and no clobbering.

The template is the top-level example (code and spec alike, less the Slack channel) and validates:
it uses no field that is refused as not supported yet.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from controller.cli import main

pytestmark = pytest.mark.integration
REPO_ROOT = Path(__file__).resolve().parents[1]
SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def test_init_writes_the_template_and_commits_it(tmp_path: Path) -> None:
    target = tmp_path / "ml-repo"
    result = CliRunner().invoke(main, ["init", str(target)])
    assert result.exit_code == 0, result.output
    for relative in (
        "specs/iris/model.yaml",
        "specs/iris/train.py",
        "specs/iris/requirements.txt",
        "policies/default.yaml",
        "environments/staging.yaml",
        "environments/production.yaml",
    ):
        assert (target / relative).is_file(), relative
    assert ".flywheel/" in (target / ".gitignore").read_text().splitlines()
    branch = subprocess.run(
        ["git", "rev-parse", "--abbrev-ref", "HEAD"], cwd=target, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert branch == "main"
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=target, capture_output=True, text=True, check=True
    ).stdout.split()
    assert "specs/iris/model.yaml" in tracked and ".gitignore" in tracked
    status = subprocess.run(
        ["git", "status", "--porcelain"], cwd=target, capture_output=True, text=True, check=True
    ).stdout
    assert status == ""


def test_init_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    result = CliRunner().invoke(main, ["init", str(tmp_path)])
    assert result.exit_code == 1
    assert "not an empty directory" in result.output
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_init_without_git_writes_files_only(tmp_path: Path) -> None:
    target = tmp_path / "plain"
    result = CliRunner().invoke(main, ["init", "--no-git", str(target)])
    assert result.exit_code == 0, result.output
    assert (target / "specs/iris/model.yaml").is_file()
    assert not (target / ".git").exists()


def test_template_model_code_matches_the_example_repository() -> None:
    """The scaffold's iris model is this repository's example; they must not drift apart."""
    template = REPO_ROOT / "controller/scaffold/template/specs/iris"
    example = REPO_ROOT / "specs/iris"
    for name in ("train.py", "evaluate.py", "common.py", "requirements.txt"):
        assert (template / name).read_bytes() == (example / name).read_bytes(), name


def test_template_spec_is_the_example_without_slack() -> None:
    """The scaffold's model.yaml is the example's, less the Slack channel (a new repository has no token)."""
    template = (REPO_ROOT / "controller/scaffold/template/specs/iris/model.yaml").read_text()
    example = (REPO_ROOT / "specs/iris/model.yaml").read_text()
    slack = '    - slack:\n        channel: "#ml-releases"\n'
    assert slack in example
    assert template == example.replace(slack, "")


def test_scaffolded_repository_validates_and_promises_no_trigger(tmp_path: Path) -> None:
    target = tmp_path / "ml-repo"
    assert CliRunner().invoke(main, ["init", "--no-git", str(target)]).exit_code == 0
    result = CliRunner().invoke(main, ["validate", str(target)])
    assert result.exit_code == 0, result.output
    assert result.output == "ok: 1 model, 1 policy, 2 environments\n"
    model = (target / "specs/iris/model.yaml").read_text()
    assert "triggers:" not in model and "schedule:" not in model and "resources:" not in model


def test_init_home_cluster_writes_cluster_environments_that_validate(tmp_path: Path) -> None:
    from controller.specs import load_catalog

    target = tmp_path / "ml-repo"
    result = CliRunner().invoke(main, ["init", "--home", "cluster", str(target)])
    assert result.exit_code == 0, result.output
    assert "Replace the placeholders" in result.output
    validated = CliRunner().invoke(main, ["validate", str(target)])
    assert validated.exit_code == 0, validated.output
    assert validated.output == "ok: 1 model, 1 policy, 2 environments\n"
    files = {
        str(path.relative_to(target)): path.read_bytes()
        for path in target.rglob("*")
        if path.is_file() and ".git" not in path.relative_to(target).parts
    }
    catalog = load_catalog({path: data for path, data in files.items() if path.endswith(".yaml")})
    assert catalog.errors == ()
    for name in ("staging", "production"):
        env = catalog.environments[name]
        assert (env.home, env.runner) == ("cluster", "argo"), name
        assert env.argo is not None and env.argo.token_file == SERVICE_ACCOUNT_TOKEN
        assert env.pipeline_namespace == "flywheel"  # deploy/'s namespace, where its Role grants
        assert env.images is not None and env.images.registry == "registry.example.com"
        assert type(env.artifacts).__name__ == "PvcArtifacts"
    assert catalog.environments["production"].production and not catalog.environments["staging"].production
    # the model and the policy are the embedded template's, unchanged
    template = REPO_ROOT / "controller/scaffold/template"
    for relative in ("specs/iris/model.yaml", "specs/iris/train.py", "policies/default.yaml"):
        assert files[relative] == (template / relative).read_bytes(), relative
    status = subprocess.run(
        ["git", "status", "--porcelain"], cwd=target, capture_output=True, text=True, check=True
    ).stdout
    assert status == ""


def test_init_defaults_to_the_embedded_environments(tmp_path: Path) -> None:
    target = tmp_path / "ml-repo"
    assert CliRunner().invoke(main, ["init", "--no-git", str(target)]).exit_code == 0
    template = REPO_ROOT / "controller/scaffold/template/environments"
    for name in ("staging.yaml", "production.yaml"):
        written = (target / "environments" / name).read_text()
        assert written == (template / name).read_text()
        assert "home: embedded" in written and "runner: local" in written


def test_init_refuses_an_unknown_home(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["init", "--home", "moon", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "'moon' is not one of 'embedded', 'cluster'" in result.output
    assert not (tmp_path / "x").exists()


def test_init_example_adds_breast_cancer_and_the_repository_validates(tmp_path: Path) -> None:
    target = tmp_path / "ml-repo"
    result = CliRunner().invoke(main, ["init", "--example", "breast-cancer", str(target)])
    assert result.exit_code == 0, result.output
    validated = CliRunner().invoke(main, ["validate", str(target)])
    assert validated.output == "ok: 2 models, 1 policy, 2 environments\n", validated.output
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=target, capture_output=True, text=True, check=True
    ).stdout.split()
    assert "specs/breast-cancer/prepare.py" in tracked and "specs/iris/model.yaml" in tracked


def test_init_refuses_an_unknown_example(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["init", "--example", "mnist", str(tmp_path / "x")])
    assert result.exit_code == 2 and "breast-cancer" in result.output
    assert not (tmp_path / "x").exists()


def test_packaged_breast_cancer_is_the_example_on_the_embedded_home() -> None:
    """Its code is this repository's example; its spec too, less Slack and its PromQL check."""
    packaged = REPO_ROOT / "controller/scaffold/examples/breast-cancer"
    example = REPO_ROOT / "specs/breast-cancer"
    assert sorted(p.name for p in packaged.iterdir() if p.name != "__pycache__") == sorted(
        p.name for p in example.iterdir() if p.name != "__pycache__"
    )
    for name in ("train.py", "evaluate.py", "prepare.py", "common.py", "requirements.txt"):
        assert (packaged / name).read_bytes() == (example / name).read_bytes(), name
    spec = (example / "model.yaml").read_text()
    promql = spec[spec.index("        - name: error-ratio\n") : spec.index("  notifications:\n")]
    assert "prometheus:" in promql
    expected = spec.replace(promql, "").replace(
        '    - slack:\n        channel: "#ml-releases"\n', "    - console: {}\n"
    )
    assert (packaged / "model.yaml").read_text() == expected
