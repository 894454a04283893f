"""The models the torch-free runtime tests run (runtime/tests), exported by pyganx here:

- ``digits.onnx``: a grey CycleGAN translator trained two steps on the bundled digits;
- ``faces.onnx``: a colour StarGAN generator in the layout of StarGAN's own code base
  (yunjey/stargan), three domains, exported with ``--from yunjey-stargan``;
- ``noise.onnx``: a DCGAN noise model;
- ``inputs/``: a few images of odd sizes and modes, and ``reference/``: what
  ``pyganx translate digits.onnx inputs`` writes for them.

``python tests/runtime_models.py DIR`` writes them into DIR (``make runtime-test`` does,
with the main environment, before the tests run in the torch-free one).
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
NAMES = ("digits", "faces", "noise")


def _inputs(folder: Path) -> None:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, (h, w), mode in (("a.png", (32, 32), "L"), ("b.png", (45, 38), "RGB"), ("c.jpg", (64, 50), "RGB"),
                               ("d.png", (33, 40), "RGBA")):
        arr = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
        Image.fromarray(arr, "RGBA").convert(mode).save(folder / name)


def export_models(folder: str | Path) -> dict[str, Path]:
    """Writes the models, inputs and reference translations into ``folder``; returns the
    model paths by name."""
    import torch

    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    from foreign.yunjey_stargan import Generator

    from pyganx.cli import main as cli_main

    tmp = Path(folder)
    tmp.mkdir(parents=True, exist_ok=True)
    run = tmp / "cg"
    assert cli_main(["train", "cyclegan", "--demo", "digits", "--steps", "2", "-o", str(run), "--ngf", "8",
                     "--ndf", "8", "--n-blocks", "2", "--no-progress"]) == 0
    assert cli_main(["export", str(run), "-o", str(tmp / "digits.onnx")]) == 0
    torch.manual_seed(0)
    theirs = Generator(conv_dim=8, c_dim=3, repeat_num=2)
    with torch.no_grad():               # away from the init, so that the domains differ visibly
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    torch.save(theirs.state_dict(), tmp / "G.ckpt")
    assert cli_main(["export", str(tmp / "G.ckpt"), "--from", "yunjey-stargan", "--image-size", "32",
                     "--domains", "happy,sad,angry", "-o", str(tmp / "faces.onnx")]) == 0
    dc = tmp / "dc"
    assert cli_main(["train", "dcgan", "--demo", "digits", "--steps", "1", "-o", str(dc), "--ngf", "8",
                     "--ndf", "8", "--z-dim", "8", "--batch-size", "4", "--no-progress"]) == 0
    assert cli_main(["export", str(dc), "-o", str(tmp / "noise.onnx")]) == 0
    _inputs(tmp / "inputs")
    assert cli_main(["translate", str(tmp / "digits.onnx"), str(tmp / "inputs"), "-o", str(tmp / "reference"),
                     "--no-progress", "--device", "cpu"]) == 0
    return {n: tmp / f"{n}.onnx" for n in NAMES}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} DIR")
    export_models(sys.argv[1])
    print(f"wrote {', '.join(NAMES)} models, inputs/ and reference/ into {sys.argv[1]}")
