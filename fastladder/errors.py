"""Errors caused by what a user gave (an argument, a file, a dataset, a checkpoint), not by a bug.

Each message is one line that names the argument or the file. The ``fastladder`` command prints
such an error as that one line and exits with status 2; any other exception is a bug and keeps its
traceback. Each class is also a ValueError, so callers of the Python API can catch them as such.
"""

__all__ = ["FastladderError", "ArgumentError", "DataError", "CheckpointError"]


class FastladderError(ValueError):
    """Base class: a user's mistake, reported as one line naming the argument or the file."""


class ArgumentError(FastladderError):
    """An argument, option or config field out of range, of the wrong type, or inconsistent."""


class DataError(FastladderError):
    """A dataset file that is missing, unreadable, truncated or inconsistent (the message names it)."""


class CheckpointError(FastladderError):
    """A checkpoint or weights file that is missing, corrupt, not a checkpoint, or does not fit the model."""
