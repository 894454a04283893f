"""``pyganx export``: a trained generator as a self-checked ONNX model.

The generator is wrapped for its inputs (wrappers.py) and exported with
``torch.onnx.export(dynamo=True)`` at opset 18, pyganx's compiled ops translated into
standard ONNX ops (convert.py, translations.py). Batch, height and width are dynamic
(height and width as multiples of the generator's size multiple) unless ``static``.
Every model carries the metadata keys of docs/contracts.md, passes ``onnx.checker``,
holds no custom-domain node, and is run with onnxruntime on sample inputs and compared
with the exact result, the same network in float64, before it is written; a mismatch is
an error (selfcheck.py; docs/export.md, "The self-check").
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from pyganx_runtime import metadata as keys
from pyganx_runtime.files import atomic_write_bytes
from pyganx_runtime.triton import write_repository

from .._version import __version__
from ..engine.run import LoadedRun, load_run
from ..errors import CheckpointError, DependencyError, ExportError, UsageError
from ..nn.foreign import FORMAT_PROJECTS, guess_format, load_foreign
from .convert import custom_domains, to_onnx
from .options import ExportOptions
from .selfcheck import check_export
from .wrappers import build_graph


@dataclass
class ExportResult:
    path: Path
    metadata: dict[str, str]
    max_abs_error: float                      # ONNX vs the reference over the checked inputs
    checked_shapes: list[tuple[int, ...]] = field(default_factory=list)
    quality: dict[str, float] = field(default_factory=dict)   # int8 against float32
    float32_error: float | None = None        # plain float32 PyTorch vs float64 (float32 graphs)
    bound: float = 0.0                        # the largest max_abs_error accepted
    reference: str = "float64"                # "float64", or "float32" for a network without one
    triton: Path | None = None                # the model's folder in --triton-repository


@dataclass
class _Source:
    """The generator to export and what the model's metadata says about it."""
    net: nn.Module
    channels: int
    image_size: int
    inputs: tuple[str, ...]
    domains: tuple[str, ...]
    metadata: dict[str, str]


def export_generator(options: ExportOptions | str | os.PathLike, out: str | os.PathLike | None = None,
                     generator: str | None = None, **flags: Any) -> ExportResult:
    """Exports a generator as the ExportOptions ``options`` say: by default the plugin's
    first export spec of a run directory or checkpoint, or, with ``from_format`` (see
    nn/foreign.py), a generator checkpoint saved by other code; see the module doc.
    ``export_generator(source, out, **flags)`` is the same with ``flags`` the other
    fields of ExportOptions (``generator`` may come third, by position; ``static=True``,
    ``fp16=True``, ...; ``foreign_domains`` is the deprecated name of ``domains``). ``winograd``: 3x3
    convolutions as Winograd F(4x4, 3x3) for onnxruntime's CPU provider (winograd.py);
    checked against the plain generator. ``triton_repository``: the written model is
    also put into that Triton model repository (pyganx_runtime.triton.write_repository)."""
    opts = _options(options, out, generator, flags)
    try:
        import onnx
    except ImportError:
        raise DependencyError("ONNX export needs onnx, onnxscript and onnxruntime: "
                              "pip install 'pyganx[cpu]' (or [gpu])") from None
    opts.check()
    src = _load_source(opts)
    net, c, s, meta = src.net.float().eval(), src.channels, src.image_size, src.metadata
    graph = build_graph(net, src.inputs, src.domains, c, s, opts.static, opts.with_preprocessing, opts.fp16)
    exported = graph.exported
    if opts.winograd:
        exported, meta[keys.WINOGRAD] = _winograd_graph(net, src, opts)
    proto = to_onnx(exported, graph.example, None if opts.static else graph.dynamic,
                    norm_in_float32=opts.fp16, input_names=graph.names)
    meta = {
        keys.VERSION: __version__, **meta, keys.IMAGE_SIZE: str(s),
        keys.FORMAT: str(keys.FORMAT_VERSION),
        keys.NORMALIZATION: ("in the graph: uint8 [0, 255] in and out" if opts.with_preprocessing
                              else "[-1, 1]: x / 127.5 - 1 in, (y + 1) * 127.5 out"),
        keys.IO_LAYOUT: "NHWC uint8" if opts.with_preprocessing else "NCHW float32",
        keys.SIZE_MULTIPLE: "1" if opts.with_preprocessing else str(graph.multiple),
        keys.CHANNELS: str(c),
        keys.INPUTS: json.dumps(list(src.inputs)),
    }
    del proto.metadata_props[:]
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(proto, full_check=True)
    bad = custom_domains(proto)
    if bad:
        raise ExportError(f"the exported graph uses non-standard domains {bad}: a pyganx op lacks a translation")
    if opts.fp16:
        proto.metadata_props.add(key=keys.PRECISION,
                                 value="float16 weights and compute, instance norm in float32, float32 in/out")
    blob = proto.SerializeToString()
    # An int8 model is not bounded: its float32 graph passes the self-check and
    # int8_model reports what quantising costs against that graph (PSNR, SSIM).
    checked = check_export(graph.model, blob, graph.checks, with_preprocessing=opts.with_preprocessing,
                           fp16=opts.fp16, winograd=opts.winograd)
    quality: dict[str, float] = {}
    if opts.int8:
        blob, quality = _int8(blob, opts, src)
    atomic_write_bytes(Path(opts.out), lambda f: f.write(blob))
    triton = None
    if opts.triton_repository is not None:
        triton = write_repository(opts.out, opts.triton_repository, opts.triton_model_name(), **opts.triton_settings())
    ref = checked.reference
    return ExportResult(Path(opts.out), meta, checked.error, [tuple(t[0].shape) for t in graph.checks], quality,
                        ref.float32_error, checked.bound, "float64" if ref.exact else "float32", triton)


def _options(options: ExportOptions | str | os.PathLike, out: str | os.PathLike | None,
             generator: str | None, flags: dict[str, Any]) -> ExportOptions:
    """export_generator's arguments as ExportOptions."""
    if isinstance(options, ExportOptions):
        if out is not None or generator is not None or flags:
            raise TypeError("export_generator takes ExportOptions, or a source, out and flags: not both")
        return options
    if out is None:
        raise TypeError("export_generator(source, out, **flags) needs out, the .onnx file to write")
    if "foreign_domains" in flags:
        if "domains" in flags:
            raise TypeError("export_generator: give domains (foreign_domains is its old name), not both")
        warnings.warn("export_generator's foreign_domains is deprecated; use domains", DeprecationWarning,
                      stacklevel=3)
        flags["domains"] = flags.pop("foreign_domains")
    if generator is not None:
        flags["generator"] = generator
    return ExportOptions(source=os.fspath(options), out=os.fspath(out), **flags)


def _load_source(opts: ExportOptions) -> _Source:
    """The generator of a run (its export spec ``opts.generator``) or of a foreign
    checkpoint (``opts.from_format``), with its metadata."""
    if opts.from_format:
        f = load_foreign(opts.source, opts.from_format, opts.image_size, domains=opts.domains)
        meta = {keys.PLUGIN: f.plugin, keys.GENERATOR: f.generator,
                keys.DOMAINS: json.dumps(list(f.domains)), keys.SOURCE: f.description}
        return _Source(f.net, f.channels, f.image_size, tuple(f.inputs), tuple(f.domains), meta)
    run = _load_run(opts.source)
    key, spec = run.spec(opts.generator)
    meta = {keys.PLUGIN: run.name, keys.GENERATOR: key, keys.DOMAINS: json.dumps(list(spec.domains)),
            keys.STEP: str(run.step), keys.WEIGHTS: run.weights}
    if spec.z_dim:
        meta[keys.Z_DIM] = str(spec.z_dim)
    return _Source(run.plugin.networks()[spec.network], run.info.channels, opts.image_size or run.info.image_size,
                   tuple(spec.inputs), tuple(spec.domains), meta)


def _load_run(source) -> LoadedRun:
    """load_run on CPU; a checkpoint file that is not pyganx's but has the layout of a
    generator ``--from`` reads gets that hint in its error."""
    try:
        return load_run(source, device="cpu")
    except CheckpointError as e:
        fmt = guess_format(source) if Path(source).is_file() else None
        if fmt is None:
            raise
        raise CheckpointError(f"{e}; this looks like a {FORMAT_PROJECTS[fmt]} generator: "
                              f"add --from {fmt}") from None


def _winograd_graph(net: nn.Module, src: _Source, opts: ExportOptions) -> tuple[nn.Module, str]:
    """What ``--winograd`` traces, a rewritten copy of ``net`` (checked against the
    generator as trained, in float64, with WINOGRAD_MULTIPLE), and its metadata value."""
    from .winograd import winograd as to_winograd

    fast, replaced = to_winograd(net)
    if not replaced:
        raise UsageError("--winograd: the generator has no 3x3 stride-1 convolution with enough "
                         "channels to compute as Winograd F(4x4, 3x3)")
    graph = build_graph(fast, src.inputs, src.domains, src.channels, src.image_size, opts.static,
                        opts.with_preprocessing, opts.fp16)
    return graph.exported, f"F(4x4,3x3) on {replaced} convolutions (for onnxruntime's CPU provider)"


def _int8(blob: bytes, opts: ExportOptions, src: _Source) -> tuple[bytes, dict[str, float]]:
    """``--int8``: the quantised model and its cost (quantize.py), for image-only generators."""
    from .quantize import int8_model

    if src.inputs != ("image",):
        raise UsageError(f"--int8 is calibrated on images: it takes image-only generators, not "
                         f"one with inputs {', '.join(src.inputs)}")
    return int8_model(blob, opts.calibrate, src.channels, src.image_size)


__all__ = ["ExportResult", "export_generator"]
