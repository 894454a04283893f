"""ONNX export of trained generators (``pyganx export``); needs the ``cpu`` or ``gpu`` extra."""
from pyganx_runtime.metadata import read_metadata

from .convert import custom_domains
from .exporter import ExportResult, export_generator
from .options import ExportOptions
from .wrappers import size_multiple

__all__ = ["ExportOptions", "ExportResult", "custom_domains", "export_generator", "read_metadata", "size_multiple"]
