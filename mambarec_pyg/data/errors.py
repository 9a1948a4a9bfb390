"""The error (and warning) raised for input data that is not what the library expects.

:class:`DataError` is defined with the library's other errors
(:mod:`mambarec_pyg.errors`) and importable from here as well.
"""
from __future__ import annotations

from ..errors import DataError

__all__ = ['DataError', 'DataWarning']


class DataWarning(UserWarning):
    """Input data was repaired on load (duplicates dropped, users left out of
    evaluation); the message says what and how much."""
