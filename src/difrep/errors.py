"""The errors difrep raises for mistakes in what a user asked for.

The command line prints a :class:`UserError` as a one-line message; any other exception is a bug in
difrep and keeps its traceback. Each subclass is also the built-in error a Python caller would expect
(``ValueError``, ``FileNotFoundError``, ``KeyError``), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input: an option, a file, a block number, a timestep. The message says what and how to fix it."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class MissingKeyError(UserError, KeyError):
    """Something asked for by name (a feature, a cache entry) is not there."""

    __str__ = Exception.__str__
