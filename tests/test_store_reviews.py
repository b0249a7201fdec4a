"""The local forge's reviews in the store: one report per proposal and model, updated in place,
with every commit status kept, and a new commit starting pending."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.backends.store import open_store
from controller.clock import SYSTEM_CLOCK

pytestmark = pytest.mark.unit


def test_review_is_updated_in_place_and_statuses_are_kept(tmp_path: Path) -> None:
    store = open_store(tmp_path, clock=SYSTEM_CLOCK)
    store.save_review(proposal="tune", model="iris", commit="c1", body="first")
    store.save_review(proposal="tune", model="iris", commit="c1", state="failure", description="gate")
    review = store.save_review(proposal="tune", model="iris", commit="c1", body="second")
    assert (review.body, review.state, review.description) == ("second", "failure", "gate")
    assert len(store.reviews(proposal="tune")) == 1

    moved = store.save_review(proposal="tune", model="iris", commit="c2", body="third")
    assert (moved.commit, moved.state, moved.description) == ("c2", "pending", "")
    store.save_review(proposal="tune", model="iris", commit="c2", state="success", description="ok")
    history = store.commit_statuses(proposal="tune", model="iris")
    assert [(s.commit, s.state) for s in history] == [("c1", "failure"), ("c2", "success")]
    store.close()


def test_a_run_records_the_run_it_reused(tmp_path: Path) -> None:
    store = open_store(tmp_path, clock=SYSTEM_CLOCK)
    first = store.create_run(model="iris", ref="a", commit="c1", cache_key="k", status="succeeded")
    second = store.create_run(
        model="iris", ref="b", commit="c2", cache_key="k", status="succeeded", reused_from=first.id
    )
    assert store.get_run(second.id).reused_from == first.id
    assert store.get_run(first.id).reused_from is None
    store.close()
