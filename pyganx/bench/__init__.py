"""Benchmark harness: round-robin timing and the op/network suites behind `pyganx bench`."""
from .timing import Timing, round_robin

__all__ = ["Timing", "round_robin"]
