"""The metadata keys of models written by ``pyganx export``: the one list the exporter
writes and the runtime reads (docs/export.md describes each).

``check`` is what the runtime does with a model's metadata before it runs it: a model
from a newer pyganx that carries keys this runtime does not know is refused with a
message naming both versions, because those keys may change how the model must be fed.
"""
from __future__ import annotations

import os
import re

from ._version import __version__
from .errors import ModelError

PREFIX = "pyganx."

VERSION = "pyganx.version"              # the pyganx release that exported the model
PLUGIN = "pyganx.plugin"                # the GAN variant (plugin name)
GENERATOR = "pyganx.generator"          # the export spec (e.g. G_AB)
DOMAINS = "pyganx.domains"              # JSON list: source/target domains, or the domain/class names
INPUTS = "pyganx.inputs"                # JSON list of input names: image; image, domain; z; z, label
IMAGE_SIZE = "pyganx.image_size"        # the size the generator was trained at
CHANNELS = "pyganx.channels"            # 1 (grey) or 3 (RGB)
NORMALIZATION = "pyganx.normalization"  # how pixels map to the graph's input range
IO_LAYOUT = "pyganx.io_layout"          # "NCHW float32" or "NHWC uint8"
SIZE_MULTIPLE = "pyganx.size_multiple"  # H and W are padded to a multiple of it (1: any size)
Z_DIM = "pyganx.z_dim"                  # noise models: the length of z
STEP = "pyganx.step"                    # the training step of the weights
WEIGHTS = "pyganx.weights"              # "ema" or "trained"
SOURCE = "pyganx.source"                # --from: the checkpoint's origin
WINOGRAD = "pyganx.winograd"            # --winograd: which convolutions were rewritten
PRECISION = "pyganx.precision"          # --fp16 / --int8: what runs in lower precision

KNOWN = frozenset({VERSION, PLUGIN, GENERATOR, DOMAINS, INPUTS, IMAGE_SIZE, CHANNELS, NORMALIZATION,
                   IO_LAYOUT, SIZE_MULTIPLE, Z_DIM, STEP, WEIGHTS, SOURCE, WINOGRAD, PRECISION})


def version_tuple(version: str) -> tuple[int, ...]:
    """The release numbers of a version string (``"0.10.2rc1"`` -> ``(0, 10, 2)``)."""
    m = re.match(r"\s*v?(\d+(?:\.\d+)*)", version)
    return tuple(int(n) for n in m.group(1).split(".")) if m else ()


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of the ONNX model at ``path`` (every key, pyganx's and others')."""
    import onnx

    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - not an ONNX file, or a damaged one
        raise ModelError(f"{path}: cannot read the model ({type(e).__name__}: {e})") from None
    return {p.key: p.value for p in m.metadata_props}


def is_pyganx_export(metadata: dict[str, str]) -> bool:
    """Whether the model was written by pyganx (it carries ``pyganx.*`` metadata)."""
    return any(k.startswith(PREFIX) for k in metadata)


def check(metadata: dict[str, str], name: str) -> None:
    """Refuses a model whose metadata this runtime cannot vouch for: keys it does not
    know, written by a newer pyganx. ``name`` names the model in the message."""
    unknown = sorted(k for k in metadata if k.startswith(PREFIX) and k not in KNOWN)
    theirs = metadata.get(VERSION, "")
    if unknown and theirs and version_tuple(theirs) > version_tuple(__version__):
        raise ModelError(f"{name} was exported by pyganx {theirs} and carries metadata that "
                         f"pyganx-runtime {__version__} does not know ({', '.join(unknown)}); "
                         f"install pyganx-runtime {theirs} or newer")


__all__ = ["CHANNELS", "DOMAINS", "GENERATOR", "IMAGE_SIZE", "INPUTS", "IO_LAYOUT", "KNOWN", "NORMALIZATION",
           "PLUGIN", "PRECISION", "PREFIX", "SIZE_MULTIPLE", "SOURCE", "STEP", "VERSION", "WEIGHTS", "WINOGRAD",
           "Z_DIM", "check", "is_pyganx_export", "read_metadata", "version_tuple"]
