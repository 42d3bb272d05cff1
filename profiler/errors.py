"""One base for every error a user can cause and fix: each CLI catches exactly ``UserError``.

Anything else that escapes a command is a bug and keeps its traceback.
"""

from __future__ import annotations

from typing import Optional


class UserError(Exception):
    """A problem in the user's input or environment: ``message`` names file, field and value; ``fix`` says what to do.

    ``str(e)`` is the one line a CLI prints (the message, then the fix when one is given separately).
    """

    def __init__(self, message: str, fix: Optional[str] = None):
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return self.message + (f"; fix: {self.fix}" if self.fix else "")


class InputError(UserError, ValueError):
    """A bad value in a file or option that has no more specific error class."""


class WriteError(UserError, OSError):
    """An output could not be written (read-only folder, full disk, no permission); nothing was left behind."""


class LockedError(UserError, RuntimeError):
    """Another process is writing the same table, run directory or cache entry."""


class SetupError(UserError, RuntimeError):
    """Something a device's runtime needs is missing on this machine (a provider, CUDA, a child process)."""
