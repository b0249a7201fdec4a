"""Leader election: which of several controller replicas may act on the shared state.

Only the leader reconciles proposals, runs triggers, moves rollouts and
delivers the outbox; the loop (:mod:`controller.engine.leadership`) asks a
:class:`Leadership` on every pass. Implementations:

* :class:`~controller.backends.leader.lease.LeaseLeadership`: a
  ``coordination.k8s.io/v1`` Lease, on the cluster home
  (``FLYWHEEL_LEADER_ELECTION=lease``), with client-go's leader-election rules;
* :class:`~controller.backends.leader.advisory.AdvisoryLeadership`: a
  PostgreSQL session advisory lock on a connection of its own, when there is
  no Kubernetes (``FLYWHEEL_LEADER_ELECTION=postgres``);
* :class:`Solo`: one controller alone (``none``, the default); on the
  embedded home the state directory's lock
  (:class:`controller.backends.local.lock.ControllerLock`, taken by
  ``flywheel run``) is what keeps it alone.

Every implementation answers from what it last proved, by the injected
clock: :meth:`Leadership.is_leader` turns false on its own once a lease would
have run out without a renewal, whatever the network does meanwhile.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Leadership", "LeadershipError", "Solo"]


class LeadershipError(Exception):
    """Leader election cannot be set up as configured (one line, for people)."""


class Leadership(Protocol):
    """One controller replica's view of the election; every method is safe to call on every pass."""

    @property
    def identity(self) -> str:
        """Who this replica is (the pod's name, or ``FLYWHEEL_INSTANCE``)."""
        ...

    def try_acquire(self) -> bool:
        """Lead if nobody does (or the leader's term ran out); whether this replica leads now."""
        ...

    def renew(self) -> bool:
        """Extend this replica's term; ``False`` (and no longer leading) when it could not."""
        ...

    def release(self) -> None:
        """Give the leadership up at once, so another replica need not wait for the term to run out."""
        ...

    def is_leader(self) -> bool:
        """Whether this replica leads now: it won and its term has not run out since the last renewal."""
        ...

    def holder(self) -> str | None:
        """Who leads, as last seen (``None``: nobody, or not known)."""
        ...


class Solo:
    """The only controller: always the leader (``FLYWHEEL_LEADER_ELECTION=none``)."""

    def __init__(self, identity: str) -> None:
        self._identity = identity

    @property
    def identity(self) -> str:
        return self._identity

    def try_acquire(self) -> bool:
        return True

    def renew(self) -> bool:
        return True

    def release(self) -> None:
        return None

    def is_leader(self) -> bool:
        return True

    def holder(self) -> str | None:
        return self._identity
