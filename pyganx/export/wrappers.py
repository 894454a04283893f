"""What is traced: a generator behind the inputs of docs/contracts.md (image; image +
domain; z; z + label), in half precision or with the uint8 pre- and post-processing
inside, and the example inputs, dynamic dimensions and check inputs that go with it
(:func:`build_graph`)."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ExportError, UsageError
from ..nn import one_hot
from .convert import image_dims


def size_multiple(net: nn.Module) -> int:
    """2 ** (number of stride-2 convolutions): H and W must be multiples of it."""
    downs = sum(1 for m in net.modules() if isinstance(m, nn.Conv2d) and tuple(m.stride) == (2, 2))
    return 2 ** downs


class ImageGenerator(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)


class DomainGenerator(nn.Module):
    """``(image, domain)`` with the target domain as int64 indices (N,), one-hot inside
    the graph (StarGAN)."""

    def __init__(self, net: nn.Module, num_domains: int) -> None:
        super().__init__()
        self.net, self.num_domains = net, num_domains

    def forward(self, image: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        return self.net(image, one_hot(domain, self.num_domains, image.dtype))


class NoiseGenerator(nn.Module):
    """``(z)`` or ``(z, label)`` with z (N, z_dim) and class indices (N,) (DCGAN, cGAN)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, z: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(z, label)


class HalfPrecision(nn.Module):
    """A half-precision copy of a generator behind float32 inputs and outputs (integer
    inputs pass through)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = copy.deepcopy(net).half()

    def forward(self, first: torch.Tensor, second: torch.Tensor | None = None) -> torch.Tensor:
        inputs = (first,) if second is None else (first, second)
        return self.net(*(t.half() if t.is_floating_point() else t for t in inputs)).float()


class WithPreprocessing(nn.Module):
    """uint8 NHWC in and out, any H and W: scaling to [-1, 1], reflect padding to the size
    multiple, cropping back and the mapping to [0, 255] (rounded half to even, like ONNX
    Round) all inside the graph."""

    def __init__(self, net: nn.Module, multiple: int) -> None:
        super().__init__()
        self.net, self.multiple = net, multiple
        self.compute_dtype = torch.float32     # float64 in the self-check's reference

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.permute(0, 3, 1, 2).to(self.compute_dtype) / 127.5 - 1
        h, w = x.shape[2], x.shape[3]
        m = self.multiple
        x = torch.nn.functional.pad(x, (0, (m - w % m) % m, 0, (m - h % m) % m), mode="reflect")
        y = self.net(x)[:, :, :h, :w]
        return ((y + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


@dataclass
class Graph:
    model: nn.Module            # float32 PyTorch reference, the graph's inputs in order
    exported: nn.Module         # what is traced (the half copy with --fp16)
    example: tuple              # tracing inputs
    names: list[str]            # ONNX input names
    dynamic: dict | None        # torch.export dynamic shapes by input name
    checks: list[tuple]         # inputs that ONNX and PyTorch must agree on
    multiple: int               # H and W multiple (1 for noise models)


def build_graph(net: nn.Module, inputs: tuple[str, ...], domains: tuple[str, ...], c: int, s: int,
                static: bool, with_preprocessing: bool, fp16: bool) -> Graph:
    """The wrapper, example inputs, dynamic dimensions and check inputs for a generator
    with ``inputs`` (docs/contracts.md: image; image + domain; z; z + label), ``c``
    channels and images of size ``s``."""
    g = torch.Generator().manual_seed(0)
    batch = torch.export.Dim("batch", min=1, max=4096)
    if inputs and inputs[0] == "z":
        return _noise_graph(net, inputs, domains, static, with_preprocessing, fp16, g, batch)
    if inputs not in (("image",), ("image", "domain")):
        raise ExportError(f"cannot export a generator with inputs {', '.join(inputs)}")
    mult = size_multiple(net)
    if s % mult:
        raise UsageError(f"image size {s} is not a multiple of the generator's size multiple {mult}")
    # trace at no less than twice the multiple, the least dynamic H and W allowed
    t = s if static else max(s, 2 * mult)
    n = 1 if static else 2
    if with_preprocessing:
        if len(inputs) > 1:
            raise UsageError("--with-preprocessing takes image-only generators so far")
        model = WithPreprocessing(net, mult).eval()
        exported = WithPreprocessing(HalfPrecision(net), mult).eval() if fp16 else model
        example = (torch.randint(0, 256, (n, t, t, c), dtype=torch.uint8, generator=g),)
        dyn = {"image": image_dims(1, 2 * mult, nhwc=True, batch=batch)}
        shapes = [(1, s, s, c)] if static else [(1, s, s, c), (2, s + 3, max(2 * mult, s - 5), c)]
        checks = [(torch.randint(0, 256, sh, dtype=torch.uint8, generator=g),) for sh in shapes]
        return Graph(model, exported, example, ["image"], dyn, checks, mult)
    shapes = [(1, c, s, s)] if static else [(1, c, s, s), (2, c, s + mult, max(2 * mult, s - mult))]
    if inputs == ("image",):
        model = ImageGenerator(net).eval()
        extra = lambda n: ()  # noqa: E731
        dynamic = {"image": image_dims(mult, 2 * mult, batch=batch)}
    else:
        k = len(domains)
        if k < 2:
            raise UsageError(f"a generator with a domain input needs the domain names, got {list(domains)}")
        model = DomainGenerator(net, k).eval()
        extra = lambda n: (torch.randint(k, (n,), generator=g),)  # noqa: E731
        dynamic = {"image": image_dims(mult, 2 * mult, batch=batch), "domain": {0: batch}}
    example = (torch.rand(n, c, t, t, generator=g) * 2 - 1, *extra(n))
    checks = [(torch.rand(sh, generator=g) * 2 - 1, *extra(sh[0])) for sh in shapes]
    return Graph(model, HalfPrecision(model).eval() if fp16 else model, example, list(inputs), dynamic, checks, mult)


def _noise_graph(net: nn.Module, inputs: tuple[str, ...], domains: tuple[str, ...], static: bool,
                 with_preprocessing: bool, fp16: bool, g: torch.Generator, batch) -> Graph:
    """:func:`build_graph` for a noise generator (inputs z, or z and label)."""
    z_dim = getattr(net, "z_dim", None)
    if inputs not in (("z",), ("z", "label")) or not z_dim:
        raise ExportError(f"cannot export a noise generator with inputs {', '.join(inputs)}")
    if with_preprocessing:
        raise UsageError("--with-preprocessing is for image-to-image generators; this one takes noise")
    k = max(1, len(domains))

    def make(n: int) -> tuple:
        z = torch.randn(n, z_dim, generator=g)
        return (z, torch.randint(k, (n,), generator=g)) if len(inputs) == 2 else (z,)
    model = NoiseGenerator(net).eval()
    names = list(inputs)
    dynamic = {name: {0: batch} for name in names}
    example = make(1 if static else 2)
    checks = [example] if static else [make(1), make(3)]
    return Graph(model, HalfPrecision(model).eval() if fp16 else model, example, names, dynamic, checks, 1)


__all__ = ["DomainGenerator", "Graph", "HalfPrecision", "ImageGenerator", "NoiseGenerator", "WithPreprocessing",
           "build_graph", "size_multiple"]
