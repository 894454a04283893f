"""What a run writes for people to look at: losses.csv and losses.png, TensorBoard
scalars (when TensorBoard is installed), the progress bar (plain lines when stderr is
not a terminal), and sample grids."""
from __future__ import annotations

import csv
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

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


def _clock_text(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class LineProgress:
    """Progress for a log file rather than a terminal: a plain line (no carriage return)
    when a further 5 % of the steps is done or ``every`` seconds have passed since the
    last line, whichever comes first, and at the last step::

        step 120/2000 (6%), 3.52 it/s, 0:00:34 elapsed, 0:08:54 left; G 1.234, D 0.456
    """

    def __init__(self, total: int, initial: int = 0, every: float = 60.0, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.first, self.step, self.every = total, initial, initial, every
        self.stream, self.clock = stream, clock
        self.stride = max(1, math.ceil(total / 20))          # 5 % of the steps
        self.start = self.last_time = clock()
        self.next_step = (initial // self.stride + 1) * self.stride
        self.printed = initial        # the step of the last line
        self.losses: dict[str, float] = {}

    def update(self, step: int, losses: dict[str, float]) -> None:
        self.step, self.losses = step, losses
        now = self.clock()
        if step >= self.next_step or step >= self.total or now - self.last_time >= self.every:
            self._line(now)

    def _line(self, now: float) -> None:
        elapsed = now - self.start
        rate = (self.step - self.first) / elapsed if elapsed > 0 else 0.0
        left = f", {_clock_text((self.total - self.step) / rate)} left" if rate > 0 else ""
        losses = ", ".join(f"{k} {v:.3f}" for k, v in self.losses.items())
        print(f"step {self.step}/{self.total} ({100 * self.step // max(1, self.total)}%), {rate:.2f} it/s, "
              f"{_clock_text(elapsed)} elapsed{left}" + (f"; {losses}" if losses else ""),
              file=self.stream or sys.stderr, flush=True)
        self.last_time, self.printed = now, self.step
        self.next_step = (self.step // self.stride + 1) * self.stride

    def close(self) -> None:
        """A last line for steps done since the last one (a run that stopped early)."""
        if self.step > self.printed:
            self._line(self.clock())


class LossLog:
    """The losses of every step: a row of ``RUN/losses.csv`` (flushed at once),
    TensorBoard scalars under ``RUN/tb`` and the progress figures (tqdm's bar when stderr
    is a terminal, else :class:`LineProgress`'s lines: tqdm would write every refresh of
    the bar into a log file, as one line of carriage returns). Opened at
    ``step`` of ``total``; ``resumed`` drops rows past ``step`` first."""

    def __init__(self, run: Path, step: int, total: int, resumed: bool, progress: bool) -> None:
        self.run = run
        self.csv_path = run / "losses.csv"
        if resumed:
            drop_rows_after(self.csv_path, step)
        self._file = open(self.csv_path, "a", newline="")
        self._csv: csv.DictWriter | None = None
        self.bar = None                             # tqdm's, on a terminal
        self.lines: LineProgress | None = None      # else plain lines
        self.tb = None
        try:
            isatty = getattr(sys.stderr, "isatty", None)
            if progress and isatty is not None and isatty():
                from tqdm import tqdm
                self.bar = tqdm(total=total, initial=step, unit="it", dynamic_ncols=True)
            elif progress:
                self.lines = LineProgress(total, step)
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
        if self.lines is not None:
            self.lines.update(step, losses)

    def plot(self) -> None:
        """TensorBoard flushed, and losses.png drawn from the CSV so far."""
        if self.tb is not None:
            self.tb.flush()
        plot_losses(self.csv_path, self.run / "losses.png")

    def close(self) -> None:
        self._file.close()
        if self.bar is not None:
            self.bar.close()
        if self.lines is not None:
            self.lines.close()
        if self.tb is not None:
            self.tb.close()


__all__ = ["LineProgress", "LossLog", "drop_rows_after", "plot_losses", "save_grid", "tensorboard_writer"]
