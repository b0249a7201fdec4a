"""The GitHub forge and its outbox sender, with PyGithub against a local GitHub API (tests/fakes/github_api).

Pins down: one sticky comment per pull request and model, posted to the pull
request the review target names (the branch is looked up only when it names
none), edited in place across reports and found again by its marker after a
crash (never re-posted, never someone else's comment that copied the
marker); one check run per
commit and model, created then updated; with GitHub down, the newest report
and status appear once it is back, none duplicated (Invariant 5); rate limits
(secondary with ``Retry-After``, primary with ``X-RateLimit-Reset``) set the
next attempt, 5xx answers back off, a deleted pull request is given up;
GitHub App authentication fetches an installation token; reactions and
replies; commit statuses for token auth.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from github import Auth
from sqlalchemy import text

from controller.backends.forge import ReviewTarget
from controller.backends.forge.github import (
    GitHubForge,
    GitHubSender,
    report_marker,
)
from controller.backends.store import PullRequest
from controller.backends.store.sql import SqlStore
from controller.clock import SYSTEM_CLOCK
from controller.engine.outbox import DeliveryStats, deliver_due
from controller.engine.report import marker
from controller.settings import GitHubSettings
from tests.fakes.github_api import FakeGitHub

pytestmark = pytest.mark.integration
REPO = "octo-org/models"
TOKEN = "ghp_test_token"
SHA1 = "1" * 40
SHA2 = "2" * 40


def forget_ids(store: SqlStore, table: str) -> None:
    """Lose the ids the sender remembered in ``table``, as a crash before they were written would."""
    with store.engine.begin() as conn:
        conn.execute(text(f"DELETE FROM {table}"))


@pytest.fixture
def fake() -> Iterator[FakeGitHub]:
    with FakeGitHub(repository=REPO, token=TOKEN) as server:
        server.add_pull(7, head_ref="feature", head_sha=SHA1)
        yield server


def make_sender(
    store: SqlStore, fake: FakeGitHub, *, auth: Auth.Auth | None = None, **options: object
) -> GitHubSender:
    return GitHubSender(
        store,
        auth=auth or Auth.Token(TOKEN),
        base_url=fake.api_url,
        timeout=2,
        per_page=2,  # small pages, so that finding the sticky comment paginates
        seconds_between_requests=None,
        seconds_between_writes=None,
        clock=SYSTEM_CLOCK,
        **options,  # type: ignore[arg-type]
    )


@pytest.fixture
def sender(store: SqlStore, fake: FakeGitHub) -> Iterator[GitHubSender]:
    s = make_sender(store, fake)
    yield s
    s.close()


@pytest.fixture
def forge(store: SqlStore) -> GitHubForge:
    return GitHubForge(store, REPO)


NOW = datetime.now(UTC)


@pytest.fixture(autouse=True)
def _now() -> None:
    """Each test's "now": a little after its messages are queued, so that they are due."""
    global NOW
    NOW = datetime.now(UTC) + timedelta(seconds=5)


def deliver(store: SqlStore, sender: GitHubSender, *, after: float = 0.0) -> DeliveryStats:
    return deliver_due(store, {"github": sender}, now=NOW + timedelta(seconds=after))


def report(model: str, text: str) -> str:
    return f"{marker(model)}\n## {model}\n{text}"


def bot_comments(fake: FakeGitHub, issue: int = 7) -> list[str]:
    return [c["body"] for c in fake.comments_on(issue) if c["user"]["login"] == "flywheel-bot"]


def test_the_marker_is_the_reports() -> None:
    assert report_marker("iris") == marker("iris")


def test_one_sticky_comment_per_model_edited_in_place(
    store: SqlStore, fake: FakeGitHub, sender: GitHubSender, forge: GitHubForge
) -> None:
    for i in range(3):  # people talk first: the bot's comment is on a later page
        fake.add_comment(7, f"looks good {i}", login="alice-ml")
    forge.publish_report(ReviewTarget("feature", "iris", SHA1), report("iris", "training"))
    assert deliver(store, sender).sent == 1
    assert bot_comments(fake) == [report("iris", "training")]
    # the branch was mapped to #7 through GET /pulls?head=octo-org:feature
    assert any(r.path.endswith("/pulls") and r.query["head"] == "octo-org:feature" for r in fake.requests)

    forge.publish_report(ReviewTarget("feature", "iris", SHA2), report("iris", "passed"))
    assert deliver(store, sender).sent == 1
    assert bot_comments(fake) == [report("iris", "passed")]

    forge.publish_report(ReviewTarget("feature", "breast-cancer", SHA2), report("breast-cancer", "passed"))
    deliver(store, sender)
    assert bot_comments(fake) == [report("iris", "passed"), report("breast-cancer", "passed")]
    posts = [r for r in fake.writes() if r.method == "POST"]
    assert len(posts) == 2


def test_a_target_naming_its_pull_request_is_posted_there_without_asking_github(
    store: SqlStore, fake: FakeGitHub, sender: GitHubSender, forge: GitHubForge
) -> None:
    fake.add_pull(8, head_ref="other", head_sha=SHA2)
    # The branch name alone would not say which pull request it is; the number the event told does.
    forge.publish_report(ReviewTarget("unheard-of", "iris", SHA2, pull_request=8), report("iris", "x"))
    assert deliver(store, sender).sent == 1
    assert bot_comments(fake, 8) == [report("iris", "x")]
    assert not any(r.path.endswith("/pulls") for r in fake.requests)  # no GET /pulls?head=


def test_after_a_crash_the_comment_is_found_by_its_marker_not_reposted(
    store: SqlStore, fake: FakeGitHub, sender: GitHubSender, forge: GitHubForge
) -> None:
    pull = PullRequest(7, "feature", SHA1, "main", "alice-ml", False, "open", False, "2024-05-01T12:00:00Z")
    store.save_pull_request(pull)  # the branch is known to be #7's head
    # someone pasted the marker into their own comment: it must be left alone
    fake.add_comment(7, report("iris", "fake report by a human"), login="mallory")
    for i in range(3):
        fake.add_comment(7, f"comment {i}", login="alice-ml")
    forge.publish_report(ReviewTarget("feature", "iris", SHA1), report("iris", "v1"))
    deliver(store, sender)
    assert bot_comments(fake) == [report("iris", "v1")]
    forget_ids(store, "github_report_comments")  # id lost, as after a crash before it was saved
    forge.publish_report(ReviewTarget("feature", "iris", SHA2), report("iris", "v2"))
    deliver(store, sender)
    assert bot_comments(fake) == [report("iris", "v2")]
    assert fake.comments_on(7)[0]["body"] == report("iris", "fake report by a human")
    assert not any(r.path.endswith("/pulls") for r in fake.requests)  # the stored mapping was used


def test_a_rate_limited_edit_is_retried_not_reposted(
    store: SqlStore, fake: FakeGitHub, sender: GitHubSender, forge: GitHubForge
) -> None:
    forge.publish_report(ReviewTarget("7", "iris", SHA1), report("iris", "v1"))
    deliver(store, sender)
    forget_ids(store, "github_report_comments")  # found by listing, then the edit is limited
    forge.publish_report(ReviewTarget("7", "iris", SHA1), report("iris", "v2"))
    fake.secondary_rate_limit(retry_after=60, method="PATCH")
    assert deliver(store, sender).failed == 1
    assert deliver(store, sender, after=61).sent == 1
    assert bot_comments(fake) == [report("iris", "v2")]


def test_a_comment_deleted_by_someone_is_posted_again(
    store: SqlStore, fake: FakeGitHub, sender: GitHubSender, forge: GitHubForge
) -> None:
    forge.publish_report(ReviewTarget("7", "iris", SHA1), report("iris", "v1"))
    deliver(store, sender)
    (comment,) = fake.comments_on(7)
    del fake.comments[comment["id"]]
    forge.publish_report(ReviewTarget("7", "iris", SHA1), report("iris", "v2"))
    assert deliver(store, sender).sent == 1
    assert bot_comments(fake) == [report("iris", "v2")]


def test_check_run_created_then_updated(
    store: SqlStore, fake: FakeGitHub, sender: GitHubSender, forge: GitHubForge
) -> None:
    target = ReviewTarget("feature", "iris", SHA1)
    forge.set_status(target, "pending", "training")
    deliver(store, sender)
    (run,) = fake.check_runs.values()
    assert (run["name"], run["head_sha"], run["status"]) == ("flywheel/iris", SHA1, "in_progress")
    assert run["output"]["title"] == "Running: training"

    forge.set_status(target, "success", "accuracy 0.97 ≥ 0.9")
    deliver(store, sender)
    assert list(fake.check_runs.values()) == [run]
    assert (run["status"], run["conclusion"]) == ("completed", "success")
    assert "accuracy 0.97" in run["output"]["summary"]

    forget_ids(store, "github_check_runs")  # lost id: found again by name and sha
    forge.set_status(target, "failure", "accuracy 0.5 < 0.9")
    deliver(store, sender)
    assert list(fake.check_runs.values()) == [run]
    assert run["conclusion"] == "failure"

    forge.set_status(ReviewTarget("feature", "iris", SHA2), "pending", "training")
    deliver(store, sender)
    assert [r["head_sha"] for r in fake.check_runs.values()] == [SHA1, SHA2]


def test_github_down_then_back_everything_appears_once(
    store: SqlStore, fake: FakeGitHub, sender: GitHubSender, forge: GitHubForge
) -> None:
    fake.down = True
    target = ReviewTarget("7", "iris", SHA1)
    forge.publish_report(target, report("iris", "training"))
    forge.set_status(target, "pending", "training")
    stats = deliver(store, sender)
    assert (stats.sent, stats.failed) == (0, 1)
    forge.publish_report(target, report("iris", "passed"))  # a newer report while GitHub is down
    forge.set_status(target, "success", "passed")
    assert deliver(store, sender, after=600).sent == 0
    assert not fake.comments and not fake.check_runs

    fake.down = False
    for _ in range(3):
        deliver(store, sender, after=3600)
    assert bot_comments(fake) == [report("iris", "passed")]
    (run,) = fake.check_runs.values()
    assert run["conclusion"] == "success"
    assert len(fake.writes()) == 2  # one comment, one check run: nothing duplicated


def test_server_errors_are_retried_with_backoff(
    store: SqlStore, fake: FakeGitHub, sender: GitHubSender, forge: GitHubForge
) -> None:
    forge.publish_report(ReviewTarget("7", "iris", SHA1), report("iris", "x"))
    fake.fail(502, "Server Error")
    assert deliver(store, sender).failed == 1
    message = store.due_messages(now=NOW + timedelta(hours=1))[0]
    assert message.next_attempt_at is not None and message.next_attempt_at > NOW
    assert message.last_error is not None and "502" in message.last_error
    assert deliver(store, sender, after=3600).sent == 1


def test_secondary_rate_limit_retry_after_sets_the_next_attempt(
    store: SqlStore, fake: FakeGitHub, sender: GitHubSender, forge: GitHubForge
) -> None:
    forge.publish_report(ReviewTarget("7", "iris", SHA1), report("iris", "x"))
    fake.secondary_rate_limit(retry_after=120)
    assert deliver(store, sender).failed == 1
    message = store.due_messages(now=NOW + timedelta(hours=1))[0]
    assert message.next_attempt_at == NOW + timedelta(seconds=120)
    before = len(fake.requests)
    assert deliver(store, sender, after=119).sent == 0
    assert len(fake.requests) == before  # not asked again before Retry-After
    assert deliver(store, sender, after=121).sent == 1


def test_exhausted_rate_limit_waits_for_the_reset(
    store: SqlStore, fake: FakeGitHub, sender: GitHubSender, forge: GitHubForge
) -> None:
    forge.set_status(ReviewTarget("7", "iris", SHA1), "pending", "training")
    fake.exhaust_rate_limit(reset_in=300)
    assert deliver(store, sender).failed == 1
    message = store.due_messages(now=NOW + timedelta(hours=1))[0]
    assert message.next_attempt_at is not None
    wait = (message.next_attempt_at - NOW).total_seconds()
    assert 290 <= wait <= 310


def test_a_deleted_pull_request_is_given_up(
    store: SqlStore, fake: FakeGitHub, sender: GitHubSender, forge: GitHubForge
) -> None:
    forge.publish_report(ReviewTarget("99", "iris", SHA1), report("iris", "x"))  # no #99 on GitHub
    stats = deliver(store, sender)
    assert stats.gave_up == 1
    assert store.due_messages(now=NOW + timedelta(days=30)) == []


def test_a_branch_without_pull_request_is_retried_then_given_up(
    store: SqlStore, fake: FakeGitHub, sender: GitHubSender, forge: GitHubForge
) -> None:
    forge.publish_report(ReviewTarget("no-pr-yet", "iris", SHA1), report("iris", "x"))
    assert deliver(store, sender).failed == 1
    fake.add_pull(8, head_ref="no-pr-yet", head_sha=SHA1)  # opened later: the retry finds it
    assert deliver(store, sender, after=3600).sent == 1
    assert bot_comments(fake, 8) == [report("iris", "x")]


def test_reactions_and_replies(
    store: SqlStore, fake: FakeGitHub, sender: GitHubSender, forge: GitHubForge
) -> None:
    asked = fake.add_comment(7, "/flywheel status", login="alice-ml")
    forge.react(asked["id"], "eyes")
    forge.react(asked["id"], "eyes")  # the same reaction again is one message
    forge.reply(7, "iris: no rollout yet", in_reply_to=asked["id"])
    deliver(store, sender)
    assert [r["content"] for r in fake.reactions] == ["eyes"]
    (reply,) = bot_comments(fake)
    assert reply.endswith("iris: no rollout yet")
    forget_ids(store, "github_reply_comments")
    forge.reply(7, "iris: no rollout yet", in_reply_to=asked["id"])
    deliver(store, sender)
    assert len(bot_comments(fake)) == 1
    with pytest.raises(ValueError):
        forge.react(asked["id"], "thumbs-up")


def test_token_auth_can_use_commit_statuses(store: SqlStore, fake: FakeGitHub, forge: GitHubForge) -> None:
    sender = make_sender(store, fake, checks="statuses")
    try:
        forge.set_status(ReviewTarget("7", "iris", SHA1), "failure", "x" * 300)
        deliver(store, sender)
    finally:
        sender.close()
    (status,) = fake.statuses
    assert (status["state"], status["context"], status["sha"]) == ("failure", "flywheel/iris", SHA1)
    assert len(status["description"]) == 140


def _rsa_key() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


def test_app_auth_gets_an_installation_token(store: SqlStore, forge: GitHubForge) -> None:
    private, public = _rsa_key()
    with FakeGitHub(repository=REPO, app_id=1234, installation_id=42, app_public_key=public) as fake:
        fake.add_pull(7, head_ref="feature", head_sha=SHA1)
        settings = GitHubSettings(
            repository=REPO, api_url=fake.api_url, app_id="1234", private_key=private, installation_id=42
        )
        assert settings.check_mode == "check-runs"
        sender = make_sender(store, fake, auth=settings.auth())
        try:
            forge.publish_report(ReviewTarget("7", "iris", SHA1), report("iris", "v1"))
            forge.set_status(ReviewTarget("7", "iris", SHA1), "success", "passed")
            deliver(store, sender)
            forge.publish_report(ReviewTarget("7", "iris", SHA1), report("iris", "v2"))
            deliver(store, sender)
        finally:
            sender.close()
        assert fake.installation_tokens == ["ghs_installation_1"]  # fetched once, then reused
        (comment,) = fake.comments_on(7)
        assert comment["user"]["login"] == "flywheel[bot]" and comment["body"] == report("iris", "v2")
        assert len(fake.check_runs) == 1
        assert all(
            r.headers.get("authorization") == "token ghs_installation_1"
            for r in fake.requests
            if not r.path.startswith("/app/")
        )


def test_settings_from_the_environment(tmp_path: Path) -> None:
    settings = GitHubSettings.from_env(
        {
            "FLYWHEEL_GITHUB_REPOSITORY": REPO,
            "FLYWHEEL_GITHUB_TOKEN": "t",
            "FLYWHEEL_GITHUB_API_URL": "https://ghe/api/v3",
        }
    )
    assert (settings.api_url, settings.check_mode) == ("https://ghe/api/v3", "statuses")
    key_file = tmp_path / "app.pem"
    key_file.write_text(_rsa_key()[0])
    app = GitHubSettings.from_env(
        {
            "FLYWHEEL_GITHUB_REPOSITORY": REPO,
            "FLYWHEEL_GITHUB_APP_ID": "1234",
            "FLYWHEEL_GITHUB_PRIVATE_KEY_FILE": str(key_file),
            "FLYWHEEL_GITHUB_INSTALLATION_ID": "42",
        }
    )
    assert app.installation_id == 42 and isinstance(app.auth(), Auth.AppInstallationAuth)
    with pytest.raises(ValueError):
        GitHubSettings.from_env({"FLYWHEEL_GITHUB_REPOSITORY": REPO})
    with pytest.raises(ValueError):
        GitHubSettings.from_env({"FLYWHEEL_GITHUB_REPOSITORY": "no-slash", "FLYWHEEL_GITHUB_TOKEN": "t"})
