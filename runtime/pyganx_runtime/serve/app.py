"""The ASGI application behind ``pyganx serve`` (Starlette; uvicorn runs it).

Endpoints (../shared/contracts.md): ``POST /v1/translate/{model}[?domain=NAME]``,
``GET /v1/models``, ``GET /healthz``, ``GET /metrics`` (Prometheus text format) and the
web page at ``GET /``. Every error is JSON ``{"error": "..."}`` with its status code;
no traceback ever reaches a client (unexpected errors are logged on the server and
answered 500). Decisions are written down in docs/serve.md.
"""
from __future__ import annotations

import contextlib
import hmac
import io
import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import UsageError
from ..images import convert_image
from ..translator import NoiseModelError, Translator
from .batcher import Batcher, QueueFull

log = logging.getLogger("pyganx.serve")
STATIC = Path(__file__).parent / "static"
#: the upload formats served, by Pillow's format name
FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
RAW_TYPES = set(FORMATS.values()) | {"image/jpg", "application/octet-stream"}


@dataclass
class ServeConfig:
    """What ``pyganx serve`` is started with (its flags)."""
    max_batch: int = 8
    max_wait_ms: float = 10.0
    max_queue: int = 64
    token: str | None = None
    max_upload_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 4096 * 4096
    tile: int | None = 1024
    overlap: int = 32
    device: str = "auto"
    threads: int | None = None


class ServeError(Exception):
    """An answer other than 200: ``status``, a one-line ``message``, extra ``headers``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


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
        if self.translator is not None:
            tr = self.translator
            inputs, meta = tr.inputs, tr.metadata
            if config.tile and tr.can_tile:     # --with-preprocessing and --static models have no tiled path
                tr.enable_tiling(config.tile, config.overlap)
        self.info = {
            "name": self.name,
            "inputs": inputs,
            "domains": tr.domains if self.translator is not None and tr.takes_domain else [],
            "image_size": int(meta.get("pyganx.image_size", "0")) or None,
            "plugin": meta.get("pyganx.plugin"),
            "generator": meta.get("pyganx.generator"),
            "translates": self.translator is not None,
            "channels": None, "size_multiple": None, "tile": None, "providers": [],
        }
        if self.translator is not None:
            self.info.update(channels=tr.channels, size_multiple=tr.multiple,
                             tile=tr.tiler.tile if tr.tiler is not None else None,
                             providers=tr.providers)
        # a --static model takes exactly its one shape, so one image per run
        max_batch = 1 if self.translator is not None and tr.static_shape else config.max_batch
        self.batcher = Batcher(self._run, max_batch, config.max_wait_ms / 1000, config.max_queue)

    def _run(self, _size, payloads: Sequence[tuple[Image.Image, int | None]]) -> list[tuple[Image.Image, int]]:
        images = [p[0] for p in payloads]
        domains = [p[1] for p in payloads] if self.translator.takes_domain else None
        out = self.translator.translate_batch(images, domains)
        return [(img, len(images)) for img in out]


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


class _Metrics:
    def __init__(self, models: dict[str, Model]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("pyganx_requests", "Translation requests answered, by model and HTTP status",
                                ["model", "code"], registry=r)
        self.errors = Counter("pyganx_request_errors", "Translation requests answered with an error status",
                              ["model", "code"], registry=r)
        self.latency = Histogram("pyganx_request_latency_seconds", "Time from request to answer, translations",
                                 ["model"], registry=r,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60))
        self.batch = Histogram("pyganx_batch_size", "Images per model run", ["model"], registry=r,
                               buckets=(1, 2, 4, 8, 16, 32, 64))
        queue = Gauge("pyganx_queue_depth", "Requests waiting for a model run", ["model"], registry=r)
        for name, m in models.items():
            queue.labels(name).set_function(m.batcher.queued)
            m.batcher.on_batch = self.batch.labels(name).observe


def _accept_format(accept: str) -> tuple[str, str]:
    """The output format a request's Accept header asks for; PNG unless it names JPEG or WebP."""
    best, best_q = ("PNG", "image/png"), -1.0
    for part in accept.split(","):
        fields = [f.strip() for f in part.split(";")]
        media = fields[0].lower()
        q = 1.0
        for f in fields[1:]:
            if f.startswith("q="):
                with contextlib.suppress(ValueError):
                    q = float(f[2:])
        fmt = {"image/png": "PNG", "image/jpeg": "JPEG", "image/jpg": "JPEG", "image/webp": "WEBP"}.get(media)
        if fmt is not None and q > best_q:
            best, best_q = (fmt, FORMATS[fmt]), q
    return best


def decode_image(data: bytes, channels: int, max_pixels: int) -> Image.Image:
    """An uploaded PNG, JPEG or WebP as the model's mode; ServeError 400 (not an image,
    corrupt), 415 (another image format) or 413 (more than ``max_pixels``). The pixel
    count is checked from the header, before anything is decoded."""
    if not data:
        raise ServeError(400, "the upload is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise ServeError(413, f"too many pixels: {e}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ServeError(400, "not an image: send a PNG, JPEG or WebP file") from None
    if im.format not in FORMATS:
        raise ServeError(415, f"{im.format} images are not translated here: send PNG, JPEG or WebP")
    w, h = im.size
    if w * h > max_pixels:
        raise ServeError(413, f"the image has {w}x{h} = {w * h} pixels, more than the limit of {max_pixels}")
    if w < 1 or h < 1:
        raise ServeError(400, "the image is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im.load()
            return convert_image(im, channels)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ServeError(400, f"corrupt {im.format} image ({str(e).strip() or type(e).__name__})") from None


def encode_image(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 95} if fmt in ("JPEG", "WEBP") else {}))
    return buf.getvalue()


def create_app(models: dict[str, Model], config: ServeConfig) -> Starlette:
    """The service for models loaded by ``load_models``."""
    metrics = _Metrics(models)
    state = {"ready": False}

    def check_token(request: Request) -> None:
        if not config.token:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), config.token.encode()):
            raise ServeError(401, "missing or wrong token: send the header 'Authorization: Bearer <token>'",
                             {"WWW-Authenticate": "Bearer"})

    async def read_body(request: Request) -> bytes:
        limit = config.max_upload_bytes
        too_large = ServeError(413, f"the upload is larger than the limit of {limit} bytes")
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise too_large
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    async def upload(request: Request) -> bytes:
        """The image bytes of a request: the multipart field ``image``, or the raw body."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in RAW_TYPES and ctype != "multipart/form-data":
            raise ServeError(415, f"unsupported content type {ctype or '(none)'!r}: send a multipart form with "
                                  f"the field 'image', or the image itself as image/png, image/jpeg or image/webp")
        body = await read_body(request)
        if ctype != "multipart/form-data":
            return body

        async def replay() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}
        try:
            async with Request(request.scope, replay).form(max_files=1, max_fields=8) as form:
                field = form.get("image")
                if not isinstance(field, UploadFile):
                    raise ServeError(400, "the form has no file field 'image'")
                return await field.read()
        except (HTTPException, MultiPartException) as e:
            raise ServeError(400, f"malformed multipart form ({getattr(e, 'detail', None) or e})") from None

    async def translate(request: Request) -> Response:
        name = request.path_params["model"]
        model = models.get(name)
        start = time.perf_counter()
        label = name if model is not None else "-"
        code = 500
        try:
            check_token(request)
            if model is None:
                raise ServeError(404, f"no model named {name!r}; GET /v1/models lists them")
            tr = model.translator
            if tr is None:
                raise ServeError(400, f"{name} is a noise model: it draws images from noise and translates "
                                      f"nothing (`pyganx sample` draws from its run)")
            try:
                domain = tr.domain_index(request.query_params.get("domain"))
            except ValueError as e:
                raise ServeError(400, str(e).replace("--domain", "?domain=")) from None
            data = await upload(request)
            img = await run_in_threadpool(decode_image, data, tr.channels, config.max_pixels)
            try:
                future = model.batcher.submit(img.size, (img, domain))
            except QueueFull:
                raise ServeError(503, f"{name} has {config.max_queue} requests waiting; try again shortly",
                                 {"Retry-After": "1"}) from None
            try:
                out, batch = await future
            except ValueError as e:   # e.g. a --static model and an image of another size
                raise ServeError(400, str(e)) from None
            fmt, media = _accept_format(request.headers.get("accept", ""))
            content = await run_in_threadpool(encode_image, out, fmt)
            code = 200
            return Response(content, media_type=media, headers={"X-Batch-Size": str(batch)})
        except ServeError as e:
            code = e.status
            raise
        finally:
            metrics.requests.labels(label, str(code)).inc()
            if code >= 400:
                metrics.errors.labels(label, str(code)).inc()
            metrics.latency.labels(label).observe(time.perf_counter() - start)

    async def list_models(request: Request) -> Response:
        check_token(request)
        return JSONResponse({"models": [m.info for m in models.values()]})

    async def healthz(_request: Request) -> Response:
        if not state["ready"]:
            return JSONResponse({"status": "starting"}, status_code=503)
        return JSONResponse({"status": "ok", "models": len(models)})

    async def metrics_page(request: Request) -> Response:
        check_token(request)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def index(_request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def serve_error(_request: Request, e: ServeError) -> Response:
        return JSONResponse({"error": e.message}, status_code=e.status, headers=e.headers)

    async def http_error(_request: Request, e: HTTPException) -> Response:
        return JSONResponse({"error": e.detail}, status_code=e.status_code, headers=e.headers)

    async def internal_error(request: Request, e: Exception) -> Response:
        log.error("%s %s failed", request.method, request.url.path, exc_info=e)
        return JSONResponse({"error": "internal error (the server's log has the details)"}, status_code=500)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        for m in models.values():
            m.batcher.start()
        state["ready"] = True
        try:
            yield
        finally:
            state["ready"] = False
            for m in models.values():
                await m.batcher.stop()

    routes = [
        Route("/", index),
        Route("/healthz", healthz),
        Route("/metrics", metrics_page),
        Route("/v1/models", list_models),
        Route("/v1/translate/{model}", translate, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    handlers = {ServeError: serve_error, HTTPException: http_error, Exception: internal_error}
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)
    app.state.models = models
    return app
