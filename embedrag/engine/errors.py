"""Domain errors. The CLI turns each into one line and a non-zero exit; a notebook sees
an ordinary exception with the same message."""

from __future__ import annotations


class EmbedragError(Exception):
    """Base class of every error embedrag reports to a user as a one-line message."""

    exit_code = 2


class ModelNotFoundError(EmbedragError):
    """A model name or path resolved nowhere."""


class DataError(EmbedragError):
    """Input data violates the data contract. ``problems`` holds every problem found
    (``FILE:LINE: what is wrong``), the message the first of them."""

    def __init__(self, problems: list[str], *, truncated: int = 0):
        self.problems = list(problems)
        self.truncated = truncated
        first = self.problems[0] if self.problems else "invalid data"
        more = len(self.problems) - 1 + truncated
        super().__init__(first if more == 0 else f"{first} (and {more} more problem(s))")


class ConfigError(EmbedragError):
    """Options that cannot work together, or a value out of range."""


class TrainingInterrupted(EmbedragError):
    """Training stopped on request (Ctrl-C) after saving a resumable checkpoint."""

    exit_code = 130
