"""The options of an export, one typed dataclass: ``pyganx export``'s arguments are
generated from its fields (pyganx.flags), and ``export_generator`` takes it (or its
fields as keyword arguments)."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pyganx_runtime import triton as triton_repo

from ..errors import UsageError
from ..flags import flag_name, option
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
    triton_repository: str | None = option(None, "also write the model into this Triton model repository "
                                                 "(DIR/NAME/config.pbtxt, DIR/NAME/1/model.onnx)", metavar="DIR")
    triton_name: str | None = option(None, "the model's name in --triton-repository (default: --out's file name "
                                           "without .onnx); an existing model of that name is replaced",
                                    metavar="NAME")
    triton_max_batch_size: int = option(triton_repo.DEFAULT_MAX_BATCH_SIZE, "with --triton-repository: the largest "
                                        "batch Triton's dynamic batcher forms (0: none; --static: always 0)",
                                        metavar="N")
    triton_instance_group: str = option(triton_repo.DEFAULT_INSTANCE_KIND, "with --triton-repository: where the "
                                        "instances run", choices=list(triton_repo.INSTANCE_KINDS))
    triton_instance_count: int = option(triton_repo.DEFAULT_INSTANCE_COUNT, "with --triton-repository: model "
                                        "instances (per GPU on GPUs)", metavar="N")

    def triton_model_name(self) -> str:
        """The model's name in --triton-repository."""
        return self.triton_name if self.triton_name is not None else Path(self.out).stem

    def triton_settings(self) -> dict[str, Any]:
        """``pyganx_runtime.triton.write_repository``'s settings from the --triton-* flags."""
        return {"max_batch_size": self.triton_max_batch_size, "instance_kind": self.triton_instance_group,
                "instance_count": self.triton_instance_count}

    def check(self) -> None:
        """A UsageError for flags that do not combine."""
        self._check_triton()
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

    def _check_triton(self) -> None:
        """The --triton-* flags: settings write_repository takes, and only with --triton-repository."""
        if self.triton_repository is None:
            given = [flag_name(f.name) for f in fields(self) if f.name.startswith("triton_")
                     and getattr(self, f.name) != f.default]
            if given:
                raise UsageError(f"{', '.join(given)}: only with --triton-repository DIR, the Triton model "
                                 f"repository that these flags set up")
            return
        try:
            triton_repo.check_settings(self.triton_model_name(), **self.triton_settings())
        except UsageError as e:
            raise UsageError(f"--triton-repository: {e}") from None


__all__ = ["ExportOptions"]
