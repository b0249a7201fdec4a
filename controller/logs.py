"""Logging for the controller: readable lines for people, JSON lines for machines.

Engine code logs with ``extra={"proposal": ..., "model": ..., "step": ...}``;
both formats show those fields.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Literal

LogFormat = Literal["text", "json"]

_CONTEXT = ("proposal", "model", "run", "step", "attempt", "state", "environment", "version")


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        where = []
        for key in ("proposal", "model"):
            value = getattr(record, key, None)
            if value is not None:
                where.append(str(value))
        prefix = f"[{' · '.join(where)}] " if where else ""
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        text = f"{stamp} {level}{prefix}{record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, object] = {
            "time": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in _CONTEXT:
            value = getattr(record, key, None)
            if value is not None:
                document[key] = value
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str)


def setup_logging(log_format: LogFormat = "text", *, verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if log_format == "json" else _TextFormatter())
    root = logging.getLogger("flywheel")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
