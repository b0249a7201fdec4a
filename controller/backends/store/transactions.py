"""Grouping calls into one transaction, closing the store, and the controller-wide settings it keeps.

:class:`Transactions` is for any part that must write several records all or
nothing (the webhook receiver's group commit, the Slack button's decision,
the engine's transitions). :class:`Meta` keeps the few settings that belong
to the whole controller (which repository and release branch it watches);
no record of any one object lives there.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol

__all__ = ["Meta", "Transactions"]


class Transactions(Protocol):
    def transaction(self) -> AbstractContextManager[None]:
        """Run the calls made inside the block in one transaction; nested blocks join the outer one."""
        ...

    def ping(self) -> None:
        """A cheap read; raises when the database does not answer (health checks)."""
        ...

    def close(self) -> None: ...


class Meta(Protocol):
    """Controller-wide settings, by name."""

    def get_meta(self, key: str) -> str | None: ...

    def set_meta(self, key: str, value: str) -> None: ...
