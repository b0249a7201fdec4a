"""The composition root: which senders and inbox handlers a controller gets from its settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.app import SLACK_ACTION_KIND, ControllerSettings, build_controller
from controller.backends.serving.fake import FakeServing
from controller.engine.commands import ROLLBACK_EVENT
from controller.scaffold import scaffold


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    scaffold(tmp_path / "ml")
    return tmp_path / "ml"


def test_slack_sender_only_with_a_bot_token(repo: Path, tmp_path: Path) -> None:
    plain = build_controller(
        ControllerSettings(repo=str(repo), state_dir=tmp_path / "a"), serving=FakeServing()
    )
    with_slack = build_controller(
        ControllerSettings(repo=str(repo), state_dir=tmp_path / "b", slack_token="xoxb-test"),
        serving=FakeServing(),
    )
    try:
        assert set(plain.senders) == {"console"}
        assert set(with_slack.senders) == {"console", "slack"}
    finally:
        plain.close()
        with_slack.close()


def test_settings_read_the_slack_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_SLACK_BOT_TOKEN", "xoxb-from-env")
    assert ControllerSettings.from_env(repo=".").slack_token == "xoxb-from-env"
    monkeypatch.delenv("FLYWHEEL_SLACK_BOT_TOKEN")
    assert ControllerSettings.from_env(repo=".").slack_token is None


def test_inbox_events_are_handled_by_kind_and_unknown_kinds_recorded(repo: Path, tmp_path: Path) -> None:
    controller = build_controller(
        ControllerSettings(repo=str(repo), state_dir=tmp_path / "s"), serving=FakeServing()
    )
    store = controller.store
    try:
        store.put_event(source="slack", delivery_id="d1", kind=SLACK_ACTION_KIND, payload={})
        store.put_event(source="cli", delivery_id="d2", kind=ROLLBACK_EVENT, payload={"model": "nope"})
        store.put_event(source="mystery", delivery_id="d3", kind="mystery", payload={})
        controller.handle_requests()
        events = {store.get_event(i).kind: store.get_event(i) for i in (1, 2, 3)}
        assert events[SLACK_ACTION_KIND].completed_at is not None and events[SLACK_ACTION_KIND].error is None
        assert "nope is not on main" in (events[ROLLBACK_EVENT].error or "")
        assert "no handler" in (events["mystery"].error or "")
        assert store.claim_events(limit=10, worker="again") == []  # nothing left to retry blindly
    finally:
        controller.close()


def test_github_settings_make_github_the_forge_with_its_sender(repo: Path, tmp_path: Path) -> None:
    from controller.backends.forge.github import GitHubForge, GitHubSettings

    github = GitHubSettings(repository="octo/ml", token="ghp_test")
    controller = build_controller(
        ControllerSettings(repo=str(repo), state_dir=tmp_path / "g", github=github), serving=FakeServing()
    )
    try:
        assert isinstance(controller.forge, GitHubForge)
        assert "github" in controller.senders
        assert controller.proposals.admit is not None  # outside contributors wait for ok-to-test
        assert [type(p).__name__ for p in controller.pollers] == ["GitHubPoller"]  # missed deliveries
    finally:
        controller.close()
    no_polling = build_controller(
        ControllerSettings(
            repo=str(repo),
            state_dir=tmp_path / "h",
            github=GitHubSettings("octo/ml", token="t", poll_seconds=0),
        ),
        serving=FakeServing(),
    )
    try:
        assert no_polling.pollers == []
    finally:
        no_polling.close()
