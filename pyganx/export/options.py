"""The options of an export, one typed dataclass: ``pyganx export``'s arguments are
generated from its fields (pyganx.flags), and ``export_generator`` takes it (or its
fields as keyword arguments)."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UsageError
from ..flags import option
from ..nn.foreign import FORMAT_PROJECTS


@dataclass
class ExportOptions:
    source: str = field(metadata={"help": "run directory or one checkpoint", "positional": True,
                                  "metavar": "RUN_DIR|CHECKPOINT"})
    out: str = field(metadata={"help": "the .onnx file to write", "flags": ("-o",), "required": True})
    generator: str | None = option(None, "an export spec or network name (default: the plugin's first)")
    static: bool = option(False, "fixed 1 x C x S x S input instead of dynamic N, H, W")
    with_preprocessing: bool = option(False, "uint8 NHWC images in and out, any H and W; scaling and padding "
                                             "in the graph")
    fp16: bool = option(False, "half-precision weights and compute (GPU deployment), float32 in/out")
    int8: bool = option(False, "onnxruntime static int8 quantisation of the convolutions (CPU deployment)")
    calibrate: str | None = option(None, "sample images for --int8", metavar="DIR")
    winograd: bool = option(False, "3x3 convolutions as Winograd F(4x4, 3x3) in standard ops: faster on "
                                   "onnxruntime's CPU provider, not on GPUs (docs/export.md)")
    from_format: str | None = option(None, "SOURCE is a generator checkpoint saved by this other code base",
                                     flag="--from", choices=list(FORMAT_PROJECTS))
    domains: tuple[str, ...] | None = option(None, "with --from yunjey-stargan: the names of the generator's "
                                                   "labels, in order", metavar="A,B,...")
    image_size: int | None = option(None, "the size the model is checked at and records (default: the run's; "
                                          "with --from 256 for CycleGAN, 128 for StarGAN)")

    def check(self) -> None:
        """A UsageError for flags that do not combine."""
        if self.int8 and not self.calibrate:
            raise UsageError("--int8 needs --calibrate DIR: sample images to calibrate the activations on")
        if self.fp16 and self.int8:
            raise UsageError("--fp16 and --int8 are alternatives (half precision for GPUs, int8 for CPUs): "
                             "export one of them")
        if self.int8 and self.with_preprocessing:
            raise UsageError("--int8 with --with-preprocessing is not supported yet: export one or the other")
        if self.winograd and (self.fp16 or self.int8):
            raise UsageError("--winograd is a float32 graph for onnxruntime's CPU provider: it does not "
                             "combine with --fp16 (GPUs) or --int8 (which quantises convolutions)")
        if self.domains and not self.from_format:
            raise UsageError("--domains names the labels of a --from yunjey-stargan generator; a pyganx "
                             "run knows its own")


__all__ = ["ExportOptions"]
