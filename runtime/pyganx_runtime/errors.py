"""The errors pyganx raises for problems a user can fix: a bad option, unreadable
data, a checkpoint or model that does not fit, a missing optional package.

Every one is a :class:`PyganxError`. The command line prints a ``PyganxError`` (and an
``OSError``) as one line; anything else is a bug or an environment problem, and is
reported with its exception type and a pointer to ``--debug``. ``pyganx.errors``
re-exports this module, so ``pyganx.errors.DataError is pyganx_runtime.errors.DataError``.
"""
from __future__ import annotations

import os


class PyganxError(Exception):
    """A problem with what the user asked for or gave, with a one-line message."""


class UsageError(PyganxError, ValueError):
    """An option or argument that cannot be used (a value out of range, a combination
    of flags that does not go together, an unknown name)."""


class DataError(PyganxError, ValueError):
    """Training or evaluation data that cannot be used (a missing folder, too few
    images, a layout pyganx does not know)."""


class ImageError(DataError):
    """An image that cannot be read or used; the message names the file (``path``,
    where known)."""

    def __init__(self, message: str, path: str | os.PathLike | None = None) -> None:
        super().__init__(message)
        self.path = path


class CheckpointError(PyganxError):
    """A checkpoint or run directory that cannot be read, or that does not fit the run
    or plugin it is loaded into."""


class PluginError(PyganxError):
    """A GAN variant (plugin) that is unknown or cannot be used: it fails to import,
    two distributions claim its name, or it was written for another plugin API."""


class ExportError(PyganxError):
    """A generator that cannot be exported to ONNX, or whose export does not check out
    against PyTorch."""


class ModelError(PyganxError):
    """An ONNX model that cannot be loaded or does not take what is given to it."""


class NoiseModelError(ModelError):
    """The model draws images from noise (inputs ``z``, and ``label``): it translates
    nothing. ``inputs`` and ``metadata`` say what it is."""

    def __init__(self, message: str, inputs: list[str], metadata: dict[str, str]) -> None:
        super().__init__(message)
        self.inputs = inputs
        self.metadata = metadata


class TrainingError(PyganxError):
    """Training that cannot go on (a loss that became NaN or infinite)."""


class DependencyError(PyganxError, ImportError):
    """An optional package a feature needs is not installed; the message says which
    ``pip install`` gives it."""


__all__ = ["CheckpointError", "DataError", "DependencyError", "ExportError", "ImageError", "ModelError",
           "NoiseModelError", "PluginError", "PyganxError", "TrainingError", "UsageError"]
