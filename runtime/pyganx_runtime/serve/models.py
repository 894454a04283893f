"""The models a service holds: each loaded once (``Model``), named by its file, with its
``/v1/models`` entry and its batcher."""
from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import metadata as keys
from ..errors import UsageError
from ..tensors import TensorSpec, specs_from_onnx, specs_from_session
from ..translator import NoiseModelError, Translator
from .batcher import Batcher
from .config import ServeConfig


@dataclass(frozen=True)
class TensorKey:
    """The batcher's key of a v2 request (tensors in, tensors out): requests whose images
    have the same shape, less the batch dimension, and the same datatype run together.
    Image requests (keyed by the image's size) never share a run with them."""
    shape: tuple[int, ...]
    datatype: str


class Model:
    """One loaded model: its translator (None for a noise model), its ``/v1/models``
    entry, its tensors (``inputs``, ``outputs``: as v2 metadata gives them) and its
    batcher."""

    def __init__(self, path: str | Path, config: ServeConfig) -> None:
        self.path = Path(path)
        self.name = self.path.stem
        self.translator: Translator | None = None
        try:
            self.translator = Translator(self.path, config.device, config.threads)
        except NoiseModelError as e:
            inputs, meta = e.inputs, e.metadata
        tr = self.translator
        if tr is not None:
            inputs, meta = tr.inputs, tr.metadata
            if config.tile and tr.can_tile:     # --with-preprocessing and --static models have no tiled path
                tr.enable_tiling(config.tile, config.overlap)
        self.info = _entry(self.name, tr, inputs, meta)
        self.inputs, self.outputs = _tensors(self.path, tr)
        # a --static model takes exactly its one shape, so one image per run
        max_batch = 1 if tr is not None and tr.static_shape else config.max_batch
        self.batcher = Batcher(self._run, max_batch, config.max_wait_ms / 1000, config.max_queue)

    def _run(self, key: Hashable, payloads: Sequence[Any]) -> list[Any]:
        """One batch: of images (payloads ``(image, domain)``) or, for a TensorKey, of
        arrays (payloads ``(images, domains)``, several images each)."""
        tr = self.translator
        if tr is None:
            raise RuntimeError(f"{self.name} is a noise model: nothing to translate")
        if isinstance(key, TensorKey):
            return self._run_arrays(tr, payloads)
        images = [p[0] for p in payloads]
        domains = [p[1] for p in payloads] if tr.takes_domain else None
        out = tr.translate_batch(images, domains)
        return [(img, len(images)) for img in out]

    @staticmethod
    def _run_arrays(tr: Translator, payloads: Sequence[tuple[np.ndarray, np.ndarray | None]]
                    ) -> list[tuple[np.ndarray, int]]:
        counts = [len(p[0]) for p in payloads]
        x = np.concatenate([p[0] for p in payloads])
        domains = [int(d) for p in payloads for d in p[1]] if tr.takes_domain else None  # type: ignore[union-attr]
        y = tr(x, domains)
        return [(part, len(x)) for part in np.split(y, np.cumsum(counts)[:-1])]


def _tensors(path: Path, tr: Translator | None) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """A model's inputs and outputs: from its session, or, for a noise model (which has
    none here), from the ONNX file."""
    if tr is not None:
        return specs_from_session(tr.session.get_inputs()), specs_from_session(tr.session.get_outputs())
    import onnx
    graph = onnx.load(str(path), load_external_data=False).graph
    return specs_from_onnx(graph.input), specs_from_onnx(graph.output)


def _entry(name: str, tr: Translator | None, inputs: list[str], meta: dict[str, str]) -> dict[str, Any]:
    """A model's entry in ``GET /v1/models`` (docs/serve.md)."""
    info: dict[str, Any] = {
        "name": name,
        "inputs": inputs,
        "domains": tr.domains if tr is not None and tr.takes_domain else [],
        "image_size": int(meta.get(keys.IMAGE_SIZE, "0")) or None,
        "plugin": meta.get(keys.PLUGIN),
        "generator": meta.get(keys.GENERATOR),
        "translates": tr is not None,
        "channels": None, "size_multiple": None, "tile": None, "providers": [],
    }
    if tr is not None:
        info.update(channels=tr.channels, size_multiple=tr.multiple,
                    tile=tr.tiler.tile if tr.tiler is not None else None, providers=tr.providers)
    return info


def load_models(paths: Sequence[str | Path], config: ServeConfig) -> dict[str, Model]:
    """Each model once, named by its file name without ``.onnx``."""
    models: dict[str, Model] = {}
    for p in paths:
        m = Model(p, config)
        if m.name in models:
            raise UsageError(f"two models are named {m.name!r} ({models[m.name].path} and {m.path}); "
                             f"rename one: a model's URL is /v1/translate/<file name without .onnx>")
        models[m.name] = m
    if not models:
        raise UsageError("no models to serve")
    return models


__all__ = ["Model", "load_models"]
