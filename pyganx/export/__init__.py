"""ONNX export of trained generators (``pyganx export``); needs the ``cpu`` or ``gpu`` extra."""
from .exporter import ExportResult, custom_domains, export_generator, read_metadata, size_multiple

__all__ = ["ExportResult", "custom_domains", "export_generator", "read_metadata", "size_multiple"]
