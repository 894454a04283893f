"""The errors pyganx raises for problems a user can fix (see pyganx_runtime.errors,
which defines them so that the torch-free runtime raises the same classes), and
:func:`values_refused_by`, which turns a plugin's refusal into one of them.

``TrainError``, the one error class of earlier releases, is kept as an alias of
:class:`PyganxError` for one release: ``except TrainError`` still catches everything
pyganx raises for a user's input.
"""
import contextlib
from collections.abc import Iterator

from pyganx_runtime.errors import (
                                   CheckpointError,
                                   DataError,
                                   DependencyError,
                                   ExportError,
                                   ImageError,
                                   ModelError,
                                   NoiseModelError,
                                   PluginError,
                                   PyganxError,
                                   TrainingError,
                                   UsageError,
)

TrainError = PyganxError


@contextlib.contextmanager
def values_refused_by(name: str) -> Iterator[None]:
    """Within the block, a ValueError the plugin ``name`` raises (a config value its
    constructor refuses, an unknown ``--label`` for ``sample``) is a UsageError that
    names the plugin: a one-line message for the user, not a bug report."""
    try:
        yield
    except UsageError:
        raise
    except ValueError as e:
        raise UsageError(f"{name}: {e}") from None

__all__ = ["CheckpointError", "DataError", "DependencyError", "ExportError", "ImageError", "ModelError",
           "NoiseModelError", "PluginError", "PyganxError", "TrainError", "TrainingError", "UsageError",
           "values_refused_by"]
