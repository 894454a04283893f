"""The options of ``pyganx eval``, one typed dataclass whose fields its arguments are
generated from (pyganx.flags): a trained run's quality figures, or FID and KID of two
image folders."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UsageError
from ..flags import option


@dataclass
class EvalOptions:
    run: str | None = field(default=None, metadata={"help": "run directory (or one checkpoint in it)",
                                                    "positional": True, "metavar": "RUN_DIR"})
    real: str | None = option(None, "with --fake: FID and KID of the images of two folders", metavar="DIR")
    fake: str | None = option(None, "the generated images, against --real", metavar="DIR")
    inception_weights: str | None = option(None, "pt_inception-2015-12-05-6726825d.pth (pytorch-fid's FID "
                                                 "Inception weights; default: $PYGANX_INCEPTION_WEIGHTS): adds "
                                                 "FID and KID on its features", metavar="PATH")
    inception_resize: str = option("pytorch-fid", "how images reach 299x299: bilinear as pytorch-fid, or PIL "
                                                  "bicubic as Clean-FID", choices=["pytorch-fid", "clean"])
    kid_subsets: int = option(100, "KID on Inception features: random subsets")
    kid_subset_size: int = option(1000, "KID: images per subset")
    batch_size: int = option(50, "images per Inception run")
    skip_bad_images: bool = option(False, "--real/--fake: warn about unreadable images and leave them out")
    out: str | None = option(None, "--real/--fake: also write the figures here", flags=("-o",),
                             metavar="FILE.json")
    model: str | None = option(None, "judge this model exported from the run instead of its PyTorch generator",
                               metavar="MODEL.onnx")
    all_checkpoints: bool = option(False, "evaluate every kept checkpoint: the figures over training "
                                          "(eval-checkpoints.json/.png)")
    device: str | None = option(None, "cuda, mps or cpu (default: the first available)")

    @property
    def folders(self) -> bool:
        """Whether this evaluates two image folders (--real, --fake) rather than a run."""
        return bool(self.real or self.fake)

    def check(self) -> None:
        """A UsageError for arguments that do not combine: RUN_DIR or --real and --fake;
        --out with the folders; --all-checkpoints without --model."""
        if self.folders and (self.run or not (self.real and self.fake)):
            raise UsageError("give RUN_DIR, or --real DIR and --fake DIR (two image folders), not both")
        if not self.folders and not self.run:
            raise UsageError("give RUN_DIR, or --real DIR --fake DIR")
        if self.out and not self.folders:
            raise UsageError("--out names the JSON file of --real/--fake; a run's figures go to RUN_DIR/eval.json")
        if not self.folders and self.all_checkpoints and self.model:
            raise UsageError("--all-checkpoints evaluates the run's checkpoints, not a --model")


__all__ = ["EvalOptions"]
