"""Comment commands (controller.engine.comments): parsing, rights from main's policy, replies and audit.

Pins down: ``/flywheel`` lines are found at the start of any line outside
code fences, checked against a table of commands and arguments, and unknown
commands or bad arguments get the help text; every comment with a command
is acknowledged at once with a reaction and answered with one reply (both
through the outbox, delivered to a local GitHub API by the real sender);
approve, reject and the rollout controls go through ``Commands`` and the
rest are checked and audited here; ``retrain`` starts its run there and
then (the reply names the run, or says why there is none); a pull request
that edits ``policies/`` to let its author approve is judged by main's
policy (Invariant 1): refused and audited; MODEL is taken from the pull
request when it changes exactly one model; bots and comments without
commands are ignored.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from github import Auth

from controller.backends.forge.github import GitHubForge, GitHubSender
from controller.backends.git import Repository
from controller.backends.store import OutboxMessage
from controller.backends.store.sql import SqlStore
from controller.clock import SYSTEM_CLOCK
from controller.engine.approvals import resolve_user
from controller.engine.commands import Commands, main_policy
from controller.engine.comments import HELP, CommentOutcome, handle_comment, parse_commands
from controller.engine.outbox import deliver_due
from controller.engine.rollout_state import load_requests, load_state, paused_by
from controller.engine.trust import record_pull_request
from controller.specs import Catalog
from tests.fakes.github_api import FakeGitHub, issue_comment_event, pull_request_event
from tests.gitrepo import GitRepo

REPO_ROOT = Path(__file__).resolve().parents[1]
FULL_NAME = "octo-org/models"
SHA = "c" * 40


# ------------------------------------------------------------------ parsing


@pytest.mark.unit
@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("/flywheel help", [("help", (), None)]),
        ("/flywheel status", [("status", (), None)]),
        ("/flywheel retrain iris", [("retrain", ("iris",), None)]),
        ("/flywheel approve", [("approve", (), None)]),
        ("/flywheel approve iris production", [("approve", ("iris", "production"), None)]),
        ("/flywheel REJECT iris", [("reject", ("iris",), None)]),
        ("/flywheel promote breast-cancer", [("promote", ("breast-cancer",), None)]),
        ("/flywheel pause", [("pause", (), None)]),
        ("/flywheel resume iris", [("resume", ("iris",), None)]),
        ("/flywheel abort iris", [("abort", ("iris",), None)]),
        ("/flywheel rollback iris", [("rollback", ("iris",), None)]),
        ("/flywheel ok-to-test", [("ok-to-test", (), None)]),
        ("/flywheel ok-to-test 1a2b3c4", [("ok-to-test", ("1a2b3c4",), None)]),
        (
            "Thanks!\n/flywheel status\nand\n/flywheel approve iris",
            [("status", (), None), ("approve", ("iris",), None)],
        ),
        ("/flywheel   approve   iris  ", [("approve", ("iris",), None)]),
        ("/flywheel deploy iris", [("deploy", ("iris",), "unknown command 'deploy'")]),
        ("/flywheel", [("help", (), "no command given")]),
        (
            "/flywheel approve iris production extra",
            [("approve", ("iris", "production", "extra"), "too many")],
        ),
        ("/flywheel approve Iris!", [("approve", ("Iris!",), "is not a valid MODEL")]),
        ("/flywheel ok-to-test main", [("ok-to-test", ("main",), "is not a valid SHA")]),
        ("/flywheel help me", [("help", ("me",), "too many")]),
        ("please run /flywheel approve iris", []),  # not at the start of a line
        ("> /flywheel approve iris", []),  # a quote
        ("  /flywheel approve iris", []),  # indented: code, not a command
        ("/flywheeling approve", []),
        ("```\n/flywheel approve iris\n```\n/flywheel status", [("status", (), None)]),  # fenced
        ("", []),
    ],
)
def test_parse_commands(body: str, expected: list[tuple[str, tuple[str, ...], str | None]]) -> None:
    parsed = parse_commands(body)
    assert [(p.name, p.args) for p in parsed] == [(name, args) for name, args, _ in expected]
    for command, (_, _, error) in zip(parsed, expected, strict=True):
        if error is None:
            assert command.error is None
        else:
            assert command.error is not None and error in command.error


@pytest.mark.unit
def test_at_most_ten_commands_per_comment() -> None:
    assert len(parse_commands("/flywheel status\n" * 50)) == 10


@pytest.mark.unit
def test_help_lines_are_not_commands() -> None:
    assert parse_commands(HELP) == []  # the bot's own reply can never be taken for a command


# ----------------------------------------------------------------- handling


def rollout_awaiting_production(store: SqlStore, model: str = "iris", *, author: str = "bob") -> int:
    run = store.create_run(model=model, ref="main", commit=SHA, cache_key=f"k-{model}", status="succeeded")
    version = store.register_version(
        model=model,
        run_id=run.id,
        commit=SHA,
        artifact_digest="sha256:" + "0" * 64,
        artifact_uri="/tmp/artifact",
        environment_hash="e" * 16,
        metrics={"accuracy": 0.97},
    )
    store.create_rollout(
        model=model,
        version=version.number,
        stages=["staging", "production"],
        state="gate",
        detail={"author": author},
    )
    return version.number


def open_pull(
    store: SqlStore, number: int = 12, *, branch: str = "tune-iris", author: str = "bob-ml"
) -> None:
    record_pull_request(
        store, pull_request_event("opened", number=number, head_ref=branch, head_sha=SHA, author=author)
    )


def run_on(store: SqlStore, branch: str, model: str) -> None:
    store.create_run(model=model, ref=branch, commit=SHA, cache_key=f"{branch}-{model}", status="succeeded")


class Retrains:
    """Records what it is asked to retrain; answers with run ids, or raises what ``fail`` says."""

    def __init__(self, fail: str | None = None) -> None:
        self.asked: list[tuple[str, str | None]] = []
        self.fail = fail

    def __call__(self, model: str, ref: str | None) -> int:
        if self.fail is not None:
            raise ValueError(self.fail)
        self.asked.append((model, ref))
        return 40 + len(self.asked)


def say(
    store: SqlStore,
    catalog: Catalog,
    body: str,
    *,
    login: str,
    number: int = 12,
    retrain: Retrains | None = None,
    **kw: object,
) -> CommentOutcome:
    return handle_comment(
        issue_comment_event(body, login=login, number=number, **kw),  # type: ignore[arg-type]
        pulls=store,
        records=store,
        catalog=lambda: catalog,
        commands=Commands(store=store, catalog=lambda: catalog, clock=SYSTEM_CLOCK),
        forge=GitHubForge(store, FULL_NAME),
        retrain=retrain or Retrains(),
    )


def outbox(store: SqlStore) -> list[OutboxMessage]:
    return store.due_messages(now=datetime.now(UTC) + timedelta(days=1))


def reply_of(store: SqlStore, *, in_reply_to: int | None = None) -> str:
    (reply,) = [
        m
        for m in outbox(store)
        if m.payload["kind"] == "reply" and in_reply_to in (None, m.payload["in_reply_to"])
    ]
    return str(reply.payload["body"])


@pytest.mark.integration
def test_acknowledged_at_once_and_answered_through_a_real_github(store: SqlStore, catalog: Catalog) -> None:
    with FakeGitHub(repository=FULL_NAME, token="t") as fake:
        fake.add_pull(12, head_ref="tune-iris", head_sha=SHA)
        asked = fake.add_comment(12, "/flywheel status iris", login="alice-ml")
        say(store, catalog, "/flywheel status iris", login="alice-ml", comment_id=asked["id"])
        sender = GitHubSender(
            store,
            auth=Auth.Token("t"),
            base_url=fake.api_url,
            timeout=2,
            seconds_between_requests=None,
            seconds_between_writes=None,
            clock=SYSTEM_CLOCK,
        )
        try:
            deliver_due(store, {"github": sender}, now=datetime.now(UTC) + timedelta(seconds=1))
        finally:
            sender.close()
        assert [r["content"] for r in fake.reactions] == ["eyes", "+1"]
        reply = fake.comments_on(12)[-1]
        assert reply["user"]["login"] == "flywheel-bot"
        assert (
            "@alice-ml" in reply["body"] and "**iris**" in reply["body"] and "no rollout yet" in reply["body"]
        )
    assert store.audit()[-1].action == "command.status"


@pytest.mark.unit
def test_unknown_command_gets_the_help_and_is_audited(store: SqlStore, catalog: Catalog) -> None:
    outcome = say(store, catalog, "/flywheel deploy iris", login="alice-ml")
    assert [r.ok for r in outcome.results] == [False]
    assert "unknown command 'deploy'" in reply_of(store) and "`/flywheel ok-to-test [SHA]`" in reply_of(store)
    entry = store.audit()[-1]
    assert (entry.action, entry.actor, entry.detail["line"]) == (
        "command.invalid",
        "alice",
        "/flywheel deploy iris",
    )
    reactions = sorted(m.payload["content"] for m in outbox(store) if m.payload["kind"] == "reaction")
    assert reactions == ["-1", "eyes"]


@pytest.mark.unit
def test_help_for_anyone(store: SqlStore, catalog: Catalog) -> None:
    outcome = say(store, catalog, "/flywheel help", login="some-stranger")
    assert [r.ok for r in outcome.results] == [True]
    assert HELP in reply_of(store)
    assert store.audit()[-1].actor == "github:some-stranger"


@pytest.mark.unit
def test_approve_with_the_model_the_pull_request_changes(store: SqlStore, catalog: Catalog) -> None:
    version = rollout_awaiting_production(store)
    open_pull(store)
    run_on(store, "tune-iris", "iris")
    outcome = say(store, catalog, "/flywheel approve", login="carol-biz")
    assert [r.ok for r in outcome.results] == [True], outcome
    (approval,) = store.approvals_for(model="iris", version=version, environment="production")
    assert (approval.user, approval.channel, approval.decision) == ("carol", "github", "approve")
    assert "carol approved iris v1 for production" in reply_of(store)
    assert store.audit()[-1].action == "approval.approve"


@pytest.mark.unit
def test_several_changed_models_ask_for_one(store: SqlStore, catalog: Catalog) -> None:
    open_pull(store)
    run_on(store, "tune-iris", "iris")
    run_on(store, "tune-iris", "breast-cancer")
    outcome = say(store, catalog, "/flywheel approve", login="carol-biz")
    assert [r.ok for r in outcome.results] == [False]
    assert "several models (breast-cancer, iris); name one" in reply_of(store)
    assert store.audit()[-1].detail["refusal"] == "no_model"


@pytest.mark.unit
def test_reject_and_pause_go_through_commands(store: SqlStore, catalog: Catalog) -> None:
    rollout_awaiting_production(store)
    outcome = say(store, catalog, "/flywheel reject iris production\n/flywheel pause iris", login="alice-ml")
    assert [r.ok for r in outcome.results] == [False, True]  # alice is not a business owner; may pause
    (rollout,) = store.rollouts_for("iris")
    pause = paused_by(load_state(rollout), load_requests(rollout))  # asked for: the planner holds it
    assert pause is not None and pause.by == "alice"
    actions = [e.action for e in store.audit()]
    assert actions[-2:] == ["command.refused", "command.pause"]


@pytest.mark.unit
def test_retrain_starts_a_run_for_allowed_users_only(store: SqlStore, catalog: Catalog) -> None:
    open_pull(store)
    retrains = Retrains()
    refused = say(store, catalog, "/flywheel retrain iris", login="carol-biz", retrain=retrains)
    assert [r.ok for r in refused.results] == [False] and retrains.asked == []
    allowed = say(store, catalog, "/flywheel retrain iris", login="bob-ml", comment_id=9, retrain=retrains)
    assert [r.ok for r in allowed.results] == [True]
    assert retrains.asked == [("iris", "tune-iris")]  # the pull request's head, at once
    assert store.claim_events(limit=10, worker="test") == []  # not a second trip through the inbox
    assert "bob asked to retrain iris on tune-iris: run #41 started." in reply_of(store, in_reply_to=9)
    assert [e.action for e in store.audit()][-2:] == ["command.refused", "command.retrain"]
    detail = store.audit()[-1].detail
    assert (detail["ref"], detail["result"], detail["run"]) == ("tune-iris", "started", 41)


@pytest.mark.unit
def test_a_retrain_that_cannot_start_says_why(store: SqlStore, catalog: Catalog) -> None:
    retrains = Retrains(fail="iris is not a valid model at the head of main (abc)")
    outcome = say(store, catalog, "/flywheel retrain iris", login="alice-ml", pull=False, retrain=retrains)
    assert [r.ok for r in outcome.results] == [False]
    assert "Could not retrain iris: iris is not a valid model at the head of main (abc)." in reply_of(store)
    entry = store.audit()[-1]
    assert (entry.action, entry.detail["result"], entry.detail["ref"]) == ("command.retrain", "failed", None)


@pytest.mark.unit
def test_bots_and_comments_without_commands_are_ignored(store: SqlStore, catalog: Catalog) -> None:
    assert say(store, catalog, "/flywheel approve iris", login="flywheel[bot]").results == ()
    assert say(store, catalog, "LGTM", login="alice-ml").results == ()
    assert outbox(store) == [] and store.audit() == []


@pytest.mark.unit
def test_ok_to_test_on_an_issue_is_refused(store: SqlStore, catalog: Catalog) -> None:
    outcome = say(store, catalog, "/flywheel ok-to-test", login="alice-ml", pull=False)
    assert [r.ok for r in outcome.results] == [False]
    assert store.audit()[-1].detail["refusal"] == "not_a_pull_request"


# -------------------------------------------- a pull request cannot grant itself rights


POLICY_GRANT = """\
  identities:
    - user: mallory
      github: mallory-gh
"""


@pytest.fixture
def git_repo(tmp_path: Path) -> GitRepo:
    repo = GitRepo(tmp_path / "repo")
    repo.path.mkdir()
    repo.git("init", "--quiet", "--initial-branch=main")
    for relative in ["policies/default.yaml", "environments/staging.yaml", "environments/production.yaml"]:
        repo.write(relative, (REPO_ROOT / relative).read_text())
    for path in sorted((REPO_ROOT / "specs" / "iris").iterdir()):
        if path.is_file():
            repo.write(f"specs/iris/{path.name}", path.read_text())
    repo.commit("main")
    return repo


@pytest.mark.integration
def test_a_pull_request_editing_policies_is_judged_by_mains_policy(
    store: SqlStore, git_repo: GitRepo, tmp_path: Path
) -> None:
    git_repo.branch("let-me-approve")
    git_repo.edit(
        "policies/default.yaml", "      members: [carol, dave]", "      members: [carol, dave, mallory]"
    )
    git_repo.edit("policies/default.yaml", "  identities:\n", POLICY_GRANT)
    head = git_repo.commit("let me approve my own model")
    repository = Repository.open(str(git_repo.path), mirror_root=tmp_path / "mirrors")
    pr_policy = main_policy(repository.catalog(head))
    assert pr_policy is not None and resolve_user(pr_policy, channel="github", name="mallory-gh") == "mallory"

    def main_catalog() -> Catalog:
        return repository.catalog(repository.resolve("main"))

    version = rollout_awaiting_production(store, author="mallory")
    record_pull_request(
        store,
        pull_request_event(
            "opened", number=31, head_ref="let-me-approve", head_sha=head, author="mallory-gh"
        ),
    )
    outcome = handle_comment(
        issue_comment_event("/flywheel approve iris production", login="mallory-gh", number=31),
        pulls=store,
        records=store,
        catalog=main_catalog,
        commands=Commands(store=store, catalog=main_catalog, clock=SYSTEM_CLOCK),
        forge=GitHubForge(store, FULL_NAME),
        retrain=Retrains(),
    )
    assert [r.ok for r in outcome.results] == [False]
    assert store.approvals_for(model="iris", version=version, environment="production") == []
    entry = store.audit()[-1]
    assert (entry.action, entry.actor, entry.detail["refusal"]) == (
        "command.refused",
        "github:mallory-gh",
        "unmapped",
    )
    assert "not a known Flywheel user" in reply_of(store)
