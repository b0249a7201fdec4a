"""The embedded home's controller lock: one controller per state directory.

``flywheel run`` and ``flywheel serve`` take it (:class:`ControllerLock`)
before they open the store, and hold it for the controller's lifetime; a
second controller on the same directory is refused with a line saying who
holds it.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

from controller.clock import Clock

__all__ = ["LOCK_FILE", "ControllerLock", "StateDirBusy", "StateDirError"]

LOCK_FILE = "controller.lock"


class StateDirError(Exception):
    """The state directory cannot be used by this controller (one line, for people)."""


class StateDirBusy(StateDirError):
    """Another controller holds the state directory; ``holder`` is what it wrote into the lock file."""

    def __init__(self, message: str, *, holder: Mapping[str, object]) -> None:
        super().__init__(message)
        self.holder = dict(holder)


class ControllerLock:
    """An exclusive lock on a state directory, held for a controller's lifetime (one controller each).

    ``flock`` on ``<state_dir>/controller.lock``: an advisory lock of the
    operating system, released by the kernel when the process ends however it
    ends (``kill -9`` included), so a stale lock never needs cleaning up. The
    holder writes who it is (process id, host, since when) into the file
    after locking, for the message the next one gets. The descriptor is not
    inherited by the pipelines and servers the controller starts. Commands
    that only read the state, and decisions, take no lock. ``flywheel run``
    and ``flywheel serve`` take it before they open the store. (Replicas of
    the cluster home's controller, each with a directory of its own, elect
    their leader as well: :mod:`controller.backends.leader`.)
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, state_dir: Path, *, clock: Clock) -> ControllerLock:
        """Lock ``state_dir`` (created if needed), or raise :class:`StateDirBusy` / :class:`StateDirError`."""
        state_dir = state_dir.resolve()
        path = state_dir / LOCK_FILE
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StateDirError(f"cannot use the state directory {state_dir}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise StateDirBusy(
                f"another controller is running on {state_dir} ({_describe_holder(holder)}); "
                "stop it first, or give this one another --state-dir",
                holder=holder,
            ) from None
        except OSError as exc:
            os.close(fd)
            why = exc.strerror or str(exc)
            raise StateDirError(f"cannot lock the state directory {state_dir}: {why}") from exc
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": clock.now().isoformat()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        """Unlock (closing the descriptor releases the lock); safe to call twice."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> ControllerLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _read_holder(fd: int) -> dict[str, object]:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _describe_holder(holder: Mapping[str, object]) -> str:
    """``process 1234 on host-a since 2026-01-05 09:00:00 UTC``; what is known of it."""
    if not holder.get("pid"):
        return "it has not said who it is yet"
    words = f"process {holder['pid']}"
    if holder.get("host"):
        words += f" on {holder['host']}"
    since = holder.get("since")
    if isinstance(since, str):
        try:
            words += f" since {datetime.fromisoformat(since):%Y-%m-%d %H:%M:%S %Z}".rstrip()
        except ValueError:
            words += f" since {since}"
    return words
