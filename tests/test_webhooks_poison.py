"""Poison stops nothing: a bad event, a bad stored value or a failing poller is logged once and skipped.

Pins down, at the controller, issue 11's "hostile input stops nothing":

* an inbox event whose handling fails is completed with its error and never
  claimed again; one claimed more than ``MAX_EVENT_ATTEMPTS`` times without
  completing (the controller died handling it each time) is given up;
* a poller or handler that raises is logged with its traceback once, however
  many ticks it keeps failing, and the rest of the tick (the inbox, rollouts,
  the outbox) still runs;
* pull request records left malformed by a Flywheel that accepted
  ``"number": false`` are skipped with one warning, never raised: with such
  records and such an event already stored, a GitHub controller (its poller
  against the fake GitHub API, its trust gate, its reconciler) keeps working
  and writes good records over the bad ones.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.app import MAX_EVENT_ATTEMPTS, Controller, build_controller
from controller.backends.forge.github import (
    OPEN_PULLS_KEY,
    GitHubSender,
    open_pull_requests,
    pull_request_info,
    pull_request_meta_key,
)
from controller.backends.pipelines.fake import FakeRunner, ScriptedStep
from controller.backends.serving.fake import FakeServing
from controller.backends.store import InboxEvent, OutboxMessage, Store, open_store
from controller.clock import SYSTEM_CLOCK
from controller.scaffold import scaffold
from controller.settings import ControllerSettings, GitHubSettings, Settings
from tests.fakes.github_api import FakeGitHub
from tests.gitrepo import GitRepo
from webhooks.events import attach_github_events

GOOD_RECORD = {
    "number": 6,
    "head_ref": "tune",
    "head_sha": "a" * 40,
    "base_ref": "main",
    "author": "octocat",
    "fork": False,
    "state": "open",
    "merged": False,
    "updated_at": "2024-05-01T12:00:00Z",
}


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
    controller.handlers.update(explode=explode, fine=lambda event: handled.append(event.delivery_id))
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
    controller.handlers["fine"] = lambda event: handled.append(event.delivery_id)
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


# ------------------------------------------------------------- malformed records


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = open_store(tmp_path / "records", clock=SYSTEM_CLOCK)
    yield opened
    opened.close()


@pytest.mark.parametrize(
    "stored",
    [
        "{not json",
        "[]",
        json.dumps({**GOOD_RECORD, "number": False}),
        json.dumps({**GOOD_RECORD, "number": 7}),  # another pull request's record
        json.dumps({**GOOD_RECORD, "fork": "no"}),
        json.dumps({k: v for k, v in GOOD_RECORD.items() if k != "head_sha"}),
        "[" * 100_000,
    ],
    ids=lambda value: value[:30],
)
def test_a_malformed_pull_request_record_is_no_record_with_one_warning(
    store: Store, stored: str, caplog: pytest.LogCaptureFixture
) -> None:
    store.set_meta(pull_request_meta_key(6), stored)
    with caplog.at_level(logging.WARNING, logger="flywheel"):
        assert pull_request_info(store, 6) is None
        assert pull_request_info(store, 6) is None
    assert len([r for r in caplog.records if "skipping the stored github:pr:6" in r.getMessage()]) == 1
    store.set_meta(pull_request_meta_key(6), json.dumps(GOOD_RECORD))
    info = pull_request_info(store, 6)
    assert info is not None and info.head_sha == "a" * 40


def test_malformed_open_pull_requests_are_left_out(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    store.set_meta(
        OPEN_PULLS_KEY, json.dumps({"False": False, "6": True, "7": "yes", "-1": False, "8": False})
    )
    with caplog.at_level(logging.WARNING, logger="flywheel"):
        assert open_pull_requests(store) == {6: True, 8: False}
        assert open_pull_requests(store) == {6: True, 8: False}
    assert len([r for r in caplog.records if OPEN_PULLS_KEY in r.getMessage()]) == 1
    for garbage in ("{", "[1, 2]", "null"):
        store.set_meta(OPEN_PULLS_KEY, garbage)
        assert open_pull_requests(store) == {}


# ------------------------------------------------------------- a GitHub controller


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    with FakeGitHub() as fake:
        yield fake


def github_controller(tmp_path: Path, github: FakeGitHub) -> Controller:
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
    attach_github_events(controller)
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
    controller = github_controller(tmp_path, github)
    store = controller.store
    # What an older Flywheel stored after accepting {"number": false}, and such an event not handled yet.
    store.set_meta(OPEN_PULLS_KEY, json.dumps({"False": False}))
    store.set_meta(pull_request_meta_key(False), json.dumps({**GOOD_RECORD, "number": False}))
    store.set_meta(pull_request_meta_key(6), json.dumps({**GOOD_RECORD, "number": False}))
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
        info = pull_request_info(store, 6)  # found by polling, written over the bad record
        assert info is not None and (info.number, info.head_sha, info.state) == (6, "b" * 40, "open")
        assert open_pull_requests(store) == {6: False}
        assert json.loads(store.get_meta(OPEN_PULLS_KEY) or "") == {"6": False}  # the bad entry is gone
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len([w for w in warnings if OPEN_PULLS_KEY in w]) == 1
        assert [e.error for e in map(store.get_event, range(2, 3))] == [None]  # the polled opened #6
    finally:
        controller.close()
