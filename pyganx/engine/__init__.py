"""The generic training engine: any registered plugin, one loop (trainer.py), and
reading trained runs back (run.py)."""
from ..errors import TrainError
from .checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from .context import TrainContext, resolve_precision
from .device import pick_device
from .options import TrainOptions
from .run import LoadedRun, load_generator, load_run
from .trainer import Trainer

__all__ = ["LoadedRun", "TrainContext", "TrainError", "TrainOptions", "Trainer", "latest_checkpoint",
           "list_checkpoints", "load_checkpoint", "load_generator", "load_run", "pick_device",
           "resolve_precision", "save_checkpoint"]
