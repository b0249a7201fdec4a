"""User mistakes end in one line (``Error: ...``) and a non-zero exit, never a traceback.

Pins down: ``flywheel run`` on a missing repository, a missing release
branch, a state directory that cannot be made or a state database that is
not one; malformed settings (GitHub, Slack) for ``run`` and ``serve``, each
naming its variable; read-only commands where there is no state say so and
create nothing; and ``flywheel run --once`` exits 1 whenever a run of its
pass did not pass: a failed gate, a step error, a runner that does not exist,
a cache hit whose gates fail.
"""

from __future__ import annotations

from pathlib import Path

import pygit2
import pytest
from click.testing import CliRunner, Result

from controller.app import build_controller, run_controller
from controller.backends.pipelines.fake import FakeRunner, ScriptedStep
from controller.backends.serving.fake import FakeServing
from controller.backends.store import open_store
from controller.cli import main
from controller.clock import SYSTEM_CLOCK
from controller.scaffold import scaffold
from controller.settings import ControllerSettings, Settings

pytestmark = pytest.mark.integration
# Every variable the controller reads, cleared so the machine's own settings do not leak into a test.
_CLEAN: dict[str, str | None] = {
    name: None
    for name in (
        "FLYWHEEL_GITHUB_REPOSITORY",
        "FLYWHEEL_GITHUB_TOKEN",
        "FLYWHEEL_GITHUB_APP_ID",
        "FLYWHEEL_GITHUB_PRIVATE_KEY",
        "FLYWHEEL_GITHUB_PRIVATE_KEY_FILE",
        "FLYWHEEL_GITHUB_INSTALLATION_ID",
        "FLYWHEEL_GITHUB_POLL_SECONDS",
        "FLYWHEEL_GITHUB_API_URL",
        "FLYWHEEL_SLACK_BOT_TOKEN",
        "FLYWHEEL_SLACK_API_URL",
        "FLYWHEEL_STATE_DIR",
        "FLYWHEEL_REPO",
        "FLYWHEEL_GITHUB_WEBHOOK_SECRET",
    )
}


def _invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env={**_CLEAN, **(env or {})})


def _one_error_line(result: Result) -> str:
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    (line,) = result.output.splitlines()
    assert line.startswith("Error: ")
    return line


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    scaffold(tmp_path / "ml")
    return tmp_path / "ml"


# --------------------------------------------------------------- flywheel run


def test_run_on_a_missing_repository_says_so_and_creates_no_state(tmp_path: Path) -> None:
    state = tmp_path / "state"
    line = _one_error_line(
        _invoke("run", "--repo", str(tmp_path / "nope"), "--state-dir", str(state), "--once")
    )
    assert line == f"Error: no repository at {tmp_path / 'nope'}"
    assert not state.exists()


def test_run_without_the_release_branch_says_which_branches_there_are(repo: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    line = _one_error_line(
        _invoke("run", "--repo", str(repo), "--branch", "release", "--state-dir", str(state), "--once")
    )
    assert line == f"Error: {repo} has no branch 'release' to release from (it has: main)"
    assert not state.exists()
    empty = tmp_path / "empty"
    pygit2.init_repository(str(empty), initial_head="main")  # no commit: no branch at all
    line = _one_error_line(_invoke("run", "--repo", str(empty), "--state-dir", str(state), "--once"))
    assert "no main or master branch" in line


def test_run_with_a_state_directory_it_cannot_use(repo: Path, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    line = _one_error_line(_invoke("run", "--repo", str(repo), "--state-dir", str(tmp_path / "file" / "s")))
    assert line.startswith("Error: cannot use the state directory") and "Not a directory" in line
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "state.db").write_text("this is no database " * 100)
    line = _one_error_line(_invoke("run", "--repo", str(repo), "--state-dir", str(broken), "--once"))
    assert line == f"Error: cannot use the Flywheel state in {broken}: file is not a database"
    assert (broken / "state.db").exists()  # a state that was there is never removed
    line = _one_error_line(_invoke("models", "--state-dir", str(broken)))
    assert line == f"Error: cannot use the Flywheel state in {broken}: file is not a database"


_KEY_PATH = "/nonexistent/app.pem"
_GITHUB = {"FLYWHEEL_GITHUB_REPOSITORY": "octo/ml"}
_APP = {**_GITHUB, "FLYWHEEL_GITHUB_APP_ID": "1", "FLYWHEEL_GITHUB_INSTALLATION_ID": "2"}


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        (
            {**_GITHUB, "FLYWHEEL_GITHUB_TOKEN": "t", "FLYWHEEL_GITHUB_POLL_SECONDS": "x"},
            "FLYWHEEL_GITHUB_POLL_SECONDS is 'x'",
        ),
        (
            {"FLYWHEEL_GITHUB_REPOSITORY": "no-slash", "FLYWHEEL_GITHUB_TOKEN": "t"},
            "FLYWHEEL_GITHUB_REPOSITORY is 'no-slash'",
        ),
        (_GITHUB, "no credentials are: set FLYWHEEL_GITHUB_TOKEN"),
        (
            {**_GITHUB, "FLYWHEEL_GITHUB_PRIVATE_KEY": "k"},
            "a GitHub App needs FLYWHEEL_GITHUB_APP_ID and FLYWHEEL_GITHUB_INSTALLATION_ID as well",
        ),
        (
            {**_APP, "FLYWHEEL_GITHUB_PRIVATE_KEY_FILE": _KEY_PATH},
            f"FLYWHEEL_GITHUB_PRIVATE_KEY_FILE: cannot read {_KEY_PATH}: No such file or directory",
        ),
        (
            {**_APP, "FLYWHEEL_GITHUB_PRIVATE_KEY": "not a key"},
            "FLYWHEEL_GITHUB_PRIVATE_KEY (or _FILE) is not a PEM private key",
        ),
        (
            {**_APP, "FLYWHEEL_GITHUB_PRIVATE_KEY": "k", "FLYWHEEL_GITHUB_INSTALLATION_ID": "x"},
            "FLYWHEEL_GITHUB_INSTALLATION_ID is 'x'",
        ),
        ({"FLYWHEEL_SLACK_BOT_TOKEN": "xoxb-1 2"}, "FLYWHEEL_SLACK_BOT_TOKEN contains whitespace"),
        ({"FLYWHEEL_SLACK_API_URL": "slack.com/api"}, "FLYWHEEL_SLACK_API_URL is 'slack.com/api'"),
    ],
)
@pytest.mark.parametrize("command", ["run", "serve"])
def test_a_malformed_setting_is_one_line_naming_the_variable(
    command: str, settings: dict[str, str], named: str, repo: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    env = {**settings, "FLYWHEEL_GITHUB_WEBHOOK_SECRET": "s"}
    line = _one_error_line(_invoke(command, "--repo", str(repo), "--state-dir", str(state), env=env))
    assert named in line
    assert not state.exists()


# ------------------------------------------------------------ where there is no state


@pytest.mark.parametrize(
    "command",
    [
        ["models"],
        ["status", "iris"],
        ["versions", "iris"],
        ["history", "iris"],
        ["audit"],
        ["review", "ls"],
        ["review", "show", "lower-c"],
        ["cache", "ls"],
        ["cache", "prune", "--older-than", "7d"],
        ["approve", "iris", "--as", "carol"],
        ["pause", "iris", "--as", "alice"],
    ],
)
def test_commands_where_there_is_no_state_say_so_and_create_nothing(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    line = _one_error_line(_invoke(*command))
    assert line == "Error: no Flywheel state in ./.flywheel; run `flywheel run` first or pass --state-dir"
    assert list(tmp_path.iterdir()) == []
    line = _one_error_line(_invoke(*command, "--state-dir", str(tmp_path / "elsewhere")))
    assert line.startswith(f"Error: no Flywheel state in {tmp_path / 'elsewhere'};")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ --once


def _once(repo: Path, state: Path, runner: FakeRunner | None) -> int:
    """``flywheel run --once`` on a controller whose pipelines run on ``runner`` (none: no runner at all)."""
    settings = Settings(controller=ControllerSettings(repo=str(repo), state_dir=state))
    controller = build_controller(settings, serving=FakeServing())
    controller.proposals.runners = {"local": runner} if runner is not None else {}
    return run_controller(settings, once=True, controller=controller)


GOOD = {"evaluate": ScriptedStep(metrics={"accuracy": 0.95, "log_loss": 0.1})}
BAD = {"evaluate": ScriptedStep(metrics={"accuracy": 0.5, "log_loss": 0.1})}


def test_once_exits_zero_only_when_every_run_passed(repo: Path, tmp_path: Path) -> None:
    assert _once(repo, tmp_path / "good", FakeRunner(GOOD)) == 0
    assert _once(repo, tmp_path / "gates", FakeRunner(BAD)) == 1
    crashed = FakeRunner({"train": ScriptedStep(status="failed", message="boom")})
    assert _once(repo, tmp_path / "crash", crashed) == 1


def test_once_exits_one_when_a_run_could_not_start(repo: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert _once(repo, state, None) == 1  # no runner for the environment's "local"
    store = open_store(state, clock=SYSTEM_CLOCK)
    try:
        (run,) = store.list_runs(model="iris")
        assert run.status == "error"
        assert "names pipeline runner 'local', which this controller does not have" in (run.error or "")
    finally:
        store.close()


def test_once_exits_one_when_a_cache_hit_fails_its_gates(repo: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert _once(repo, state, FakeRunner(GOOD)) == 0  # main trained and passed
    git = pygit2.Repository(str(repo))
    main = git.branches["main"].peel(pygit2.Commit)
    spec = repo / "specs" / "iris" / "model.yaml"
    spec.write_text(spec.read_text().replace("C: 1.0", "C: 0.5"))
    git.index.add("specs/iris/model.yaml")
    git.index.write()
    signature = pygit2.Signature("alice", "alice@example.com")
    tree = git.index.write_tree()
    git.create_commit("refs/heads/lower-c", signature, signature, "Lower C", tree, [main.id])
    assert _once(repo, state, FakeRunner(BAD)) == 1  # trained: its gates fail
    git.create_commit("refs/heads/lower-c-again", signature, signature, "Lower C", tree, [main.id])
    runner = FakeRunner(GOOD)
    assert _once(repo, state, runner) == 1  # the same content: a cache hit, judged again, gates fail
    assert runner.requests == []  # nothing was trained
