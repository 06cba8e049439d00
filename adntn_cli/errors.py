"""adntn's error types. Each says what is wrong, where, and what would be valid.

User errors (bad recipe, file, arguments) are ``AdntnError`` subclasses and ValueErrors; the CLI
prints them in one or two lines and exits with code 2. Anything else is an internal failure (1).
"""

from __future__ import annotations

import reprlib
from typing import Any

__all__ = [
    "AdntnError",
    "CheckpointError",
    "DataError",
    "DiskFullError",
    "ModelError",
    "RecipeError",
    "RunDirError",
    "RunInterrupted",
    "SelectionError",
    "TrainingDivergedError",
    "UnsafeFileError",
    "WriteError",
    "brief",
    "one_line",
]

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 40


def brief(value: Any) -> str:
    """``repr(value)`` cut to a readable length: values quoted in messages come from users."""
    return _REPR.repr(value)


def one_line(err: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): how a
    failure of a library (a compiler, an exporter) is quoted in a one-line error."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class AdntnError(ValueError):
    """A problem with the user's input."""


class RecipeError(AdntnError):
    """A recipe that cannot be read or does not validate; the message names file and YAML path."""


class SelectionError(RecipeError):
    """A layer selector that matches nothing; the message lists the closest real names."""


class ModelError(AdntnError):
    """A model that cannot be built or loaded as asked."""


class DataError(AdntnError):
    """A data source that cannot be found or read."""


class UnsafeFileError(ModelError):
    """A file over adntn's size limits (safetensors header or metadata): refused unparsed."""


class CheckpointError(AdntnError):
    """A checkpoint that cannot be read, or that does not fit the model the recipe builds."""


class WriteError(AdntnError):
    """An output that could not be written (permissions, a missing disk); nothing half-written
    is left behind."""

    def __init__(self, message: str, path: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.path, self.errno = path, errno


class DiskFullError(WriteError):
    """No space left on the device: the temporary file was removed and the previous file, if
    any, is intact."""


class RunDirError(AdntnError):
    """An output directory that exists and is not empty, without --resume or --force."""


class TrainingDivergedError(AdntnError):
    """A NaN or inf loss; the last good checkpoint is kept and named in the message."""


class RunInterrupted(Exception):
    """Ctrl-C or SIGTERM during a run: the checkpoint was saved first (exit code 130)."""

    def __init__(self, step: int, checkpoint: str, signal_name: str) -> None:
        super().__init__(
            f"{signal_name} at step {step}: checkpoint saved to {checkpoint}; "
            "continue with --resume"
        )
        self.step, self.checkpoint = step, checkpoint
