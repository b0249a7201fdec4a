"""The local runner's record of its step processes: a resumed run first ends what a killed controller left.

:class:`~controller.backends.pipelines.local.LocalRunner` runs each step in a
session of its own, a child of the controller that outlives a ``kill -9`` of
the controller. So that a resumed run never runs a step beside the orphan of
the run before it (``train.py`` writing into the same run directory twice),
each attempt is recorded in :class:`StepRecords` before it is launched (run,
step, attempt and a fresh instance token the process carries as
``FLYWHEEL_INSTANCE``), again with its pid and the kernel's start time of that
pid once launched, and forgotten when it exits; each record names the
controller process that launched it. A run that starts first calls
:meth:`StepRecords.end_orphans`: every recorded step process of the run that
still runs (found by pid and start time, or by its token when the controller
died before it knew the pid) is stopped with its whole process group, SIGTERM
then SIGKILL, and waited for; no step of the run starts before. So are those
of other runs in the same directory whose controller is gone (a run the
restarted controller cancelled instead of resuming leaves no step running).

The records live beside the run directory, not in it (the engine starts a
resumed run from a clean copy of its directory)::

    <run_dir's parent>/.steps/<run_dir's name>/<step>.json
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from controller.backends.local.processes import (
    find_instance,
    instance_of,
    is_alive,
    new_instance,
    process_start_time,
    stop_process,
)

__all__ = ["StepProcess", "StepRecords"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class StepProcess:
    """One attempt of a step, as recorded: ``pid`` None while it is being launched."""

    run_id: str
    step: str
    attempt: int
    instance: str  # the token the process carries as FLYWHEEL_INSTANCE
    pid: int | None = None
    process_start: str | None = None  # the kernel's start time of pid
    owner: int | None = None  # the controller process that launched it
    owner_start: str | None = None


class StepRecords:
    """The recorded step processes of the run whose directory is ``run_dir``."""

    def __init__(self, run_dir: Path) -> None:
        self.directory = run_dir.parent / ".steps" / run_dir.name

    def intend(self, *, run_id: str, step: str, attempt: int) -> StepProcess:
        """Record an attempt about to be launched; its process must carry the returned ``instance``."""
        record = StepProcess(
            run_id=run_id, step=step, attempt=attempt, instance=new_instance(),
            owner=os.getpid(), owner_start=process_start_time(os.getpid()),
        )
        self._save(record)
        return record

    def launched(self, record: StepProcess, pid: int) -> StepProcess:
        """Record the pid (and its start time) of an attempt just launched."""
        launched = replace(record, pid=pid, process_start=process_start_time(pid))
        self._save(launched)
        return launched

    def finished(self, step: str) -> None:
        """Forget the attempt of ``step``: its process exited."""
        self._path(step).unlink(missing_ok=True)

    def end_orphans(self, *, grace_seconds: float) -> list[StepProcess]:
        """Stop every recorded step process of this run that still runs, and those of other runs whose
        controller is gone, with their process groups; the ones stopped.

        Raises :class:`~controller.backends.local.processes.ProcessError` when
        one does not stop; its record is kept then, so the next start tries again.
        """
        ended = []
        paths = sorted(self.directory.glob("*.json")) if self.directory.is_dir() else []
        for other in sorted(self.directory.parent.glob("*/*.json")):
            record = _load(other)
            if other.parent != self.directory and record is not None and not _owned(record):
                paths.append(other)
        for path in paths:
            record = _load(path)
            running = None if record is None else _running(record)
            if record is not None and running is not None:
                log.warning(
                    "run %s: ending step %s (attempt %d, pid %d), left running by a stopped controller",
                    record.run_id, record.step, record.attempt, running[0],
                )
                stop_process(*running, grace_seconds=grace_seconds)
                ended.append(replace(record, pid=running[0], process_start=running[1]))
            path.unlink(missing_ok=True)
        return ended

    def _path(self, step: str) -> Path:
        return self.directory / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', step)}.json"

    def _save(self, record: StepProcess) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self._path(record.step)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w") as handle:
            json.dump(asdict(record), handle, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)


def _load(path: Path) -> StepProcess | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        return StepProcess(**data)
    except (OSError, ValueError, TypeError):
        return None


def _owned(record: StepProcess) -> bool:
    """Whether the controller process that launched ``record`` still runs (then it is not an orphan)."""
    return record.owner is not None and is_alive(record.owner, record.owner_start)


def _running(record: StepProcess) -> tuple[int, str | None] | None:
    """The process of ``record`` if it still runs: its recorded pid, alive since the recorded start time
    and carrying the recorded token, or, with no pid recorded, the process that carries the token."""
    if record.pid is None:
        return find_instance(record.instance)
    if is_alive(record.pid, record.process_start) and instance_of(record.pid) in (None, record.instance):
        return record.pid, record.process_start
    return None

