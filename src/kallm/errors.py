"""Exceptions that the CLI turns into one clear line on stderr instead of a traceback."""

from __future__ import annotations


class KallmError(ValueError):
    """A user-facing error: bad input, a missing file, an unsupported model.

    Subclasses ValueError so that library users can catch bad input the usual way.
    """


class ConfigError(KallmError):
    """An invalid configuration value, with the key (and file line, when known) that caused it."""
