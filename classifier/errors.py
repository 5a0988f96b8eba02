"""Errors that ``classifier`` raises, each with a message a user can act on.

Callers (the worker, the web app, the CLI) show ``str(error)`` to people, so every
message says what was wrong and what to do about it. Tracebacks are for logs.
"""

from __future__ import annotations


class ClassifierError(Exception):
    """Base class: anything ``classifier`` refuses to do, in words."""


class InvalidImageError(ClassifierError, ValueError):
    """The bytes are not an image we can read (corrupt, truncated, unsupported, too big)."""


class DatasetError(ClassifierError):
    """The dataset cannot be trained on (too few classes or images, missing folder...)."""


class WeightsUnavailableError(ClassifierError):
    """Pretrained weights could not be loaded or downloaded."""


class TrainingCancelled(ClassifierError):
    """The caller's ``should_stop`` check asked training to stop."""


class ArtifactError(ClassifierError):
    """A model version directory is missing files or fails its checksums."""
