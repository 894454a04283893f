"""The metadata keys of models written by ``pyganx export``: the one list the exporter
writes and the runtime reads (docs/export.md describes each).

``pyganx.format`` is the version of the metadata format itself: a pyganx whose models
must be read differently writes a higher number. Models exported before the key existed
carry none and are format 1.

``check`` is what the runtime does with a model's metadata before it runs it. It refuses,
with a message naming both versions: a model in a newer metadata format than this
runtime reads; a model that claims a newer pyganx but carries no format key (every
pyganx newer than this runtime writes one, so such metadata is inconsistent or not
pyganx's); and a model from a newer pyganx that carries keys this runtime does not know,
because those keys may change how the model must be fed.
"""
from __future__ import annotations

import os
import re

from ._version import __version__
from .errors import ModelError

PREFIX = "pyganx."

VERSION = "pyganx.version"              # the pyganx release that exported the model
FORMAT = "pyganx.format"                # the metadata format version (FORMAT_VERSION when written)
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

#: the metadata format this pyganx writes, and the newest this runtime reads
FORMAT_VERSION = 1

KNOWN = frozenset({VERSION, FORMAT, PLUGIN, GENERATOR, DOMAINS, INPUTS, IMAGE_SIZE, CHANNELS, NORMALIZATION,
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


def _install(theirs: str) -> str:
    return f"install pyganx-runtime {theirs} or newer" if theirs else "install a newer pyganx-runtime"


def check(metadata: dict[str, str], name: str) -> None:
    """Refuses a model whose metadata this runtime cannot vouch for (the module doc says
    which), with a one-line ModelError; ``name`` names the model in it."""
    theirs = metadata.get(VERSION, "")
    newer = bool(theirs) and version_tuple(theirs) > version_tuple(__version__)
    exported = f"exported by pyganx {theirs}" if theirs else "exported by pyganx"
    fmt = metadata.get(FORMAT)
    if fmt is not None and not (fmt.strip().isdecimal() and int(fmt) <= FORMAT_VERSION):
        raise ModelError(f"{name} was {exported} in metadata format {fmt}, and pyganx-runtime {__version__} "
                         f"reads format {FORMAT_VERSION} at most; {_install(theirs)}")
    if fmt is None and newer:
        raise ModelError(f"{name} says it was {exported}, newer than pyganx-runtime {__version__}, but carries "
                         f"no {FORMAT} key, which every such pyganx writes: its metadata is inconsistent or "
                         f"not pyganx's; re-export it, or {_install(theirs)}")
    unknown = sorted(k for k in metadata if k.startswith(PREFIX) and k not in KNOWN)
    if unknown and newer:
        raise ModelError(f"{name} was {exported} and carries metadata that "
                         f"pyganx-runtime {__version__} does not know ({', '.join(unknown)}); {_install(theirs)}")


__all__ = ["CHANNELS", "DOMAINS", "FORMAT", "FORMAT_VERSION", "GENERATOR", "IMAGE_SIZE", "INPUTS", "IO_LAYOUT",
           "KNOWN", "NORMALIZATION", "PLUGIN", "PRECISION", "PREFIX", "SIZE_MULTIPLE", "SOURCE", "STEP", "VERSION",
           "WEIGHTS", "WINOGRAD", "Z_DIM", "check", "is_pyganx_export", "read_metadata", "version_tuple"]
