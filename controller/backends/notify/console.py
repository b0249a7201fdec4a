"""The console notifier of the embedded home: one readable log line per rollout event.

Lines go through the ``flywheel.notify`` logger, so the CLI's logging setup
decides where they end up. Failures and stops people must look at
(analysis failed, rolled back, rejected, aborted) are logged at WARNING, the
rest at INFO.

What was printed cannot be read back, so a :class:`ConsoleNotifier` with a
:class:`NotificationJournal` (the controller's, in its state directory) first
appends each event's key and line to the journal, flushed and fsynced, and
only then prints it. The outbox's sender for the ``console`` destination
(:class:`controller.engine.notices.NotifierSender`, built by
:mod:`controller.app`) asks :meth:`ConsoleNotifier.announced` about a message
in doubt (a controller killed between printing it and recording it sent):
an event whose key the journal holds is not printed again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from controller.backends.notify import LOGGER_NAME, EventKind, RolloutEvent

__all__ = ["JOURNAL_NAME", "WARNING_KINDS", "ConsoleNotifier", "NotificationJournal", "format_event"]

WARNING_KINDS: frozenset[EventKind] = frozenset(
    {"analysis_failed", "rolled_back", "rejected", "aborted", "serving_discrepancy"}
)
JOURNAL_NAME = "notifications.journal"  # in the state directory


def format_event(event: RolloutEvent) -> str:
    """``iris v3 in production: promoted — Promoted to 100%. (weight=100)``."""
    line = f"{event.model} v{event.version} in {event.environment}: {event.kind} — {event.message}"
    detail = _format_detail(event.detail)
    return f"{line} ({detail})" if detail else line


class NotificationJournal:
    """The console's durable record of what it announced: one ``key<TAB>line`` line per event, in order.

    :meth:`append` returns once the line is on disk (flushed and fsynced; the
    directory too when the file is new), so a line printed after it is
    always in the journal. :meth:`holds` reads the file through; it is asked
    only about a message in doubt, which is rare.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, key: str, line: str) -> None:
        if "\t" in key or "\n" in key:
            raise ValueError(f"a notification key cannot hold a tab or a newline: {key!r}")
        new = not self.path.exists()
        flat = " ".join(line.splitlines())
        with self.path.open("a", encoding="utf-8") as journal:
            journal.write(f"{key}\t{flat}\n")
            journal.flush()
            os.fsync(journal.fileno())
        if new:
            _fsync_directory(self.path.parent)

    def holds(self, key: str) -> bool:
        """Whether an event with ``key`` was journaled (and so printed, unless a crash came in between)."""
        try:
            with self.path.open(encoding="utf-8", errors="replace") as journal:
                return any(entry.partition("\t")[0] == key for entry in journal)
        except FileNotFoundError:
            return False


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ConsoleNotifier:
    """Writes each event as one line on the ``flywheel.notify`` logger (or the one given).

    With a ``journal`` each line is journaled before it is printed, and
    :meth:`announced` tells whether an event was; without one nothing can
    tell, and :meth:`announced` says no.
    """

    def __init__(
        self, logger: logging.Logger | None = None, *, journal: NotificationJournal | None = None
    ) -> None:
        self._logger = logger or logging.getLogger(LOGGER_NAME)
        self.journal = journal

    def post(self, event: RolloutEvent) -> None:
        level = logging.WARNING if event.kind in WARNING_KINDS else logging.INFO
        line = format_event(event)
        if self.journal is not None:
            self.journal.append(event.key, line)
        self._logger.log(level, "%s", line, extra={"flywheel_event_key": event.key})

    def announced(self, event: RolloutEvent) -> bool:
        """Whether ``event`` was announced already: its key is in the journal."""
        return self.journal is not None and self.journal.holds(event.key)


# Figures a log line leaves out: identifiers and nested tables (the audit log and Slack have them).
_NOT_IN_LOG_LINE = frozenset({"commit", "run", "stage", "rule", "groups"})


def _format_detail(detail: Mapping[str, object]) -> str:
    parts = []
    for name, value in detail.items():
        if name in _NOT_IN_LOG_LINE or isinstance(value, Mapping) or value is None:
            continue
        if isinstance(value, list | tuple | set | frozenset):
            shown = ",".join(str(v) for v in value)
        elif isinstance(value, float):
            shown = f"{value:.4g}"
        else:
            shown = str(value)
        parts.append(f"{name}={shown}")
    return ", ".join(parts)
