"""The errors pyganx raises for problems a user can fix (see pyganx_runtime.errors,
which defines them so that the torch-free runtime raises the same classes).

``TrainError``, the one error class of earlier releases, is kept as an alias of
:class:`PyganxError` for one release: ``except TrainError`` still catches everything
pyganx raises for a user's input.
"""
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

__all__ = ["CheckpointError", "DataError", "DependencyError", "ExportError", "ImageError", "ModelError",
           "NoiseModelError", "PluginError", "PyganxError", "TrainError", "TrainingError", "UsageError"]
