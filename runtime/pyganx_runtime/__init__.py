"""pyganx-runtime: image translators exported by ``pyganx export``, run with onnxruntime
and served over HTTP, without torch.

``Translator`` runs one model on numpy arrays or PIL images; ``translate_files`` runs it
over files and folders; ``pyganx_runtime.serve`` is the HTTP service (the ``serve``
extra); ``pyganx_runtime.triton`` writes Triton model repositories. The
``pyganx-runtime`` command offers ``translate``, ``serve`` and ``triton-repository``.
"""
from ._version import __version__
from .errors import ModelError, NoiseModelError, PyganxError
from .translator import ForeignModelWarning, Translator, collect_inputs, pick_providers, translate_files

__all__ = ["ForeignModelWarning", "ModelError", "NoiseModelError", "PyganxError", "Translator", "__version__",
           "collect_inputs", "pick_providers", "translate_files"]
