"""The controller's term as leader (:class:`controller.engine.leadership.Term`) over any Leadership.

Pins down: a step renews while this replica leads and tries to win otherwise;
``leading`` asks the leadership only (no network); a change between leading
and following is logged once, naming who leads; stopping the term releases
the leadership unless told not to (a replica that dies); and the one
controller alone (``none``) always leads.
"""

from __future__ import annotations

import logging

import pytest

from controller.backends.leader import Solo
from controller.engine.leadership import Term

pytestmark = pytest.mark.unit


class Scripted:
    """A leadership that wins when told to, and records what it was asked."""

    def __init__(self) -> None:
        self.identity = "pod-a"
        self.winnable = False
        self.leads = False
        self.calls: list[str] = []

    def try_acquire(self) -> bool:
        self.calls.append("try_acquire")
        self.leads = self.winnable
        return self.leads

    def renew(self) -> bool:
        self.calls.append("renew")
        self.leads = self.winnable
        return self.leads

    def release(self) -> None:
        self.calls.append("release")
        self.leads = False

    def is_leader(self) -> bool:
        return self.leads

    def holder(self) -> str | None:
        return "pod-a" if self.leads else "pod-b"


def test_a_step_tries_to_win_then_renews_and_each_change_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    election = Scripted()
    term = Term(election, renew_seconds=5)
    with caplog.at_level(logging.INFO, logger="flywheel.leader"):
        assert not term.step() and not term.step() and not term.leading()
        election.winnable = True
        assert term.step() and term.step() and term.leading()
        election.winnable = False
        assert not term.step()
    assert election.calls == ["try_acquire", "try_acquire", "try_acquire", "renew", "renew"]
    assert [r.getMessage() for r in caplog.records] == [
        "pod-a follows (pod-b leads): the loop stays idle until it leads",
        "pod-a leads: reconciling, running triggers and delivering the outbox",
        "pod-a follows (pod-b leads): the loop stays idle until it leads",
    ]


def test_stopping_the_term_releases_the_leadership_unless_the_replica_dies() -> None:
    election = Scripted()
    election.winnable = True
    with Term(election, renew_seconds=60) as term:
        assert term.leading()
    assert election.calls[-1] == "release" and not election.leads
    dying = Scripted()
    dying.winnable = True
    term = Term(dying, renew_seconds=60).start()
    term.stop(release=False)
    assert "release" not in dying.calls and dying.leads


def test_the_one_controller_alone_always_leads() -> None:
    with Term(Solo("laptop"), renew_seconds=5) as term:
        assert term.step() and term.leading()
        assert term.leadership.holder() == "laptop"
