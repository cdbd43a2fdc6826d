"""The one exception the data package raises for bad data or bad data settings."""
from __future__ import annotations


class DataError(ValueError):
    """Malformed data or data configuration; the message names the file/key and the problem."""
