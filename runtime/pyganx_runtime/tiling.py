"""Translating images larger than fit in one run, tile by tile, with instance-norm
statistics of the whole image.

Instance norm makes every output pixel depend on statistics over the whole image, so
tiles that each normalise on their own come out with different levels and seams. Here
every ``InstanceNormalization`` of the exported model is rewritten (a graph rewrite, no
re-export) to normalise with statistics given as inputs, which are gathered first for
the whole image (see ``Tiler``); then overlapping tiles run with them and are blended
with weights that fall linearly to zero across the overlap, so the seams left by the
context a tile's edge lacks fade out. The error against the untiled translation is
measured in tests/test_tiling.py and written down in docs/export.md.
"""
from __future__ import annotations

import threading

import numpy as np

from .errors import UsageError

NORM = "InstanceNormalization"


def _norm_nodes(graph) -> list:
    return [n for n in graph.node if n.op_type == NORM]


def _eps(node) -> float:
    for a in node.attribute:
        if a.name == "epsilon":
            return float(a.f)
    return 1e-5


def stats_model(proto):
    """A copy of ``proto`` that also outputs each instance norm's input mean and (biased)
    variance over H and W, ``norm<i>_mean`` / ``norm<i>_var`` of shape (N, C, 1, 1)."""
    import onnx
    from onnx import TensorProto, helper

    m = onnx.ModelProto()
    m.CopyFrom(proto)
    g = m.graph
    axes = "pyganx_tile_axes"
    g.initializer.append(helper.make_tensor(axes, TensorProto.INT64, [2], [2, 3]))
    for i, node in enumerate(_norm_nodes(g)):
        x = node.input[0]
        mean, var, d, d2 = f"norm{i}_mean", f"norm{i}_var", f"pyganx_tile_d{i}", f"pyganx_tile_d2_{i}"
        g.node.extend([
            helper.make_node("ReduceMean", [x, axes], [mean], keepdims=1),
            helper.make_node("Sub", [x, mean], [d]),
            helper.make_node("Mul", [d, d], [d2]),
            helper.make_node("ReduceMean", [d2, axes], [var], keepdims=1),
        ])
        for name in (mean, var):
            g.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return m


def tiled_model(proto, sums: bool = False, replace: bool = True):
    """A copy of ``proto`` in which instance norm ``i`` normalises with the inputs
    ``norm<i>_mean`` and ``norm<i>_var`` (N, C, 1, 1) instead of its input's statistics.

    With ``sums``, it also takes ``tile_mask`` (N, 1, H, W: 1 on the pixels this tile
    accounts for) and outputs, per norm, the masked ``norm<i>_sum`` and ``norm<i>_sumsq``
    of its input (N, C, 1, 1) and ``norm<i>_count`` (N, 1, 1, 1); the mask is resized
    (nearest, top-left sample) to each norm's resolution, so that tiles starting on
    multiples of the model's size multiple account for every pixel once."""
    import onnx
    from onnx import TensorProto, helper

    m = onnx.ModelProto()
    m.CopyFrom(proto)
    g = m.graph
    shape, axes = "pyganx_tile_shape", "pyganx_tile_axes"
    g.initializer.extend([helper.make_tensor(shape, TensorProto.INT64, [4], [1, -1, 1, 1]),
                          helper.make_tensor(axes, TensorProto.INT64, [2], [2, 3])])
    nodes = list(g.node)
    del g.node[:]
    if sums:   # the mask's (N, 1), first: nodes stay in topological order
        for name, vals in (("pyganx_tile_0", [0]), ("pyganx_tile_2", [2]), ("pyganx_tile_4", [4])):
            g.initializer.append(helper.make_tensor(name, TensorProto.INT64, [1], vals))
        g.input.append(helper.make_tensor_value_info("tile_mask", TensorProto.FLOAT, ["batch", 1, None, None]))
        g.node.extend([helper.make_node("Shape", ["tile_mask"], ["pyganx_tile_mask_shape"]),
                       helper.make_node("Slice", ["pyganx_tile_mask_shape", "pyganx_tile_0", "pyganx_tile_2"],
                                        ["pyganx_tile_nc"])])
    i = 0
    for node in nodes:
        if node.op_type != NORM or not replace:
            g.node.append(node)
        if node.op_type != NORM:
            continue
        x, scale, bias = node.input
        p = f"pyganx_tile{i}_"
        mean, var = f"norm{i}_mean", f"norm{i}_var"
        eps = p + "eps"
        if replace:
            g.initializer.append(helper.make_tensor(eps, TensorProto.FLOAT, [], [_eps(node)]))
        g.node.extend([] if not replace else [
            helper.make_node("Sub", [x, mean], [p + "centred"]),
            helper.make_node("Add", [var, eps], [p + "var_eps"]),
            helper.make_node("Sqrt", [p + "var_eps"], [p + "std"]),
            helper.make_node("Div", [p + "centred", p + "std"], [p + "normed"]),
            helper.make_node("Reshape", [scale, shape], [p + "scale"]),
            helper.make_node("Reshape", [bias, shape], [p + "bias"]),
            helper.make_node("Mul", [p + "normed", p + "scale"], [p + "scaled"]),
            helper.make_node("Add", [p + "scaled", p + "bias"], list(node.output)),
        ])
        for name in (mean, var) if replace else ():
            g.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", None, 1, 1]))
        if sums:
            outs = (f"norm{i}_sum", f"norm{i}_sumsq", f"norm{i}_count")
            g.node.extend([
                helper.make_node("Shape", [x], [p + "xshape"]),
                helper.make_node("Slice", [p + "xshape", "pyganx_tile_2", "pyganx_tile_4"], [p + "hw"]),
                helper.make_node("Concat", ["pyganx_tile_nc", p + "hw"], [p + "sizes"], axis=0),
                helper.make_node("Resize", ["tile_mask", "", "", p + "sizes"], [p + "mask"], mode="nearest",
                                 coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
                helper.make_node("Mul", [x, p + "mask"], [p + "xm"]),
                helper.make_node("ReduceSum", [p + "xm", axes], [outs[0]], keepdims=1),
                helper.make_node("Mul", [p + "xm", x], [p + "xxm"]),
                helper.make_node("ReduceSum", [p + "xxm", axes], [outs[1]], keepdims=1),
                helper.make_node("ReduceSum", [p + "mask", axes], [outs[2]], keepdims=1),
            ])
            for name in outs:
                g.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
        i += 1
    return m


def pruned(proto, outputs: list[str]):
    """A copy of ``proto`` computing only ``outputs``: the nodes they need and the graph
    inputs those read (onnxruntime runs every node of a graph, whatever is fetched)."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(proto)
    g = m.graph
    needed, keep = set(outputs), []
    for node in reversed(list(g.node)):
        if needed.intersection(node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    keep.reverse()
    del g.node[:]
    g.node.extend(keep)
    by_name = {o.name: o for o in proto.graph.output}
    del g.output[:]
    g.output.extend(by_name[o] for o in outputs)
    inputs = [i for i in g.input if i.name in needed]
    del g.input[:]
    g.input.extend(inputs)
    return m


def _ramp(n: int, overlap: int, lead: bool, trail: bool) -> np.ndarray:
    """Blend weights along one axis of a tile: rising over the first ``overlap`` pixels
    unless the tile starts the image, falling over the last unless it ends it."""
    w = np.ones(n, dtype=np.float64)
    if overlap > 0:
        r = (np.arange(overlap) + 0.5) / overlap
        if lead:
            w[:overlap] = np.minimum(w[:overlap], r)
        if trail:
            w[-overlap:] = np.minimum(w[-overlap:], r[::-1])
    return w


def tile_starts(size: int, tile: int, overlap: int, multiple: int) -> list[int]:
    """Starts of tiles of ``tile`` pixels covering ``size`` with at least ``overlap``
    shared pixels, each start a multiple of ``multiple`` (the last tile ends at ``size``)."""
    if size <= tile:
        return [0]
    step = max(multiple, (tile - overlap) // multiple * multiple)
    starts = list(range(0, size - tile, step)) + [size - tile]
    return sorted(set(starts))


def downscale(x: np.ndarray, factor: int) -> np.ndarray:
    """Area downscale of NCHW by an integer factor (H and W divisible by it)."""
    if factor == 1:
        return x
    n, c, h, w = x.shape
    return x.reshape(n, c, h // factor, factor, w // factor, factor).mean(axis=(3, 5))


def _owned(starts: list[int], tile: int, size: int) -> list[tuple[int, int]]:
    """The span of each tile that it accounts for: split at the middle of each overlap,
    rounded down to ``align``-free integers (every pixel in exactly one span)."""
    bounds = [0] + [(b + min(a + tile, size)) // 2 for a, b in zip(starts, starts[1:])] + [size]
    return [(bounds[k] - starts[k], bounds[k + 1] - starts[k]) for k in range(len(starts))]


class Tiler:
    """Runs an exported model tile by tile with whole-image instance-norm statistics.

    ``run(x, extra)`` takes one padded image batch NCHW float32 (H and W multiples of the
    model's size multiple) and returns the model's output for it.

    ``stats="exact"``: one sweep over the tiles per norm layer, in order. Sweep k runs
    the graph up to norm k's input only, normalising the earlier norms with the
    statistics the earlier sweeps gathered, and sums norm k's input over the pixels each
    tile accounts for (every pixel once, split in the middle of the overlaps). Up to the
    context a tile's edge lacks, these are the untiled model's statistics; the sweeps
    cost about (number of norms) / 2 untiled runs. ``stats="fast"``: the statistics of
    the image area-downscaled to fit one tile, one run at that size; an approximation.

    ``proto`` is the model, or a function that loads it: then the rewritten graphs and
    their sessions are built when the first image needs tiles, so that a service that
    never sees one larger than a tile does not hold them (about 65 MiB for the demo's
    32 px CycleGAN generator)."""

    def __init__(self, proto, tile: int, overlap: int, multiple: int, session_factory,
                 stats: str = "exact") -> None:
        if tile % multiple:
            raise UsageError(f"--tile {tile} must be a multiple of the model's size multiple {multiple}")
        if not 0 <= overlap < tile:
            raise UsageError(f"--overlap must be at least 0 and less than --tile, got {overlap}")
        if stats not in ("exact", "fast"):
            raise UsageError(f"tile statistics must be exact or fast, got {stats!r}")
        self.tile, self.overlap, self.multiple, self.mode = tile, overlap, multiple, stats
        self._factory = session_factory
        self._proto = proto
        self._built: dict | None = None
        self._lock = threading.Lock()
        self._sweeps: dict[int, object] = {}

    def _graphs(self) -> dict:
        """The rewritten graphs' sessions, built on first use."""
        with self._lock:
            if self._built is None:
                proto = self._proto() if callable(self._proto) else self._proto
                self._built = {
                    "norms": len(_norm_nodes(proto.graph)),
                    "stats": self._factory(stats_model(proto).SerializeToString()),
                    "tiled": self._factory(tiled_model(proto).SerializeToString()),
                    "sums": tiled_model(proto, sums=True) if self.mode == "exact" else None,
                }
                self._proto = None
            return self._built

    @property
    def norms(self) -> int:
        """How many instance norms the model has."""
        return self._graphs()["norms"]

    @property
    def stats(self):
        """The session that also outputs every norm's statistics (``stats_model``)."""
        return self._graphs()["stats"]

    @property
    def tiled(self):
        """The session that normalises with given statistics (``tiled_model``)."""
        return self._graphs()["tiled"]

    def _sweep(self, k: int):
        """The session computing norm k's masked sums (built on first use)."""
        if k not in self._sweeps:
            outs = [f"norm{k}_sum", f"norm{k}_sumsq", f"norm{k}_count"]
            self._sweeps[k] = self._factory(pruned(self._graphs()["sums"], outs).SerializeToString())
        return self._sweeps[k]

    def downscaled_statistics(self, x: np.ndarray, extra: dict) -> dict[str, np.ndarray]:
        """Each norm's statistics, from the image area-downscaled by the smallest integer
        factor that fits its longer side into a tile (and keeps H and W multiples)."""
        n, c, h, w = x.shape
        factor = 1
        while max(h, w) / factor > self.tile or (h // factor) % self.multiple or (w // factor) % self.multiple \
                or h % factor or w % factor:
            factor += 1
            if factor > max(h, w):
                raise UsageError(f"no downscale of {h}x{w} fits a {self.tile}-pixel tile in multiples "
                                 f"of {self.multiple}; pick another --tile")
        small = downscale(x, factor).astype(np.float32)
        out = self.stats.run(None, {"image": small, **extra})
        names = [o.name for o in self.stats.get_outputs()]
        return {k: v.astype(np.float32) for k, v in zip(names, out) if k.startswith("norm")}

    def _tiles(self, h: int, w: int):
        th, tw = min(self.tile, h), min(self.tile, w)
        ys, xs = tile_starts(h, th, self.overlap, self.multiple), tile_starts(w, tw, self.overlap, self.multiple)
        for y, (oy0, oy1) in zip(ys, _owned(ys, th, h)):
            for x0, (ox0, ox1) in zip(xs, _owned(xs, tw, w)):
                yield y, x0, th, tw, (oy0, oy1, ox0, ox1)

    def exact_statistics(self, x: np.ndarray, extra: dict) -> dict[str, np.ndarray]:
        n, _, h, w = x.shape
        stats: dict[str, np.ndarray] = {}
        for k in range(self.norms):
            sess = self._sweep(k)
            wanted = {i.name for i in sess.get_inputs()}
            acc = [np.zeros((), dtype=np.float64)] * 3     # sum, sum of squares, count
            for y, x0, th, tw, (oy0, oy1, ox0, ox1) in self._tiles(h, w):
                mask = np.zeros((n, 1, th, tw), dtype=np.float32)
                mask[:, :, oy0:oy1, ox0:ox1] = 1
                feeds = {"image": np.ascontiguousarray(x[:, :, y:y + th, x0:x0 + tw]), "tile_mask": mask,
                         **extra, **stats}
                out = sess.run(None, {k2: v for k2, v in feeds.items() if k2 in wanted})
                acc = [a + o.astype(np.float64) for a, o in zip(acc, out)]
            mean = acc[0] / acc[2]
            stats[f"norm{k}_mean"] = mean.astype(np.float32)
            stats[f"norm{k}_var"] = np.maximum(acc[1] / acc[2] - mean ** 2, 0.0).astype(np.float32)
        return stats

    def run(self, x: np.ndarray, extra: dict | None = None) -> np.ndarray:
        extra = extra or {}
        n, c, h, w = x.shape
        stats = (self.exact_statistics if self.mode == "exact" else self.downscaled_statistics)(x, extra)
        out = None
        weight = np.zeros((h, w), dtype=np.float64)
        for y, x0, th, tw, _ in self._tiles(h, w):
            tile = np.ascontiguousarray(x[:, :, y:y + th, x0:x0 + tw])
            y_out = self.tiled.run(None, {"image": tile, **extra, **stats})[0]
            if out is None:
                out = np.zeros((n, y_out.shape[1], h, w), dtype=np.float64)
            wt = _ramp(th, min(self.overlap, th), y > 0, y + th < h)[:, None] * \
                _ramp(tw, min(self.overlap, tw), x0 > 0, x0 + tw < w)[None, :]
            out[:, :, y:y + th, x0:x0 + tw] += y_out * wt
            weight[y:y + th, x0:x0 + tw] += wt
        if out is None:
            raise ValueError(f"no tiles for an image of {h}x{w}")
        return (out / weight).astype(np.float32)
