"""onnxruntime inference of exported generators (``pyganx translate``); needs the
``cpu`` extra (onnxruntime) or the ``gpu`` extra (onnxruntime-gpu)."""
from .translator import Translator, collect_inputs, pick_providers, translate_files

__all__ = ["Translator", "collect_inputs", "pick_providers", "translate_files"]
