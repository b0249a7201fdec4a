"""The leadership ``flywheel run`` and ``serve`` elect with, as the settings choose it.

:func:`leader_term` builds the :class:`~controller.backends.leader.Leadership`
of ``settings.leader`` (:class:`~controller.settings.LeaderSettings`) and holds
its :class:`~controller.engine.leadership.Term` while the controller runs
(:func:`controller.cli.run.start`): ``none`` is :class:`~controller.backends.leader.Solo`,
``lease`` a Lease through the Kubernetes API (``FLYWHEEL_KUBECONFIG``'s,
else the pod's service account), ``postgres`` an advisory lock in ``FLYWHEEL_DATABASE_URL``'s
database. A Kubernetes configuration that cannot be loaded is one line.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from controller.backends.leader import Leadership
    from controller.clock import Clock
    from controller.engine.leadership import Term
    from controller.settings import Settings

__all__ = ["leader_term", "leadership_for"]


def leadership_for(settings: Settings, *, clock: Clock) -> tuple[Leadership, list[object]]:
    """The leadership the settings choose, and what to close with it."""
    from controller.backends.leader import Solo

    leader = settings.leader
    if leader.election == "lease":
        from controller.backends.kube import KubeConfigError, kube_client
        from controller.backends.leader.lease import LeaseLeadership

        try:
            api = kube_client(settings.argo.kubeconfig)
        except KubeConfigError as exc:
            hint = "" if settings.argo.kubeconfig else " (set FLYWHEEL_KUBECONFIG outside the cluster)"
            raise click.ClickException(
                f"FLYWHEEL_LEADER_ELECTION=lease needs the Kubernetes API: {exc}{hint}"
            ) from exc
        lease = LeaseLeadership(
            api,
            name=leader.lease_name,
            namespace=leader.lease_namespace,
            identity=leader.name,
            duration_seconds=leader.lease_seconds,
            clock=clock,
        )
        return lease, [api]
    if leader.election == "postgres" and settings.database_url is not None:
        from controller.backends.leader.advisory import AdvisoryLeadership

        lock = AdvisoryLeadership(
            settings.database_url,
            name=leader.lease_name,
            identity=leader.name,
            duration_seconds=leader.lease_seconds,
            clock=clock,
        )
        return lock, [lock]
    return Solo(leader.name), []


@contextmanager
def leader_term(settings: Settings, *, clock: Clock) -> Iterator[Term]:
    """Hold this replica's term (renewed in a thread) while the block runs; released at its end."""
    from controller.engine.leadership import Term

    leadership, closers = leadership_for(settings, clock=clock)
    try:
        with Term(leadership, renew_seconds=settings.leader.renew_seconds) as term:
            yield term
    finally:
        for closer in closers:
            close = getattr(closer, "close", None)
            if close is not None:
                close()
