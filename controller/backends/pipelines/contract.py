"""The step contract's pieces every home handles the same way: a step's metrics file, its log's tail,
and the progress events it reports; and what every run handle shares (:class:`HandleBase`).

Both pipeline runners call these: :mod:`.local` on the files its
subprocesses wrote, :mod:`.argo` on a Workflow's ``metrics`` output parameter
and the pod logs it fetched. README's "step contract" is what they check.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from pathlib import Path
from typing import Any

from controller.backends.pipelines import EventKind, RunRequest, RunResult, StepEvent, StepStatus

__all__ = ["LOG_TAIL_LINES", "HandleBase", "emit", "log_tail", "read_metrics"]

log = logging.getLogger(__name__)

LOG_TAIL_LINES = 50
_TAIL_BYTES = 64 * 1024


def read_metrics(path: Path) -> dict[str, float]:
    """The metrics a step wrote: absent or empty means none; anything else must be ``{name: number}``.

    Raises ``ValueError`` saying what is wrong with the file.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    if not text.strip():
        return {}
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f'expected a JSON object {{"name": number}}, got {type(data).__name__}')
    bad = {
        k: v
        for k, v in data.items()
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v)
    }
    if bad:
        shown = ", ".join(f"{k}={v!r}" for k, v in list(bad.items())[:5])
        raise ValueError(f"metric values must be finite numbers: {shown}")
    return {str(k): float(v) for k, v in data.items()}


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of the log at ``path`` (read from its last 64 KiB); empty when unreadable."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - _TAIL_BYTES))
            data = handle.read()
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


def emit(
    request: RunRequest,
    step: str,
    kind: EventKind,
    attempt: int,
    elapsed: float,
    status: StepStatus | None = None,
    message: str = "",
) -> None:
    """Report a step's progress to ``request.on_event``; a callback that fails is logged, never raised."""
    event = StepEvent(
        run_id=request.run_id,
        step=step,
        kind=kind,
        attempt=attempt,
        elapsed_seconds=elapsed,
        status=status,
        message=message,
    )
    try:
        request.on_event(event)
    except Exception:
        log.exception("run %s: progress callback failed on %s", request.run_id, event)


class HandleBase:
    """What every run handle shares: its request, waiting for its result, and its steps' progress.

    A handle calls :meth:`_finish_with` once with the run's result; until
    then :meth:`wait` waits and :meth:`done` is false.
    """

    def __init__(self, request: RunRequest) -> None:
        self.request = request
        self._done = threading.Event()
        self._result: RunResult | None = None

    def wait(self, timeout: float | None = None) -> RunResult:
        if not self._done.wait(timeout):
            raise TimeoutError(f"run {self.request.run_id} still running after {timeout}s")
        assert self._result is not None
        return self._result

    def done(self) -> bool:
        return self._done.is_set()

    def _finish_with(self, result: RunResult) -> None:
        self._result = result
        self._done.set()

    def _emit(
        self,
        step: str,
        kind: EventKind,
        attempt: int,
        elapsed: float,
        status: StepStatus | None = None,
        message: str = "",
    ) -> None:
        emit(self.request, step, kind, attempt, elapsed, status, message)
