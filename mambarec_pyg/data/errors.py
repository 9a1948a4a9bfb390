"""The error (and warning) raised for input data that is not what the library expects."""
from __future__ import annotations


class DataError(ValueError):
    """An input file or data object is malformed.

    The message names the file, and the line, column or field at fault, together with
    what was expected and what was found.
    """


class DataWarning(UserWarning):
    """Input data was repaired on load (duplicates dropped, users left out of
    evaluation); the message says what and how much."""

