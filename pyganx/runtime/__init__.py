"""onnxruntime inference of exported generators (``pyganx translate``); needs the
``cpu`` extra (onnxruntime) or the ``gpu`` extra (onnxruntime-gpu)."""
from .translator import NoiseModelError, Translator, collect_inputs, pick_providers, translate_files

__all__ = ["NoiseModelError", "Translator", "collect_inputs", "pick_providers", "translate_files"]
