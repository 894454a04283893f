"""``pyganx sample RUN_DIR``: a trained run's generators applied to its test images.

Writes ``grid.png`` (the plugin's named sample rows, one row each) and every image of
every row as its own PNG under ``<row name>/``, into ``-o DIR`` (default
``RUN_DIR/generated/step-N``). Its arguments are generated from :class:`SampleOptions`
(pyganx.flags).
"""
from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data.folders import spread
from ..data.images import save_image, to_pil
from ..errors import PluginError, UsageError, values_refused_by
from ..flags import option
from .batches import to_device
from .reporting import save_grid
from .run import load_run


@dataclass
class SampleOptions:
    run: str = field(metadata={"help": "run directory (or one checkpoint in it)", "positional": True,
                               "metavar": "RUN_DIR"})
    out: str | None = option(None, "output folder (default: RUN_DIR/generated/step-N)", flags=("-o",))
    n: int = option(8, "test items to sample")
    label: str | None = option(None, "class name or index, for conditional variants")
    domain: str | None = option(None, "target domain name, for multi-domain variants")
    device: str | None = option(None, "cuda, mps or cpu (default: the first available)")

    def check(self) -> None:
        """A UsageError for options that cannot make samples."""
        if self.n < 1:
            raise UsageError(f"--n must be at least 1, got {self.n}")


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "row"


def sample_run(options: SampleOptions) -> tuple[Path, dict[str, int]]:
    """Samples ``options.n`` test items of ``options.run`` through the run's plugin; the
    conditions ``label`` and ``domain`` go to plugins whose ``sample`` accepts them.
    Returns the output folder and the number of images written per row."""
    options.check()
    run = load_run(options.run, device=options.device)
    conditions = {k: v for k, v in (("label", options.label), ("domain", options.domain)) if v is not None}
    params = inspect.signature(run.plugin.sample).parameters
    for k in conditions:
        if k not in params:
            raise UsageError(f"{run.name} samples take no --{k}")
    test = run.data().test
    items = [test[i] for i in spread(range(len(test)), options.n)]
    batch = to_device(torch.utils.data.default_collate(items), run.device)
    with torch.no_grad(), values_refused_by(run.name):
        rows = run.plugin.sample(batch, **conditions)
    if not rows:
        raise PluginError(f"{run.name} returned no sample rows")
    folder = Path(options.out) if options.out else run.run_dir / "generated" / f"step-{run.step:09d}"
    counts = {}
    for name, images in rows.items():
        d = folder / _slug(name)
        for i, t in enumerate(images):
            save_image(to_pil(t), d / f"{i:04d}.png")
        counts[name] = len(images)
    save_grid(rows, folder / "grid.png")
    return folder, counts


__all__ = ["SampleOptions", "sample_run"]
