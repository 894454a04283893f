"""The models a service holds: each loaded once (``Model``), named by its file, with its
``/v1/models`` entry and its batcher."""
from __future__ import annotations

from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from .. import metadata as keys
from ..errors import UsageError
from ..translator import NoiseModelError, Translator
from .batcher import Batcher
from .config import ServeConfig


class Model:
    """One loaded model: its translator (None for a noise model), its ``/v1/models``
    entry and its batcher."""

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
        # a --static model takes exactly its one shape, so one image per run
        max_batch = 1 if tr is not None and tr.static_shape else config.max_batch
        self.batcher = Batcher(self._run, max_batch, config.max_wait_ms / 1000, config.max_queue)

    def _run(self, _size: Hashable, payloads: Sequence[tuple[Image.Image, int | None]]
             ) -> list[tuple[Image.Image, int]]:
        tr = self.translator
        if tr is None:
            raise RuntimeError(f"{self.name} is a noise model: nothing to translate")
        images = [p[0] for p in payloads]
        domains = [p[1] for p in payloads] if tr.takes_domain else None
        out = tr.translate_batch(images, domains)
        return [(img, len(images)) for img in out]


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
