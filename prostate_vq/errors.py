"""The one error type users see: the CLI prints it as a single line and exits with code 2."""

from __future__ import annotations

from pathlib import Path


class UserInputError(Exception):
    """Bad input from the user (a file, a folder, an option), never a bug in prostate-vq."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.message = message
        self.path = None if path is None else str(path)
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class DataError(UserInputError):
    """A data file or folder is missing, unreadable or inconsistent."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""
