"""Errors that end a command with one clear line (``vasp X: error: ...``) rather than a traceback.

Bad input or config raise ``ValueError`` / ``FileNotFoundError``; the machine or a concurrent run
raise the two below. :data:`CLEAR_ERRORS` is what the CLI and the ``spark-submit`` entry points
print as one line (the traceback only at ``VASP_LOG_LEVEL=DEBUG``).
"""

from __future__ import annotations


class OutOfSpace(OSError):
    """A write ran out of space: nothing was published and the staging directory was removed."""


class DateLocked(RuntimeError):
    """Another run of the same stage and date holds its lock."""


class TrackingServerError(ConnectionError):
    """The tracking server could not be reached (or refused us) during a step: one line says which and what."""


CLEAR_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    OutOfSpace,
    DateLocked,
    TrackingServerError,
)
