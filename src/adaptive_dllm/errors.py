"""User-facing errors.

Every problem a user can fix (bad path, bad option, wrong shape of an importance file, ...)
raises :class:`AdllmError` with a one-line message that names the offending value and the fix.
The CLI prints such errors as one line and exits with status 2; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations


class AdllmError(ValueError):
    """A problem with the user's input, explained in one line."""


class CheckpointError(AdllmError):
    """A checkpoint directory is missing, incomplete or malformed."""
