"""The handlers of the service's routes (docs/serve.md, "API"): translation, the model
list, health, metrics and the web page."""
from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Awaitable
from pathlib import Path

from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.types import Message

from .config import ServeConfig
from .limits import FORMATS, ServeError, check_token, decode_image, enqueue, read_body
from .metrics import Metrics
from .models import Model

STATIC = Path(__file__).parent / "static"
RAW_TYPES = set(FORMATS.values()) | {"image/jpg", "application/octet-stream"}
#: what an Accept header may name, as Pillow's format name
_ACCEPTED = {"image/png": "PNG", "image/jpeg": "JPEG", "image/jpg": "JPEG", "image/webp": "WEBP"}


def accept_format(accept: str) -> tuple[str, str]:
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
        fmt = _ACCEPTED.get(media)
        if fmt is not None and q > best_q:
            best, best_q = (fmt, FORMATS[fmt]), q
    return best


def encode_image(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 95} if fmt in ("JPEG", "WEBP") else {}))
    return buf.getvalue()


async def upload(request: Request, max_bytes: int) -> bytes:
    """The image bytes of a request: the multipart field ``image``, or the raw body."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in RAW_TYPES and ctype != "multipart/form-data":
        raise ServeError(415, f"unsupported content type {ctype or '(none)'!r}: send a multipart form with "
                              f"the field 'image', or the image itself as image/png, image/jpeg or image/webp")
    body = await read_body(request, max_bytes)
    if ctype != "multipart/form-data":
        return body

    async def replay() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}
    try:
        async with Request(request.scope, replay).form(max_files=1, max_fields=8) as form:
            field = form.get("image")
            if not isinstance(field, UploadFile):
                raise ServeError(400, "the form has no file field 'image'")
            return await field.read()
    except (HTTPException, MultiPartException) as e:
        raise ServeError(400, f"malformed multipart form ({getattr(e, 'detail', None) or e})") from None


class Routes:
    """The handlers, over the loaded models; ``ready`` is what ``/healthz`` answers."""

    def __init__(self, models: dict[str, Model], config: ServeConfig) -> None:
        self.models = models
        self.config = config
        self.metrics = Metrics(models)
        self.ready = False

    async def counted(self, name: str, model: Model | None, answer: Awaitable[Response]) -> Response:
        """``await answer``, counted in the metrics of model ``name`` (``-`` when no
        such model is served) with its status and time."""
        start = time.perf_counter()
        code = 500
        try:
            response = await answer
            code = response.status_code
            return response
        except ServeError as e:
            code = e.status
            raise
        finally:
            self.metrics.answered(name if model is not None else "-", code, time.perf_counter() - start)

    async def translate(self, request: Request) -> Response:
        name = request.path_params["model"]
        model = self.models.get(name)
        return await self.counted(name, model, self._translate(request, name, model))

    async def _translate(self, request: Request, name: str, model: Model | None) -> Response:
        config = self.config
        check_token(request, config.token)
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
        data = await upload(request, config.max_upload_bytes)
        img = await run_in_threadpool(decode_image, data, tr.channels, config.max_pixels)
        future = enqueue(model.batcher, img.size, (img, domain), name)
        try:
            out, batch = await future
        except ValueError as e:   # e.g. a --static model and an image of another size
            raise ServeError(400, str(e)) from None
        fmt, media = accept_format(request.headers.get("accept", ""))
        content = await run_in_threadpool(encode_image, out, fmt)
        return Response(content, media_type=media, headers={"X-Batch-Size": str(batch)})

    async def list_models(self, request: Request) -> Response:
        check_token(request, self.config.token)
        return JSONResponse({"models": [m.info for m in self.models.values()]})

    async def healthz(self, _request: Request) -> Response:
        if not self.ready:
            return JSONResponse({"status": "starting"}, status_code=503)
        return JSONResponse({"status": "ok", "models": len(self.models)})

    async def metrics_page(self, request: Request) -> Response:
        check_token(request, self.config.token)
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def index(self, _request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")


__all__ = ["RAW_TYPES", "STATIC", "Routes", "accept_format", "encode_image", "upload"]
