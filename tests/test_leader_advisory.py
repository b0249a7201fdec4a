"""Leader election on a PostgreSQL advisory lock, against a real PostgreSQL.

Pins down: of two replicas on one database one leads and the other knows
who; a released lock is taken at once; a leader whose session the server
ends (the connection lost) leads no more at its next renewal, and the other
takes over; and a leader that is not renewed leads no more after two thirds
of the duration, by the injected clock.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from controller.backends.leader.advisory import AdvisoryLeadership
from controller.clock import FakeClock

pytestmark = pytest.mark.integration


@pytest.fixture
def pair(pg_url: str, clock: FakeClock) -> Iterator[tuple[AdvisoryLeadership, AdvisoryLeadership]]:
    made = [
        AdvisoryLeadership(
            pg_url, name="flywheel-controller", identity=f"pod-{n}", duration_seconds=15, clock=clock
        )
        for n in "ab"
    ]
    try:
        yield made[0], made[1]
    finally:
        for elector in made:
            elector.close()


def test_one_replica_leads_and_the_other_knows_who(
    pair: tuple[AdvisoryLeadership, AdvisoryLeadership],
) -> None:
    a, b = pair
    assert a.try_acquire() and not b.try_acquire()
    assert a.is_leader() and not b.is_leader()
    assert a.holder() == b.holder() == "pod-a"
    assert a.renew() and a.try_acquire()  # the leader asking again keeps it


def test_a_released_lock_is_taken_at_once(pair: tuple[AdvisoryLeadership, AdvisoryLeadership]) -> None:
    a, b = pair
    assert a.try_acquire()
    a.release()
    assert not a.is_leader() and b.try_acquire() and b.holder() == "pod-b"
    assert not a.try_acquire()


def test_losing_the_connection_is_losing_the_leadership(
    pair: tuple[AdvisoryLeadership, AdvisoryLeadership], pg_url: str
) -> None:
    a, b = pair
    assert a.try_acquire()
    admin = create_engine(pg_url, poolclass=NullPool)
    try:
        with admin.connect() as conn:
            ended = conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = 'flywheel pod-a'"
                )
            ).scalars()
            assert list(ended) == [True]
    finally:
        admin.dispose()
    assert not a.renew() and not a.is_leader()
    assert b.try_acquire() and b.holder() == "pod-b"


def test_a_leader_not_renewed_leads_no_more_after_two_thirds_of_the_duration(
    pair: tuple[AdvisoryLeadership, AdvisoryLeadership], clock: FakeClock
) -> None:
    a, b = pair
    assert a.try_acquire()
    clock.advance(seconds=9.999)
    assert a.is_leader()
    clock.advance(seconds=0.001)
    assert not a.is_leader()
    assert b.try_acquire()  # and its session let the lock go
