"""Whether this controller may act: its term as the leader, kept up beside the loop.

``flywheel run`` and ``serve`` (:func:`controller.cli.run.start`) hold a
:class:`Term` on the :class:`~controller.backends.leader.Leadership` the
settings choose, while the controller's loop
(:func:`controller.app.run_controller`) asks :meth:`Term.leading` before each
pass: only the leader reconciles, runs triggers, moves rollouts and delivers
the outbox; a follower's loop stays idle. A thread of the term's own
(:meth:`Term.start`) renews the leadership every ``renew_seconds``, or tries
to win it, so a long pass of the loop never lets the term run out; each
change (leading, following whom, stepping down) is logged once. Stopping the
term releases the leadership, so that a controller stopped on purpose hands
over at once; a controller killed hands over when its term runs out.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType

from controller.backends.leader import Leadership

__all__ = ["Term"]

log = logging.getLogger("flywheel.leader")


class Term:
    """This replica's leadership, renewed (or sought) every ``renew_seconds`` while started."""

    def __init__(self, leadership: Leadership, *, renew_seconds: float) -> None:
        self.leadership = leadership
        self.renew_seconds = renew_seconds
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._said: str | None = None

    def step(self) -> bool:
        """Renew the leadership if this replica leads, else try to win it; whether it leads now."""
        with self._lock:
            election = self.leadership
            leads = election.renew() if election.is_leader() else election.try_acquire()
            self._say(leads)
            return leads

    def leading(self) -> bool:
        """Whether this replica leads now (by the leadership's clock; asks nobody)."""
        with self._lock:
            leads = self.leadership.is_leader()
            self._say(leads)
            return leads

    def start(self) -> Term:
        """Win or renew now, then every ``renew_seconds`` in a thread until :meth:`stop`."""
        self.step()

        def keep() -> None:
            while not self._stop.wait(self.renew_seconds):
                try:
                    self.step()
                except Exception:  # never let the term's thread die: the next step tries again
                    log.exception("leader election failed; trying again")

        self._thread = threading.Thread(target=keep, name="leader-election", daemon=True)
        self._thread.start()
        return self

    def stop(self, *, release: bool = True) -> None:
        """Stop renewing; hand the leadership back unless ``release`` is false (a replica that dies)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.renew_seconds + 5)
        if release:
            with self._lock:
                self.leadership.release()

    def __enter__(self) -> Term:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    def _say(self, leads: bool) -> None:
        holder = self.leadership.holder()
        said = "leading" if leads else f"following {holder}" if holder else "following"
        if said == self._said:
            return
        self._said = said
        me = self.leadership.identity
        if leads:
            log.info("%s leads: reconciling, running triggers and delivering the outbox", me)
        else:
            who = f"{holder} leads" if holder else "no leader is known yet"
            log.info("%s follows (%s): the loop stays idle until it leads", me, who)
