"""Leader election on a ``coordination.k8s.io/v1`` Lease, as client-go's ``leaderelection`` does it.

The cluster home's controller replicas (``FLYWHEEL_LEADER_ELECTION=lease``)
each hold a :class:`LeaseLeadership`, built by the composition root's helper
:func:`controller.engine.leadership.leadership_from_settings`, and the loop
calls it on every pass. The Lease's ``holderIdentity`` is the replica's name
(the pod's), with ``leaseDurationSeconds``, ``acquireTime``, ``renewTime``
and ``leaseTransitions``; every write carries the ``resourceVersion`` read
just before it, so of two replicas writing at once one gets ``409 Conflict``
and has lost, which is no error.

Time is the injected clock's. A replica takes a Lease another holds only once
it has seen the same record unchanged for a whole ``leaseDurationSeconds``
(client-go's "observed time": skew between the pods' clocks cannot shorten a
term, and ``renewTime + leaseDurationSeconds`` has passed by then for any
replica whose clock agrees). The leader counts its term from the moment it
began its last successful write, and stops leading (:meth:`is_leader` false)
once a renewal has not succeeded for two thirds of the duration (client-go's
renew deadline), a third of the duration before anyone may take over. A
renewal that finds the Lease taken, or loses a conflict, ends the term at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

import urllib3
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from controller.clock import Clock

__all__ = ["LeaseLeadership", "LeaseRecord"]

log = logging.getLogger("flywheel.leader")

RENEW_DEADLINE = 2 / 3  # of the lease's duration: the leader stops acting after this long without a renewal


@dataclass(frozen=True)
class LeaseRecord:
    """The leader-election part of a Lease's spec, as last read."""

    holder: str
    duration_seconds: int
    acquire_time: datetime | None
    renew_time: datetime | None
    transitions: int

    @classmethod
    def of(cls, lease: k8s.V1Lease) -> LeaseRecord:
        spec = lease.spec or k8s.V1LeaseSpec()
        return cls(
            holder=spec.holder_identity or "",
            duration_seconds=int(spec.lease_duration_seconds or 0),
            acquire_time=spec.acquire_time,
            renew_time=spec.renew_time,
            transitions=int(spec.lease_transitions or 0),
        )

    def spec(self) -> k8s.V1LeaseSpec:
        return k8s.V1LeaseSpec(
            holder_identity=self.holder,
            lease_duration_seconds=self.duration_seconds,
            acquire_time=self.acquire_time,
            renew_time=self.renew_time,
            lease_transitions=self.transitions,
        )


class LeaseLeadership:
    """This replica's side of the election on the Lease ``namespace/name``."""

    def __init__(
        self,
        api: k8s.ApiClient,
        *,
        name: str,
        namespace: str,
        identity: str,
        duration_seconds: int,
        clock: Clock,
    ) -> None:
        if duration_seconds < 3:
            raise ValueError(f"a lease lasts at least 3 seconds, not {duration_seconds}")
        self._api = k8s.CoordinationV1Api(api)
        self.name = name
        self.namespace = namespace
        self._identity = identity
        self.duration = timedelta(seconds=duration_seconds)
        self._clock = clock
        self._observed: LeaseRecord | None = None
        self._observed_at: datetime | None = None  # when the record last changed, by our clock
        self._term_from: datetime | None = None  # the start of our last successful write, while leading

    @property
    def identity(self) -> str:
        return self._identity

    # -------------------------------------------------------------- the protocol

    def try_acquire(self) -> bool:
        return self._acquire_or_renew()

    def renew(self) -> bool:
        return self._acquire_or_renew()

    def is_leader(self) -> bool:
        if self._term_from is None:
            return False
        if self._clock.now() >= self._term_from + self.duration * RENEW_DEADLINE:
            log.warning("lease %s/%s: not renewed in time; no longer leading", self.namespace, self.name)
            self._term_from = None
        return self._term_from is not None

    def holder(self) -> str | None:
        return self._observed.holder or None if self._observed is not None else None

    def release(self) -> None:
        """Hand the Lease back (holder empty, a one-second duration), so another takes over at once."""
        if self._term_from is None:
            return
        self._term_from = None
        now = self._clock.now()
        try:
            lease = self._read()
            if lease is None or LeaseRecord.of(lease).holder != self._identity:
                return
            old = LeaseRecord.of(lease)
            released = LeaseRecord(
                holder="", duration_seconds=1, acquire_time=now, renew_time=now, transitions=old.transitions
            )
            self._replace(lease, released)
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            log.warning("lease %s/%s: could not release it (%s); it runs out", self.namespace, self.name, exc)

    # ---------------------------------------------------------------- the rules

    def _acquire_or_renew(self) -> bool:
        now = self._clock.now()
        mine = LeaseRecord(
            holder=self._identity,
            duration_seconds=int(self.duration.total_seconds()),
            acquire_time=now,
            renew_time=now,
            transitions=0,
        )
        try:
            lease = self._read()
            if lease is None:
                self._create(mine)
                return self._won(mine, now)
            old = LeaseRecord.of(lease)
            if old != self._observed:
                self._observed, self._observed_at = old, now
            held_by_other = old.holder not in ("", self._identity)
            if held_by_other and self._observed_at is not None and now < self._observed_at + self._term(old):
                return self._lost(f"held by {old.holder}")
            if old.holder == self._identity:
                mine = LeaseRecord(
                    holder=self._identity,
                    duration_seconds=mine.duration_seconds,
                    acquire_time=old.acquire_time or now,
                    renew_time=now,
                    transitions=old.transitions,
                )
            else:
                mine = LeaseRecord(
                    holder=self._identity,
                    duration_seconds=mine.duration_seconds,
                    acquire_time=now,
                    renew_time=now,
                    transitions=old.transitions + 1,
                )
            self._replace(lease, mine)
            return self._won(mine, now)
        except ApiException as exc:
            if exc.status == 409:
                return self._lost("another replica wrote it first (409 Conflict)")
            return self._unsure(f"{exc.status} {exc.reason}")
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            return self._unsure(str(exc))

    def _term(self, record: LeaseRecord) -> timedelta:
        return timedelta(seconds=record.duration_seconds) if record.duration_seconds > 0 else self.duration

    def _won(self, record: LeaseRecord, started: datetime) -> bool:
        if self._term_from is None:
            log.info("lease %s/%s: %s leads now", self.namespace, self.name, self._identity)
        self._observed, self._observed_at, self._term_from = record, started, started
        return True

    def _lost(self, why: str) -> bool:
        if self._term_from is not None:
            log.warning("lease %s/%s: leadership lost: %s", self.namespace, self.name, why)
        self._term_from = None
        return False

    def _unsure(self, why: str) -> bool:
        """The API did not answer: a leader keeps its term until the renew deadline, and no longer."""
        log.warning("lease %s/%s: cannot reach the Kubernetes API (%s)", self.namespace, self.name, why)
        return self.is_leader()

    # ------------------------------------------------------------------ the API

    def _timeout(self) -> float:
        return max(1.0, self.duration.total_seconds() / 3)

    def _read(self) -> k8s.V1Lease | None:
        try:
            lease: k8s.V1Lease = self._api.read_namespaced_lease(
                self.name, self.namespace, _request_timeout=self._timeout()
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return lease

    def _create(self, record: LeaseRecord) -> None:
        body = k8s.V1Lease(
            api_version="coordination.k8s.io/v1",
            kind="Lease",
            metadata=k8s.V1ObjectMeta(name=self.name, namespace=self.namespace),
            spec=record.spec(),
        )
        self._api.create_namespaced_lease(self.namespace, body, _request_timeout=self._timeout())

    def _replace(self, lease: k8s.V1Lease, record: LeaseRecord) -> None:
        version = lease.metadata.resource_version if lease.metadata is not None else None
        body = k8s.V1Lease(
            api_version="coordination.k8s.io/v1",
            kind="Lease",
            metadata=k8s.V1ObjectMeta(name=self.name, namespace=self.namespace, resource_version=version),
            spec=record.spec(),
        )
        self._api.replace_namespaced_lease(self.name, self.namespace, body, _request_timeout=self._timeout())
