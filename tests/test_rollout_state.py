"""A rollout's typed state as the store keeps it: schema 1 reads back what it wrote, and a row written before
the state had a type (schema 0: the flat ``detail`` dict) reads as the same state, its pending promote
and abort as requests; a row from a newer Flywheel is refused by name; adding a request leaves the rest
of a row as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from controller.engine.rollout_state import (
    Baseline,
    LastRound,
    Outcome,
    Pause,
    Release,
    Request,
    RolloutState,
    SchemaTooNew,
    StepProgress,
    Stop,
    encode,
    load_requests,
    load_state,
    paused_by,
    promote_request,
    stop_of,
    with_request,
)
from controller.engine.verdicts import CheckResult, Decision, RoundVerdict

pytestmark = pytest.mark.unit
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
STARTED = NOW - timedelta(minutes=3)


@dataclass(frozen=True)
class Row:
    """A stored rollout's columns and detail, as the store hands them over."""

    state: str
    detail: dict[str, Any]
    model: str = "iris"
    version: int = 2
    stages: tuple[str, ...] = ("staging", "production")
    stage_index: int = 1
    step_index: int = 0
    weight: int = 20
    analysis_failures: int = 1
    paused: bool = False
    finished_at: datetime | None = None


VERDICT = {
    "outcome": "inconclusive",
    "summary": "success-rate: no data (no requests in the window)",
    "results": [
        {
            "check": "success-rate",
            "rule": "≥ 0.99",
            "outcome": "inconclusive",
            "value": None,
            "samples": 0,
            "message": "success-rate: no data (no requests in the window)",
        }
    ],
}
# What the rollout engine wrote before the state had a type: a canary step in production, one failed round
# behind it and an inconclusive one now, an operator's promote for this step and a pause not yet seen.
SCHEMA_0 = {
    "author": "alice",
    "commit": "2" * 40,
    "run": 2,
    "metrics": {"accuracy": 0.9},
    "baseline": {"version": 1, "metrics": {"accuracy": 0.88}},
    "started": (NOW - timedelta(hours=1)).isoformat(),
    "stable": 1,
    "applied": "1:0",
    "holding": 2,
    "step_started_at": STARTED.isoformat(),
    "last_round_at": (NOW - timedelta(seconds=5)).isoformat(),
    "rounds_in_step": 4,
    "promote": {
        "by": "bob",
        "reason": "",
        "at": (NOW - timedelta(seconds=2)).isoformat(),
        "stage": 1,
        "step": 0,
    },
    "last_verdict": VERDICT,
    "last_decision": {
        "action": "hold",
        "reason": "holding, analysis is inconclusive (no data is not a pass)",
    },
    "inconclusive_streaks": 1,
    "pause": {"by": "erin", "reason": "lunch", "at": NOW.isoformat()},
    "pause_announced": (NOW - timedelta(days=1)).isoformat(),
    "pauses_seen": 1,
}


def test_a_detail_as_the_untyped_engine_wrote_it_loads_into_the_typed_state() -> None:
    row = Row(state="canary", detail=SCHEMA_0, paused=True)
    state = load_state(row)
    verdict = RoundVerdict(
        "inconclusive",
        (
            CheckResult(
                "success-rate",
                "≥ 0.99",
                "inconclusive",
                None,
                0,
                "success-rate: no data (no requests in the window)",
            ),
        ),
        "success-rate: no data (no requests in the window)",
    )
    assert state == RolloutState(
        model="iris",
        version=2,
        stages=("staging", "production"),
        phase="canary",
        stage_index=1,
        step_index=0,
        weight=20,
        analysis_failures=1,
        release=Release(
            author="alice",
            commit="2" * 40,
            run=2,
            metrics={"accuracy": 0.9},
            baseline=Baseline(1, {"accuracy": 0.88}),
        ),
        started_at=NOW - timedelta(hours=1),
        stable=1,
        canary=StepProgress(STARTED, routed=True, last_round_at=NOW - timedelta(seconds=5), rounds=4),
        last_round=LastRound(
            verdict, Decision("hold", "holding, analysis is inconclusive (no data is not a pass)")
        ),
        holding_rounds=2,
        inconclusive_streaks=1,
        pause=Pause("erin", "lunch", NOW, announced=False),  # a new pause: not announced yet
        pauses_announced=1,
    )
    (promote,) = load_requests(row)
    assert (promote.kind, promote.by, promote.stage, promote.step) == ("promote", "bob", 1, 0)
    assert promote_request(state, (promote,)) == promote


def test_schema_0_rows_read_as_they_ended_or_as_they_were_being_stopped() -> None:
    failed = Row(state="rolling_back", detail={"stable": 1, "final": "failed", "reason": "deploy failed"})
    assert load_state(failed).outcome == Outcome("failed", "deploy failed")
    ended = Row(state="aborted", detail={"reason": "abort by erin"}, finished_at=NOW)
    assert load_state(ended).outcome == Outcome("aborted", "abort by erin")
    assert not load_state(ended).active
    stopping = Row(
        state="gate", detail={"abort": {"kind": "rollback", "by": "erin", "reason": "bad", "at": None}}
    )
    (request,) = load_requests(stopping)
    assert stop_of(load_state(stopping), (request,)) == Stop("rollback", "erin", "bad", None)
    carried_out = Row(
        state="rolling_back", detail={"abort": {"kind": "abort", "by": "erin"}, "final": "aborted"}
    )
    assert load_requests(carried_out) == ()
    applied_elsewhere = Row(state="canary", detail={"applied": "0:1", "step_started_at": STARTED.isoformat()})
    assert load_state(applied_elsewhere).canary == StepProgress(STARTED, routed=False)
    only_author = Row(state="gate", detail={"author": "alice"})  # as tests and old controllers create them
    assert load_state(only_author).release == Release(author="alice")


def test_schema_1_reads_back_what_it_wrote() -> None:
    state = replace(
        load_state(Row(state="canary", detail=SCHEMA_0, paused=True)),
        stop=Stop("superseded", "flywheel", "superseded by v3", NOW),
        outcome=Outcome("rolled_back", "analysis"),
    )
    pending = (
        Request("r1", "resume", "bob", NOW, "back"),
        Request("r2", "promote", "bob", NOW, stage=1, step=0),
    )
    detail = encode(state, pending)
    assert detail["schema"] == 1 and set(detail) == {"schema", "state", "requests"}
    assert "phase" not in detail["state"] and "weight" not in detail["state"]  # the columns hold those
    row = Row(state="canary", detail=detail, paused=True)
    assert load_state(row) == state and load_requests(row) == pending
    assert paused_by(state, pending) is None


def test_a_row_from_a_newer_flywheel_is_refused_by_name() -> None:
    with pytest.raises(SchemaTooNew, match="schema 2, newer than this Flywheel reads"):
        load_state(Row(state="deploy", detail={"schema": 2, "state": {}}))


def test_adding_a_request_keeps_the_rest_of_the_row() -> None:
    request = Request("r1", "pause", "bob", NOW, "lunch")
    old = with_request(SCHEMA_0, request)
    assert {k: v for k, v in old.items() if k != "requests"} == SCHEMA_0
    row = Row(state="canary", detail=old)
    assert [r.id for r in load_requests(row)] == ["v0-promote", "r1"]
    assert load_state(row) == load_state(Row(state="canary", detail=SCHEMA_0))
    new = encode(load_state(row), ())
    assert load_requests(Row(state="canary", detail=with_request(new, request))) == (request,)
