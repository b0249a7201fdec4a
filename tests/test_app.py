"""The composition root: which backends, senders and inbox handlers a controller gets from its settings.

Pins down: Slack's sender only with a bot token; GitHub settings make GitHub
the forge, with its sender, trust gate and poller; inbox events are handled by
kind; the built-in metrics source reads the router of the local serving
backend an environment names, and says why for a backend without one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.app import SLACK_ACTION_KIND, ServingByName, build_controller
from controller.backends.serving import ServingError
from controller.backends.serving.fake import FakeServing
from controller.backends.serving.local import LocalServing
from controller.clock import SYSTEM_CLOCK
from controller.engine.commands import ROLLBACK_EVENT
from controller.scaffold import scaffold
from controller.settings import ControllerSettings, GitHubSettings, Settings, SlackSettings
from controller.specs.types import Environment


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    scaffold(tmp_path / "ml")
    return tmp_path / "ml"


def test_slack_sender_only_with_a_bot_token(repo: Path, tmp_path: Path) -> None:
    plain = build_controller(
        Settings(controller=ControllerSettings(repo=str(repo), state_dir=tmp_path / "a")),
        serving=FakeServing(),
    )
    with_slack = build_controller(
        Settings(
            controller=ControllerSettings(repo=str(repo), state_dir=tmp_path / "b"),
            slack=SlackSettings(token="xoxb-test"),
        ),
        serving=FakeServing(),
    )
    try:
        assert set(plain.senders) == {"console"}
        assert set(with_slack.senders) == {"console", "slack"}
    finally:
        plain.close()
        with_slack.close()


def test_inbox_events_are_handled_by_kind_and_unknown_kinds_recorded(repo: Path, tmp_path: Path) -> None:
    controller = build_controller(
        Settings(controller=ControllerSettings(repo=str(repo), state_dir=tmp_path / "s")),
        serving=FakeServing(),
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
    from controller.backends.forge.github import GitHubForge

    github = GitHubSettings(repository="octo/ml", token="ghp_test")
    controller = build_controller(
        Settings(controller=ControllerSettings(repo=str(repo), state_dir=tmp_path / "g"), github=github),
        serving=FakeServing(),
    )
    try:
        assert isinstance(controller.forge, GitHubForge)
        assert "github" in controller.senders
        assert controller.proposals.admit is not None  # outside contributors wait for ok-to-test
        assert [type(p).__name__ for p in controller.pollers] == ["GitHubPoller"]  # missed deliveries
    finally:
        controller.close()
    no_polling = build_controller(
        Settings(
            controller=ControllerSettings(repo=str(repo), state_dir=tmp_path / "h"),
            github=GitHubSettings("octo/ml", token="t", poll_seconds=0),
        ),
        serving=FakeServing(),
    )
    try:
        assert no_polling.pollers == []
    finally:
        no_polling.close()


def test_the_builtin_metrics_source_reads_the_router_of_the_local_serving_backend(tmp_path: Path) -> None:
    staging = Environment(name="staging", spec_path="environments/staging.yaml")
    local = LocalServing(tmp_path / "serving", clock=SYSTEM_CLOCK)
    try:
        url = ServingByName({"local": local}).router_metrics_url(staging)
        assert url == local.metrics_url(environment=staging) and url.endswith("/metrics")
    finally:
        local.shutdown()
    with pytest.raises(ServingError, match="'local', which has no router for the built-in metrics source"):
        ServingByName({"local": FakeServing()}).router_metrics_url(staging)
