"""Poison stops nothing: a bad event, a bad stored value or a failing poller is logged once and skipped.

Pins down, at the controller, issue 11's "hostile input stops nothing":

* an inbox event whose handling fails is completed with its error and never
  claimed again; one claimed more than ``MAX_EVENT_ATTEMPTS`` times without
  completing (the controller died handling it each time) is given up;
* a poller or handler that raises is logged with its traceback once, however
  many ticks it keeps failing, and the rest of the tick (the inbox, rollouts,
  the outbox) still runs;
* pull request records left malformed in ``meta`` by a Flywheel that
  accepted ``"number": false`` are left behind by the upgrade of its state
  with one warning each, never raised: with such records and such an event
  already stored, a GitHub controller (its poller against the fake GitHub
  API, its trust gate, its reconciler) keeps working and records the pull
  request afresh. (Every malformed value of every family: test_store_migration.)
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.app import Controller, build_controller
from controller.backends.forge.github import GitHubSender
from controller.backends.pipelines.fake import FakeRunner, ScriptedStep
from controller.backends.serving.fake import FakeServing
from controller.backends.store import InboxEvent, OutboxMessage
from controller.clock import SYSTEM_CLOCK
from controller.engine.inbox import MAX_EVENT_ATTEMPTS
from controller.scaffold import scaffold
from controller.settings import ControllerSettings, GitHubSettings, Settings
from tests.fakes.github_api import FakeGitHub
from tests.gitrepo import GitRepo
from tests.store_0003 import open_pulls_value, pull_request_value, state_at_0003, write_meta

pytestmark = pytest.mark.integration


class BrokenPoller:
    """A poller whose every poll fails the same way."""

    def __init__(self) -> None:
        self.polls = 0

    def poll_if_due(self) -> int:
        self.polls += 1
        raise RuntimeError("the poller's own bug")

    def close(self) -> None:
        pass


class Recorder:
    """An outbox sender that keeps what it is given."""

    def __init__(self) -> None:
        self.sent: list[OutboxMessage] = []

    def send(self, message: OutboxMessage) -> None:
        self.sent.append(message)


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[Controller]:
    scaffold(tmp_path / "ml")
    built = build_controller(
        Settings(controller=ControllerSettings(repo=str(tmp_path / "ml"), state_dir=tmp_path / "state")),
        serving=FakeServing(),
    )
    yield built
    built.close()


def tracebacks(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(1 for r in caplog.records if r.exc_info and text in r.getMessage())


def test_a_failing_poller_and_handler_are_logged_once_and_the_tick_goes_on(
    controller: Controller, caplog: pytest.LogCaptureFixture
) -> None:
    store = controller.store
    poller, recorder, handled = BrokenPoller(), Recorder(), []

    def explode(event: InboxEvent) -> None:
        raise ValueError(f"cannot handle {event.delivery_id}")

    controller.pollers.append(poller)
    controller.inbox.handlers.update(explode=explode, fine=lambda event: handled.append(event.delivery_id))
    controller.senders["test"] = recorder
    store.put_event(source="test", delivery_id="poison", kind="explode", payload={})
    store.put_event(source="test", delivery_id="after-it", kind="fine", payload={})
    store.enqueue(destination="test", key="k1", payload={"text": "still delivered"})
    with caplog.at_level(logging.DEBUG, logger="flywheel"):
        for _ in range(3):
            controller.tick()
    assert poller.polls == 3
    assert handled == ["after-it"]
    poison = store.get_event(1)
    assert poison.completed_at is not None and poison.error == "ValueError: cannot handle poison"
    assert store.claim_events(limit=10, worker="again") == []  # never retried
    assert [m.payload["text"] for m in recorder.sent] == ["still delivered"]
    assert tracebacks(caplog, "poller BrokenPoller failed") == 1  # once, not once per tick
    assert tracebacks(caplog, "event 1 (explode) failed") == 1


def test_a_part_of_the_tick_that_recovers_says_so_and_fails_loudly_again(
    controller: Controller, caplog: pytest.LogCaptureFixture
) -> None:
    failures = iter([RuntimeError("down"), RuntimeError("down"), None, RuntimeError("down")])

    def rollouts_tick() -> None:
        failure = next(failures)
        if failure is not None:
            raise failure

    controller.rollouts.tick = rollouts_tick  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger="flywheel"):
        for _ in range(4):
            controller.tick()
    assert tracebacks(caplog, "rollouts failed") == 2  # the first failure, and the first after recovering
    assert [r.getMessage() for r in caplog.records].count("rollouts works again") == 1


def test_an_event_that_never_completes_is_given_up(controller: Controller) -> None:
    store = controller.store
    handled: list[str] = []
    controller.inbox.handlers["fine"] = lambda event: handled.append(event.delivery_id)
    store.put_event(source="test", delivery_id="crashed-often", kind="fine", payload={})
    store.put_event(source="test", delivery_id="crashed-less", kind="fine", payload={})
    # A controller died while handling them: the first is claimed MAX_EVENT_ATTEMPTS times, the second
    # once less.
    for _ in range(MAX_EVENT_ATTEMPTS - 1):
        assert len(store.claim_events(limit=2, worker="crashing", lease_seconds=0)) == 2
    assert [e.delivery_id for e in store.claim_events(limit=1, worker="crashing", lease_seconds=0)] == [
        "crashed-often"
    ]
    controller.handle_requests()
    often, less = store.get_event(1), store.get_event(2)
    assert often.completed_at is not None and "given up" in (often.error or "")
    assert less.completed_at is not None and less.error is None
    assert handled == ["crashed-less"]


# ------------------------------------------------------------- a GitHub controller


def github_controller(tmp_path: Path, github: FakeGitHub, *, old_meta: dict[str, str]) -> Controller:
    """A controller on a state directory a 0003 Flywheel left with ``old_meta``."""
    engine = state_at_0003(tmp_path / "state")
    write_meta(engine, old_meta, at=SYSTEM_CLOCK.now())
    engine.dispose()
    work = GitRepo(tmp_path / "work")
    scaffold(work.path)
    bare = tmp_path / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    work.git("remote", "add", "origin", str(bare))
    work.git("push", "-q", "origin", "main")
    settings = GitHubSettings(
        repository=github.repository, api_url=github.api_url, token="ghp_test_token", poll_seconds=0.01
    )
    controller = build_controller(
        Settings(
            controller=ControllerSettings(repo=f"file://{bare}", state_dir=tmp_path / "state", promote=False),
            github=settings,
        ),
        serving=FakeServing(),
    )
    controller.senders["github"] = GitHubSender.from_settings(
        controller.store,
        settings,
        seconds_between_requests=None,
        seconds_between_writes=None,
        clock=controller.clock,
    )
    controller.proposals.runners = {
        "local": FakeRunner({"evaluate": ScriptedStep(metrics={"accuracy": 0.9})})
    }
    return controller


def step(controller: Controller) -> None:
    """One turn of ``flywheel serve``'s loop: tick (poll, inbox, rollouts, outbox), fetch, reconcile."""
    time.sleep(0.02)  # the poll interval
    controller.tick()
    controller.repository.fetch()
    controller.proposals.reconcile()
    while controller.proposals.busy:
        controller.proposals.collect()
        time.sleep(0.01)


def test_a_github_controller_keeps_working_over_what_a_poison_event_left(
    tmp_path: Path, github: FakeGitHub, caplog: pytest.LogCaptureFixture
) -> None:
    github.add_pull(6, head_ref="tune", head_sha="b" * 40, author="octocat")
    # What an older Flywheel stored after accepting {"number": false}, and such an event not handled yet.
    old_meta = {
        "github:open-pulls": open_pulls_value({False: False}),
        "github:pr:False": pull_request_value(number=False),
        "github:pr:6": pull_request_value(number=False),
    }
    with caplog.at_level(logging.WARNING, logger="flywheel"):
        controller = github_controller(tmp_path, github, old_meta=old_meta)
    store = controller.store
    poison = {
        "action": "opened",
        "number": False,
        "pull_request": {**github.pulls[0], "number": False},
        "repository": {"full_name": github.repository},
    }
    store.put_event(source="github", delivery_id="old-poison", kind="pull_request.opened", payload=poison)
    try:
        with caplog.at_level(logging.WARNING, logger="flywheel"):
            for _ in range(3):
                step(controller)  # raises nothing
        old = store.get_event(1)
        assert old.completed_at is not None and "number: Input should be a valid integer" in (old.error or "")
        info = store.pull_request(6)  # found by polling, recorded afresh
        assert info is not None and (info.number, info.head_sha, info.state) == (6, "b" * 40, "open")
        assert [(pull.number, pull.fork) for pull in store.open_pull_requests()] == [(6, False)]
        assert store.get_meta("github:open-pulls") is None  # the bad entry is gone with its key
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        left = sorted(w.split("the stored ")[1].split(": ")[0] for w in warnings if "not carrying over" in w)
        assert left == ["github:pr:6", "github:pr:False"]  # once each, at the upgrade
        assert [e.error for e in map(store.get_event, range(2, 3))] == [None]  # the polled opened #6
    finally:
        controller.close()
