"""The Open Inference Protocol ("v2") beside the service's own API: the HTTP endpoints
of KServe's and Triton's inference protocol, so that their clients (``tritonclient.http``
among them) work against ``serve`` unchanged (docs/serve.md, "Open Inference Protocol").

- ``GET /v2``: the server's name, version and extensions;
- ``GET /v2/health/live``, ``GET /v2/health/ready``;
- ``GET /v2/models/{m}[/versions/1]``: the model's tensors (names, datatypes, shapes with
  -1 for dynamic dimensions), ``GET /v2/models/{m}[/versions/1]/ready``;
- ``POST /v2/models/{m}[/versions/1]/infer``: the model's own tensors in and out, as
  JSON or as binary data (v2_codec.py). A translator's ``image`` input is what the ONNX
  model takes (float32 NCHW in [-1, 1], or uint8 NHWC for a --with-preprocessing
  export) at any size: it is padded and tiled as ``Translator`` does. StarGAN's
  ``domain`` (int64, one per image) is a second input.

Inference requests share the image endpoint's batcher (requests of one shape run as
one batch of at most ``--max-batch`` images), limits (token 401, body size and pixels
413, a full queue 503 with Retry-After) and metrics. The JSON part of a request, and
JSON outputs, are held to a quarter of the upload limit (v2_codec.py); at most
``DECODERS`` requests are decoded or answers encoded at a time. Each model has one
version, ``1``. Readiness false is 400, as the protocol asks (a 4xx status).
"""
from __future__ import annotations

import asyncio
import zlib

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .._version import __version__
from .limits import ServeError, check_pixels, check_token, enqueue, read_body
from .models import Model, TensorKey
from .routes import Routes
from .v2_codec import HEADER_LENGTH, InferRequest, decode_request, encode_response, json_output_fits

#: the protocol's extensions served here
EXTENSIONS = ["binary_tensor_data"]
#: the one version of each model
VERSION = "1"
#: requests decoded, or answers encoded, at a time (each holds its body and arrays)
DECODERS = 4


def _decompressed(body: bytes, encoding: str, limit: int) -> bytes:
    """A body sent with Content-Encoding gzip or deflate, decompressed; 413 as soon as it
    grows past ``limit`` bytes."""
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise ServeError(415, f"Content-Encoding {encoding!r} is not supported: send gzip, deflate or none")
    d = zlib.decompressobj(31 if encoding == "gzip" else 15)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error:
        raise ServeError(400, f"the body is not valid {encoding} data") from None
    if len(out) > limit or d.unconsumed_tail:
        raise ServeError(413, f"the decompressed body is larger than the limit of {limit} bytes")
    if not d.eof:
        raise ServeError(400, f"the {encoding} data is cut off")
    return out


class V2Routes:
    """The v2 handlers, over the service's Routes (models, config, metrics, readiness)."""

    def __init__(self, routes: Routes) -> None:
        self.routes = routes
        self.decoding = asyncio.Semaphore(DECODERS)
        #: the limit of a request's JSON part and of JSON outputs
        self.max_json_bytes = routes.config.max_upload_bytes // 4

    def _model(self, request: Request) -> tuple[str, Model]:
        name = request.path_params["model"]
        model = self.routes.models.get(name)
        if model is None:
            raise ServeError(404, f"unknown model {name!r}; GET /v1/models lists them")
        version = request.path_params.get("version", VERSION)
        if version != VERSION:
            raise ServeError(404, f"model {name!r} has no version {version!r}; it has one version, {VERSION}")
        return name, model

    async def server_metadata(self, request: Request) -> Response:
        check_token(request, self.routes.config.token)
        return JSONResponse({"name": "pyganx-runtime", "version": __version__, "extensions": EXTENSIONS})

    async def live(self, _request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(self, _request: Request) -> Response:
        return JSONResponse({"ready": self.routes.ready}, status_code=200 if self.routes.ready else 400)

    async def model_metadata(self, request: Request) -> Response:
        check_token(request, self.routes.config.token)
        name, model = self._model(request)
        return JSONResponse({"name": name, "versions": [VERSION], "platform": "onnxruntime_onnx",
                             "inputs": [t.as_dict() for t in model.inputs],
                             "outputs": [t.as_dict() for t in model.outputs]})

    async def model_ready(self, request: Request) -> Response:
        check_token(request, self.routes.config.token)
        name, model = self._model(request)
        ready = self.routes.ready and model.translator is not None
        return JSONResponse({"name": name, "ready": ready}, status_code=200 if ready else 400)

    async def infer(self, request: Request) -> Response:
        name = request.path_params["model"]
        return await self.routes.counted(name, self.routes.models.get(name), self._infer(request))

    async def _infer(self, request: Request) -> Response:
        config = self.routes.config
        check_token(request, config.token)
        name, model = self._model(request)
        tr = model.translator
        if tr is None:
            raise ServeError(400, f"{name} is a noise model: it draws images from noise and translates nothing")
        body = await read_body(request, config.max_upload_bytes)
        body = _decompressed(body, request.headers.get("content-encoding", "").strip().lower(),
                             config.max_upload_bytes)
        async with self.decoding:
            req = await run_in_threadpool(decode_request, body, request.headers.get(HEADER_LENGTH),
                                          model.inputs, model.outputs, self.max_json_bytes)
        del body
        images = req.inputs[model.inputs[0].name]
        domains = self._domains(req, model, len(images))
        self._check_size(images, model)
        out_channels = model.outputs[0].shape[-1 if tr.preprocessed else 1]
        out_channels = out_channels if out_channels > 0 else tr.channels
        json_output_fits(req, images.size // tr.channels * out_channels, self.max_json_bytes)
        key = TensorKey(images.shape[1:], images.dtype.str)
        future = enqueue(model.batcher, key, (images, domains), name, len(images))
        try:
            out, batch = await future
        except ValueError as e:
            raise ServeError(400, str(e)) from None
        async with self.decoding:
            content, headers = await run_in_threadpool(encode_response, name, req, {model.outputs[0].name: out})
        return Response(content, headers={**headers, "X-Batch-Size": str(batch)})

    def _check_size(self, images: np.ndarray, model: Model) -> None:
        """At least one image, at most ``--max-batch`` (1 for a --static model), none
        empty, none over ``--max-pixels``."""
        tr = model.translator
        assert tr is not None
        n = len(images)
        most = model.batcher.max_batch
        if not 1 <= n <= most:
            raise ServeError(400, f"a request holds 1 to {most} images here (--max-batch), got {n}")
        h, w = images.shape[1:3] if tr.preprocessed else images.shape[2:4]
        if h < 1 or w < 1:
            raise ServeError(400, f"the images are empty ({h}x{w})")
        check_pixels(w, h, self.routes.config.max_pixels, "the images have")

    @staticmethod
    def _domains(req: InferRequest, model: Model, n: int) -> np.ndarray | None:
        """A StarGAN model's target domains, one per image, each a known index."""
        tr = model.translator
        if tr is None or not tr.takes_domain:
            return None
        d = req.inputs["domain"].reshape(-1)
        if len(d) != n:
            raise ServeError(400, f"input 'domain' holds {len(d)} target domains for {n} images")
        bad = [int(k) for k in d if not 0 <= k < len(tr.domains)]
        if bad:
            known = ", ".join(f"{i} ({n})" for i, n in enumerate(tr.domains))
            raise ServeError(400, f"input 'domain': {bad[0]} is no domain index; the model's domains are {known}")
        return d


__all__ = ["EXTENSIONS", "VERSION", "V2Routes"]
