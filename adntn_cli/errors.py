"""adntn's error types. Each says what is wrong, where, and what would be valid.

User errors (bad recipe, file, arguments) are ``AdntnError`` subclasses and ValueErrors; the CLI
prints them in one or two lines and exits with code 2. Anything else is an internal failure (1).
"""

from __future__ import annotations

__all__ = [
    "AdntnError",
    "DataError",
    "ModelError",
    "RecipeError",
    "RunDirError",
    "RunInterrupted",
    "SelectionError",
    "TrainingDivergedError",
]


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
