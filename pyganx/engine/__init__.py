"""The generic training engine: any registered plugin, one loop (see trainer.py)."""
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .context import TrainContext, resolve_precision
from .trainer import TrainError, Trainer, TrainOptions, pick_device

__all__ = ["TrainContext", "TrainError", "TrainOptions", "Trainer", "latest_checkpoint",
           "load_checkpoint", "pick_device", "resolve_precision", "save_checkpoint"]
