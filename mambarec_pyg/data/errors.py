"""The error (and warning) raised for input data that is not what the library expects."""
from __future__ import annotations

import difflib
from typing import Iterable


class DataError(ValueError):
    """An input file or data object is malformed.

    The message names the file, and the line, column or field at fault, together with
    what was expected and what was found.
    """


class DataWarning(UserWarning):
    """Input data was repaired on load (duplicates dropped, users left out of
    evaluation); the message says what and how much."""


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest candidate, or ``''``."""
    candidates = list(candidates)
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    if not close:  # case-insensitive fallback: 'userid' -> 'userID'
        lowered = {c.lower(): c for c in candidates}
        if name.lower() in lowered:
            close = [lowered[name.lower()]]
    return f"; did you mean '{close[0]}'?" if close else ''
