"""What the variant tests share: small networks' flags and a few CLI training steps."""
from __future__ import annotations

from pyganx.cli import main as cli_main
from pyganx.engine import latest_checkpoint, load_checkpoint

DC = ["--ngf", "8", "--ndf", "8", "--z-dim", "16", "--batch-size", "8", "--no-progress"]
SG = ["--g-conv-dim", "8", "--d-conv-dim", "8", "--g-blocks", "1", "--batch-size", "4", "--no-progress"]


def _train(variant, out, steps, *extra):
    assert cli_main(["train", variant, "--demo", "digits", "--steps", str(steps), "-o", str(out), *extra]) == 0
    return load_checkpoint(latest_checkpoint(out / "checkpoints"))
