"""The generic training engine: any registered plugin, one loop (see trainer.py)."""
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .context import TrainContext, resolve_precision
from .trainer import TrainError, Trainer, TrainOptions, pick_device
from .run import LoadedRun, load_generator, load_run

__all__ = ["LoadedRun", "TrainContext", "TrainError", "TrainOptions", "Trainer", "latest_checkpoint",
           "load_checkpoint", "load_generator", "load_run", "pick_device", "resolve_precision",
           "save_checkpoint"]
