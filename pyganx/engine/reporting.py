"""What a run writes for people to look at: losses.csv and losses.png, TensorBoard
scalars (when TensorBoard is installed), the progress bar, and sample grids."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import torch

from pyganx_runtime.files import atomic_write_bytes

from ..data.images import to_pil


def save_grid(rows: dict[str, torch.Tensor], path: Path) -> None:
    """One row per entry of ``rows`` (each (N, C, H, W) in [-1, 1]), written atomically."""
    from PIL import Image

    tiles = [[to_pil(t) for t in row] for row in rows.values()]
    n = max(len(r) for r in tiles)
    w, h = tiles[0][0].size
    mode = "RGB" if any(t.mode == "RGB" for r in tiles for t in r) else "L"
    grid = Image.new(mode, (n * w, len(tiles) * h))
    for i, r in enumerate(tiles):
        for j, t in enumerate(r):
            grid.paste(t.convert(mode), (j * w, i * h))
    atomic_write_bytes(path, lambda f: grid.save(f, format="PNG"))


def plot_losses(csv_path: Path, png_path: Path) -> None:
    """The losses of ``csv_path`` over the steps (smoothed), as a PNG; nothing without
    matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    keys = [k for k in rows[0] if k not in ("step", "epoch", "seconds")]
    steps = [int(r["step"]) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    for k in keys:
        vals = np.array([float(r[k]) if r[k] else np.nan for r in rows])
        win = max(1, len(vals) // 50)
        smooth = np.convolve(np.nan_to_num(vals), np.ones(win) / win, mode="same") if win > 1 else vals
        ax.plot(steps, smooth, label=k, linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write_bytes(png_path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def drop_rows_after(csv_path: Path, step: int) -> None:
    """On resume: forget logged steps past the checkpoint (a run killed between
    checkpoints logged steps that will now be trained again)."""
    if not csv_path.is_file():
        return
    with open(csv_path, newline="") as f:
        lines = f.read().splitlines(keepends=True)
    keep = lines[:1] + [ln for ln in lines[1:] if ln.split(",", 1)[0].isdigit()
                        and int(ln.split(",", 1)[0]) <= step]
    if len(keep) != len(lines):
        atomic_write_bytes(csv_path, lambda f: f.write("".join(keep).encode()))


def tensorboard_writer(log_dir: Path):
    """A SummaryWriter into ``log_dir`` when TensorBoard is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    except Exception as e:  # noqa: BLE001 - installed but broken: train without it, say so once
        print(f"pyganx: not logging to TensorBoard: it does not import ({type(e).__name__}: {e})",
              file=sys.stderr)
        return None
    return SummaryWriter(log_dir=str(log_dir))


class LossLog:
    """The losses of every step: a row of ``RUN/losses.csv`` (flushed at once),
    TensorBoard scalars under ``RUN/tb`` and the progress bar's figures. Opened at
    ``step`` of ``total``; ``resumed`` drops rows past ``step`` first."""

    def __init__(self, run: Path, step: int, total: int, resumed: bool, progress: bool) -> None:
        self.run = run
        self.csv_path = run / "losses.csv"
        if resumed:
            drop_rows_after(self.csv_path, step)
        self._file = open(self.csv_path, "a", newline="")
        self._csv: csv.DictWriter | None = None
        self.bar = None
        self.tb = None
        try:
            if progress:
                from tqdm import tqdm
                self.bar = tqdm(total=total, initial=step, unit="it", dynamic_ncols=True)
            self.tb = tensorboard_writer(run / "tb")
        except BaseException:
            self.close()
            raise

    def log(self, step: int, epoch: int, seconds: float, losses: dict[str, float]) -> None:
        if self._csv is None:
            self._csv = csv.DictWriter(self._file, ["step", "epoch", "seconds", *losses])
            if self.csv_path.stat().st_size == 0:
                self._csv.writeheader()
        self._csv.writerow({"step": step, "epoch": epoch, "seconds": round(seconds, 3), **losses})
        self._file.flush()
        if self.tb is not None:
            for k, v in losses.items():
                self.tb.add_scalar(f"loss/{k}", v, step)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()}, refresh=False)

    def plot(self) -> None:
        """TensorBoard flushed, and losses.png drawn from the CSV so far."""
        if self.tb is not None:
            self.tb.flush()
        plot_losses(self.csv_path, self.run / "losses.png")

    def close(self) -> None:
        self._file.close()
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()


__all__ = ["LossLog", "drop_rows_after", "plot_losses", "save_grid", "tensorboard_writer"]
