"""Running exported generators with onnxruntime: ``Translator`` and ``translate``.

The session uses the CUDA provider when onnxruntime has it and a GPU answers, and the
CPU provider otherwise, without asking for CUDA on machines that have none. With
onnxruntime-gpu, the CUDA and cuDNN libraries come from the nvidia pip packages (the
``gpu`` extra) through ``onnxruntime.preload_dlls()``; torch is never imported. Inputs
of any size are reflect-padded to the model's size multiple and cropped back.
"""
from __future__ import annotations

import ctypes
import json
import os
import sys
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from PIL import Image

from . import metadata as meta_keys
from .errors import DependencyError, ImageError, ModelError, NoiseModelError, UsageError
from .images import list_images, load_image, save_image

if TYPE_CHECKING:
    from .tiling import Tiler


class ForeignModelWarning(UserWarning):
    """An ONNX model that ``pyganx export`` did not write is run on assumptions."""


def import_onnxruntime():
    """The onnxruntime module, or a DependencyError saying how to install it."""
    try:
        import onnxruntime
    except ImportError as e:
        raise DependencyError(f"needs onnxruntime: pip install 'pyganx-runtime[cpu]' (or [gpu]) ({e})") from None
    return onnxruntime


def _cuda_devices() -> int:
    """How many GPUs the CUDA driver sees (0 without a driver), asked of the driver
    library itself so that no framework needs to be loaded."""
    names = ("nvcuda.dll",) if os.name == "nt" else ("libcuda.so.1", "libcuda.so")
    for name in names:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        try:
            if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
                return 0
        except AttributeError:
            return 0
        return count.value
    return 0


def pick_providers(device: str = "auto") -> list[str]:
    """onnxruntime's providers for ``device``: ``auto`` takes CUDA where onnxruntime has
    the provider and a GPU is present, ``cuda`` insists on it, ``cpu`` never asks."""
    ort = import_onnxruntime()
    available = ort.get_available_providers()
    if device not in ("auto", "cpu", "cuda"):
        raise UsageError(f"device must be auto, cpu or cuda, got {device!r}")
    want_cuda = device == "cuda" or (device == "auto" and "CUDAExecutionProvider" in available
                                     and _cuda_devices() > 0)
    if want_cuda:
        if "CUDAExecutionProvider" not in available:
            raise UsageError("this onnxruntime has no CUDA provider: pip install 'pyganx-runtime[gpu]'")
        if hasattr(ort, "preload_dlls"):
            try:
                ort.preload_dlls()
            except Exception:  # noqa: BLE001 - the session below reports what is missing
                pass
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


#: numpy element types of the tensors ``bind_tensors`` binds, by torch dtype name
_ELEMENT = {"torch.float32": np.float32, "torch.uint8": np.uint8}


def bind_tensors(session, image, out, extra: dict[str, np.ndarray] | None = None):
    """An IO binding of ``session`` that reads the torch tensor ``image`` (its first
    input) and writes its first output into the torch tensor ``out``, both contiguous
    on the same device, in place; ``extra`` numpy inputs (the domain) are copied in. Run
    it with ``session.run_with_iobinding`` as often as the tensors' contents change."""
    device = image.device
    index = 0 if device.index is None else device.index
    binding = session.io_binding()
    binding.bind_input(session.get_inputs()[0].name, device.type, index, _ELEMENT[str(image.dtype)],
                       list(image.shape), image.data_ptr())
    for name, value in (extra or {}).items():
        binding.bind_cpu_input(name, value)
    binding.bind_output(session.get_outputs()[0].name, device.type, index, _ELEMENT[str(out.dtype)],
                        list(out.shape), out.data_ptr())
    return binding


def _image_like(arg) -> bool:
    """Whether an ONNX input or output can hold a batch of images: 4-D, float32 NCHW
    with 1 or 3 channels, or uint8 NHWC."""
    shape = arg.shape
    if len(shape) != 4:
        return False
    if arg.type == "tensor(float)":
        return not isinstance(shape[1], int) or shape[1] in (1, 3)
    if arg.type == "tensor(uint8)":
        return not isinstance(shape[3], int) or shape[3] in (1, 3)
    return False


class Translator:
    """An exported image-to-image generator. ``translator(batch)`` takes NCHW float32 in
    [-1, 1]; ``translate(pil_image)`` takes and returns PIL images."""

    def __init__(self, path: str | os.PathLike, device: str = "auto", threads: int | None = None,
                 tile: int | None = None, overlap: int = 32, tile_stats: str = "exact",
                 io_binding: bool | None = None) -> None:
        """``io_binding``: run through onnxruntime's IO binding (inputs copied to the device
        once, the output allocated there); None: on the CUDA provider only."""
        ort = import_onnxruntime()

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such model")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        providers = pick_providers(device)
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=providers)
        except Exception as e:  # noqa: BLE001 - not an ONNX model, or a broken one
            raise ModelError(f"{self.path}: cannot load model ({str(e).strip().splitlines()[0]})") from None
        self.providers = self.session.get_providers()
        #: where the session computes: "cuda" (CUDA provider) or "cpu"
        self.device_type = "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"
        self._output = self.session.get_outputs()[0].name
        self.io_binding = self.device_type == "cuda" if io_binding is None else bool(io_binding)
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        meta_keys.check(self.metadata, self.path.name)
        inputs = [i.name for i in self.session.get_inputs()]
        #: whether ``pyganx export`` wrote the model (else it runs on stated assumptions)
        self.foreign = not meta_keys.is_pyganx_export(self.metadata)
        if self.foreign:
            self._accept_foreign()
        elif "z" in inputs:
            raise NoiseModelError(f"{self.path} is a noise model (inputs {inputs}): "
                                  f"use `pyganx sample RUN_DIR` to draw images from it", inputs, self.metadata)
        elif inputs not in (["image"], ["image", "domain"]):
            raise ModelError(f"{self.path}: expected the inputs 'image' (and 'domain'), found {inputs}")
        #: the model's input names, as exported
        self.inputs = inputs
        #: whether the model takes a target domain (StarGAN) besides the image
        self.takes_domain = "domain" in inputs
        inp = self.session.get_inputs()[0]
        self._image_input = inp.name
        #: uint8 NHWC in and out, normalisation and padding in the graph (--with-preprocessing)
        self.preprocessed = inp.type == "tensor(uint8)"
        self.multiple = int(self.metadata.get(meta_keys.SIZE_MULTIPLE, "1"))
        dim = inp.shape[3 if self.preprocessed else 1]
        self.channels = int(self.metadata.get(meta_keys.CHANNELS, dim if isinstance(dim, int) else 3))
        self.domains = json.loads(self.metadata.get(meta_keys.DOMAINS, "[]"))
        self.static_shape = tuple(inp.shape) if all(isinstance(d, int) for d in inp.shape) else None
        self._opts = opts
        #: translates images larger than ``tile`` tile by tile (tiling.py), or None
        self.tiler: Tiler | None = None
        if tile:
            self.enable_tiling(tile, overlap, tile_stats)

    def _accept_foreign(self) -> None:
        """A model ``pyganx export`` did not write is run only if it maps one image batch
        to one image batch; it is then taken to use pyganx's conventions."""
        ins, outs = self.session.get_inputs(), self.session.get_outputs()
        if len(ins) != 1 or len(outs) != 1 or not _image_like(ins[0]) or not _image_like(outs[0]):
            shown = ", ".join(f"{a.name} {a.type} {a.shape}" for a in ins)
            raise ModelError(f"{self.path} is not a pyganx export, and it does not take one batch of images "
                             f"and give one (inputs: {shown}): pyganx runs only such models")
        layout = ("uint8 NHWC images in [0, 255]" if ins[0].type == "tensor(uint8)"
                  else "float32 NCHW images in [-1, 1]")
        warnings.warn(f"{self.path.name} is not a pyganx export: running it on {layout}, in and out, "
                      f"at any size", ForeignModelWarning, stacklevel=3)

    @property
    def can_tile(self) -> bool:
        """Whether the tiled path exists for this model: float, with dynamic H and W."""
        return not (self.preprocessed or self.static_shape or self.foreign)

    def enable_tiling(self, tile: int, overlap: int = 32, tile_stats: str = "exact") -> None:
        """Translates images larger than ``tile`` tile by tile, with whole-image norm
        statistics; the graphs for it are built when the first such image comes."""
        if not self.can_tile:
            raise UsageError(f"{self.path.name}: --tile needs a float pyganx export with dynamic H and W "
                             f"(not --with-preprocessing or --static)")
        from .tiling import Tiler
        ort = import_onnxruntime()
        opts, providers, path = self._opts, self.providers, self.path

        def session(blob: bytes):
            return ort.InferenceSession(blob, opts, providers=providers)

        def load():
            import onnx
            return onnx.load(str(path))
        self.tiler = Tiler(load, tile, overlap, self.multiple, session, tile_stats)

    def domain_index(self, domain: str | int | None) -> int | None:
        """The index of a target domain given by name (or index); an error if the model
        takes none and one is given, or takes one and none is given."""
        if not self.takes_domain:
            if domain is not None:
                raise UsageError(f"{self.path.name} translates into one fixed domain; it takes no --domain")
            return None
        if domain is None:
            raise UsageError(f"{self.path.name} needs a target domain (--domain): one of {', '.join(self.domains)}")
        if str(domain) in self.domains:
            return self.domains.index(str(domain))
        if isinstance(domain, int) and 0 <= domain < len(self.domains):
            return domain
        raise UsageError(f"unknown domain {domain!r}; {self.path.name} knows {', '.join(self.domains)}")

    def _domain_feed(self, domain, n: int) -> dict[str, np.ndarray]:
        """The ``domain`` input for ``n`` images (empty for models that take none)."""
        many = isinstance(domain, (list, tuple))
        if many and len(domain) != n:
            raise UsageError(f"{len(domain)} target domains for {n} images")
        ks = [self.domain_index(d) for d in (domain if many else [domain] * n)]
        return {"domain": np.array(ks, dtype=np.int64)} if ks and ks[0] is not None else {}

    def _run(self, x: np.ndarray, domain) -> np.ndarray:
        extra = self._domain_feed(domain, x.shape[0])
        if self.tiler is not None and max(x.shape[2:]) > self.tiler.tile:
            return np.concatenate([self.tiler.run(x[i:i + 1], {n: v[i:i + 1] for n, v in extra.items()})
                                   for i in range(x.shape[0])])
        feeds = {self._image_input: x, **extra}
        if self.io_binding:
            return self._run_bound(feeds)
        return self.session.run(None, feeds)[0]

    def _run_bound(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        # IO binding: each input goes to the device once, the output is allocated there by
        # onnxruntime and comes back once (session.run stages both through extra copies).
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        binding.bind_output(self._output, self.device_type)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def run_tensor(self, images, domain=None):
        """torch in, torch out, without leaving the device: ``images`` (N, C, H, W) float32
        in [-1, 1] (or uint8 NHWC for a --with-preprocessing model), with H and W multiples
        of the model's size multiple, on the session's device (a CUDA tensor for the CUDA
        provider, a CPU tensor otherwise). onnxruntime reads the tensor's memory and writes
        into a torch tensor through IO binding: no copies through numpy. ``domain`` as for
        ``__call__``."""
        torch = sys.modules.get("torch")    # a torch tensor means torch is loaded; never import it here
        if torch is None or not isinstance(images, torch.Tensor):
            raise UsageError("run_tensor takes a torch tensor; call the translator with a numpy array instead")
        dtype = torch.uint8 if self.preprocessed else torch.float32
        if images.dtype != dtype or images.dim() != 4:
            raise UsageError(f"run_tensor takes a 4-D torch.{str(dtype).split('.')[-1]} tensor")
        if images.device.type != self.device_type:
            raise UsageError(f"{self.path.name} runs on {self.device_type}; the images are on {images.device}")
        x = images.contiguous()
        c = x.shape[3] if self.preprocessed else x.shape[1]
        if c != self.channels:
            raise UsageError(f"expected {self.channels} channels, got shape {tuple(x.shape)}")
        hw = x.shape[1:3] if self.preprocessed else x.shape[2:]
        if any(d % self.multiple for d in hw):
            raise UsageError(f"H and W must be multiples of {self.multiple} for run_tensor, got {tuple(hw)}")
        self._check_static(x)
        out_channels = self.session.get_outputs()[0].shape[3 if self.preprocessed else 1]
        shape = (*x.shape[:3], out_channels) if self.preprocessed else (x.shape[0], out_channels, *hw)
        y = x.new_empty(shape)
        self.session.run_with_iobinding(bind_tensors(self.session, x, y, self._domain_feed(domain, x.shape[0])))
        return y

    def __call__(self, images: np.ndarray, domain=None) -> np.ndarray:
        """NCHW float32 in [-1, 1] -> the same; for a --with-preprocessing model, uint8
        NHWC -> uint8 NHWC. ``domain``: the target domain, for models that take one; or a
        list of them, one per image."""
        if self.preprocessed:
            pixels = np.ascontiguousarray(images, dtype=np.uint8)
            if pixels.ndim != 4 or pixels.shape[3] != self.channels:
                raise UsageError(f"expected (N, H, W, {self.channels}) uint8 images, got shape {pixels.shape}")
            self._check_static(pixels)
            return self._run(pixels, domain)
        x = np.ascontiguousarray(images, dtype=np.float32)
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise UsageError(f"expected (N, {self.channels}, H, W) images, got shape {x.shape}")
        self._check_static(x)
        h, w = x.shape[2:]
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        if ph or pw:
            mode: Literal["reflect", "edge"] = "reflect" if ph < h and pw < w else "edge"
            x = np.pad(x, ((0, 0), (0, 0), (0, ph), (0, pw)), mode=mode)
        y = self._run(x, domain)
        return y[:, :, :h, :w]

    def _check_static(self, x: np.ndarray) -> None:
        if self.static_shape is not None and x.shape != self.static_shape:
            raise UsageError(f"{self.path.name} was exported with --static and takes exactly "
                             f"{self.static_shape}, got {x.shape}; export without --static for other sizes")

    def translate(self, img: Image.Image, domain: str | int | None = None) -> Image.Image:
        return self.translate_batch([img], domain)[0]

    def translate_batch(self, images: Sequence[Image.Image], domain=None) -> list[Image.Image]:
        """Images of one size, as PIL (converted to the model's channels); ``domain`` as
        for ``__call__``."""
        mode = "L" if self.channels == 1 else "RGB"
        pixels = np.stack([np.asarray(im.convert(mode), dtype=np.uint8).reshape(im.height, im.width, -1)
                           for im in images])
        if self.preprocessed:
            pix = self(pixels, domain)
        else:
            out = self(pixels.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1, domain)
            pix = np.clip(np.rint((out + 1) * 127.5), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
        return [Image.fromarray(p[..., 0], "L") if p.shape[-1] == 1 else Image.fromarray(p, "RGB") for p in pix]


def collect_inputs(inputs: Iterable[str | os.PathLike]) -> list[tuple[Path, Path]]:
    """(file, name relative to its input) for files and folders (searched recursively)."""
    found = []
    for inp in inputs:
        p = Path(inp)
        if p.is_dir():
            found += [(f, f.relative_to(p)) for f in list_images(p)]
        elif p.is_file():
            found.append((p, Path(p.name)))
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return found


def translate_files(translator: Translator, inputs: Iterable[str | os.PathLike], out_dir: str | os.PathLike,
                    batch_size: int = 1, progress: bool = False,
                    domain: str | int | None = None) -> tuple[int, list[str]]:
    """Translates every image (into ``domain``, for models that take one); outputs keep
    their names under ``out_dir``. Returns the number written and one message per input
    that could not be read (skipped)."""
    translator.domain_index(domain)   # a wrong or missing --domain fails before any work
    files = collect_inputs(inputs)
    out = Path(out_dir)
    errors: list[str] = []
    done = 0
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(files), unit="img")
    pending: list[tuple[Image.Image, Path]] = []

    def flush() -> None:
        nonlocal done
        if not pending:
            return
        for img, rel in zip(translator.translate_batch([p[0] for p in pending], domain), [p[1] for p in pending]):
            save_image(img, out / rel)
            done += 1
        if bar is not None:
            bar.update(len(pending))
        pending.clear()

    try:
        for path, rel in files:
            try:
                img = load_image(path, translator.channels)
            except ImageError as e:
                errors.append(str(e))
                if bar is not None:
                    bar.update(1)
                continue
            if pending and (img.size != pending[0][0].size or len(pending) >= batch_size):
                flush()
            pending.append((img, rel))
        flush()
    finally:
        if bar is not None:
            bar.close()
    return done, errors
