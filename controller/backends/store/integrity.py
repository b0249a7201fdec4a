"""Whether the state store may be acted on: writable, intact, and its audit log not behind its mark.

A store that silently lost its newest commits (a truncated or cut SQLite
write-ahead log, a database copied without it) would let the controller
retrain, register and announce again what it did before, and forget
approvals. So the audit log has an independent **high-water mark**: a small
file beside the database (:class:`MarkFile`) holding the sequence number of
the log's newest entry, how many entries there are, and a SHA-256 digest
chained over all of them (:func:`chain`). The store advances it after every
commit that appended to the log (written to a temporary file, fsynced,
renamed over the old one, and the directory fsynced). At start the
composition root (:mod:`controller.app`) calls :func:`verify_state`: a
store that cannot be written, is damaged, or whose log is behind its mark
(fewer entries, or other entries at the mark's sequence) is refused with
one line, and nothing is done until an operator looks (``flywheel state
check``) and accepts the store as it is (``flywheel state accept``,
:meth:`StateIntegrity.accept_state`), which is audited.

The mark and its comparison are generic; how a store proves it is writable
and intact, and how it keeps its log checkpointed, is the store's own
(:class:`StateIntegrity`; SQLite's in :mod:`.sql.base`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from controller.backends.store.audit import AuditEntry
from controller.backends.store.common import StoreError

__all__ = [
    "AuditComparison",
    "AuditMark",
    "MarkFile",
    "StateBehindMark",
    "StateCorrupt",
    "StateIntegrity",
    "StateNotWritable",
    "StateRefused",
    "chain",
    "compare",
    "entry_text",
    "verify_state",
]

_FORMAT = 1
_GENESIS = ""


class StateRefused(StoreError):
    """The store must not be acted on as it is; the message is one line for the operator."""


class StateNotWritable(StateRefused):
    """The state directory or database cannot be written."""


class StateCorrupt(StateRefused):
    """The database (or the audit mark) is damaged."""


class StateBehindMark(StateRefused):
    """The audit log has lost entries its mark has seen, or holds others in their place."""


def entry_text(entry: AuditEntry) -> str:
    """The canonical text of ``entry`` that the digest chains over (every field, keys sorted)."""
    return json.dumps(
        entry.to_json(),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,
    )


def chain(previous: str, entry: AuditEntry) -> str:
    """The digest of the log up to ``entry``, given the digest up to the entry before it."""
    return hashlib.sha256(f"{previous}\n{entry_text(entry)}".encode()).hexdigest()


@dataclass(frozen=True)
class AuditMark:
    """How far the audit log had grown: its newest entry's ``sequence``, its ``entries``, their ``digest``."""

    sequence: int = 0
    entries: int = 0
    digest: str = _GENESIS

    def extended(self, entries: Iterable[AuditEntry]) -> AuditMark:
        """The mark after ``entries`` (oldest first, all newer than this mark) were appended."""
        mark = self
        for entry in entries:
            mark = AuditMark(sequence=entry.id, entries=mark.entries + 1, digest=chain(mark.digest, entry))
        return mark

    def describe(self) -> str:
        short = self.digest[:12] or "-"
        return f"#{self.sequence}, {self.entries} entries, digest {short}"


State = Literal["in step", "ahead", "unmarked", "behind", "diverged"]


@dataclass(frozen=True)
class AuditComparison:
    """The audit log in the database against its mark.

    ``state``: ``in step``; ``ahead`` (the database has entries the mark has
    not seen yet: a process stopped between its commit and the mark, which is
    safe); ``unmarked`` (no mark yet); ``behind`` (the database lacks entries
    the mark counted: ``missing`` of them); ``diverged`` (as many entries up
    to the mark's sequence, but not the same ones).
    """

    state: State
    mark: AuditMark | None
    database: AuditMark  # the whole log as the database has it
    at_mark: AuditMark  # the database's log up to the mark's sequence
    missing: int = 0

    @property
    def damaged(self) -> bool:
        return self.state in ("behind", "diverged")


def compare(mark: AuditMark | None, entries: Iterable[AuditEntry]) -> AuditComparison:
    """Compare the database's log (``entries``, oldest first) with ``mark``."""
    whole = AuditMark()
    at_mark = AuditMark()
    for entry in entries:
        whole = whole.extended([entry])
        if mark is not None and entry.id <= mark.sequence:
            at_mark = whole
    if mark is None:
        return AuditComparison(state="unmarked", mark=None, database=whole, at_mark=whole)
    if at_mark.entries < mark.entries:
        missing = mark.entries - at_mark.entries
        return AuditComparison(state="behind", mark=mark, database=whole, at_mark=at_mark, missing=missing)
    if at_mark.digest != mark.digest:
        return AuditComparison(state="diverged", mark=mark, database=whole, at_mark=at_mark)
    state: State = "ahead" if whole.entries > at_mark.entries else "in step"
    return AuditComparison(state=state, mark=mark, database=whole, at_mark=at_mark)


class MarkFile:
    """The audit log's high-water mark, a small JSON file beside the database.

    Written atomically (temporary file, fsync, rename, directory fsync);
    writers in several processes (the controller, an operator's command)
    take an exclusive ``flock`` on ``<path>.lock`` around read-and-write.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> AuditMark | None:
        """The mark, ``None`` when there is none yet; :class:`StateCorrupt` when it cannot be read."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if data.get("format") != _FORMAT:
                raise ValueError(f"unknown format {data.get('format')!r}")
            return AuditMark(
                sequence=int(data["sequence"]), entries=int(data["entries"]), digest=str(data["digest"])
            )
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateNotWritable(f"cannot read the audit mark {self.path}: {exc.strerror or exc}") from exc
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StateCorrupt(
                f"the audit mark {self.path} is damaged ({exc}); "
                "see `flywheel state check`, and `flywheel state accept` to write it again"
            ) from exc

    def write(self, mark: AuditMark) -> None:
        """Replace the mark with ``mark``, durably."""
        directory = self.path.parent
        text = json.dumps(
            {"format": _FORMAT, "sequence": mark.sequence, "entries": mark.entries, "digest": mark.digest}
        )
        fd, temporary = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                file.write(text + "\n")
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        directory_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(directory_fd)
        finally:
            os.close(directory_fd)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the mark's lock (across processes) while the block reads and writes it."""
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


class StateIntegrity(Protocol):
    """What a store offers to prove it may be acted on, and to keep itself so."""

    def check_writable(self) -> None:
        """Raise :class:`StateNotWritable` (one line naming the path) when the state cannot be written."""
        ...

    def check_intact(self) -> None:
        """Raise :class:`StateCorrupt` (one line) when the database is damaged."""
        ...

    def checkpoint(self) -> None:
        """Move what the database's log holds into the database proper (a no-op where there is none)."""
        ...

    def audit_comparison(self) -> AuditComparison:
        """The audit log against its mark (``unmarked`` for a store that keeps none)."""
        ...

    def record_audit_mark(self) -> AuditMark | None:
        """Advance the mark to the log's end when the log is ``ahead`` of it or there is none; the mark."""
        ...

    def accept_state(self, *, actor: str, reason: str) -> AuditComparison:
        """Accept the log as the database has it: audit that (who, why, what was missing), re-write the mark.

        Returns the comparison as it was before.
        """
        ...

    @property
    def audit_mark_path(self) -> Path | None:
        """Where the mark is kept; ``None`` for a store that keeps none (an in-memory one)."""
        ...


def verify_state(store: StateIntegrity) -> AuditComparison:
    """Refuse (raise :class:`StateRefused`, one line) a store that must not be acted on; else mark it.

    Checks, in order: writable, intact, audit log not behind its mark. A log
    ahead of its mark (or without one) gets its mark brought up to date.
    """
    store.check_writable()
    store.check_intact()
    comparison = store.audit_comparison()
    if comparison.damaged:
        raise StateBehindMark(refusal(comparison, store.audit_mark_path))
    if comparison.state in ("ahead", "unmarked"):
        store.record_audit_mark()
    return comparison


def refusal(comparison: AuditComparison, path: Path | None) -> str:
    """The one line that says how the audit log differs from its mark, and what to do."""
    mark = comparison.mark or AuditMark()
    where = f" ({path})" if path is not None else ""
    if comparison.state == "behind":
        missing = comparison.missing
        what = (
            f"the audit log has lost {missing} of its {mark.entries} entries: the database holds "
            f"{comparison.at_mark.entries} up to #{mark.sequence}, "
            f"where its mark{where} counted {mark.entries}"
        )
    else:
        what = (
            f"the audit log up to #{mark.sequence} is not the one its mark{where} recorded "
            "(entries were lost and others written in their place)"
        )
    state_dir = f" --state-dir {path.parent}" if path is not None else ""
    return (
        f"{what}; refusing to act on it: see what is missing with `flywheel state check{state_dir}`, "
        f"accept the database as it is with `flywheel state accept{state_dir} --yes --reason ...`"
    )
