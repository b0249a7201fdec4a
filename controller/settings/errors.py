"""The error every setting raises, :class:`SettingsError`: in a module below the settings that raise it."""

from __future__ import annotations

__all__ = ["SettingsError"]


class SettingsError(ValueError):
    """A setting is missing or malformed; the message is one line naming the variable."""
