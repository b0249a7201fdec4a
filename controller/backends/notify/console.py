"""The console notifier of the embedded home: one readable log line per rollout event.

Lines go through the ``flywheel.notify`` logger, so the CLI's logging setup
decides where they end up. Failures and stops people must look at
(analysis failed, rolled back, rejected, aborted) are logged at WARNING, the
rest at INFO.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from controller.backends.notify import LOGGER_NAME, EventKind, RolloutEvent

__all__ = ["WARNING_KINDS", "ConsoleNotifier", "format_event"]

WARNING_KINDS: frozenset[EventKind] = frozenset(
    {"analysis_failed", "rolled_back", "rejected", "aborted", "serving_discrepancy"}
)


def format_event(event: RolloutEvent) -> str:
    """``iris v3 in production: promoted — Promoted to 100%. (weight=100)``."""
    line = f"{event.model} v{event.version} in {event.environment}: {event.kind} — {event.message}"
    detail = _format_detail(event.detail)
    return f"{line} ({detail})" if detail else line


class ConsoleNotifier:
    """Writes each event as one line on the ``flywheel.notify`` logger (or the one given)."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._logger = logger or logging.getLogger(LOGGER_NAME)

    def post(self, event: RolloutEvent) -> None:
        level = logging.WARNING if event.kind in WARNING_KINDS else logging.INFO
        self._logger.log(level, "%s", format_event(event), extra={"flywheel_event_key": event.key})


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
