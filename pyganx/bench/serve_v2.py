"""The /v2 rows of `pyganx bench serve`: the Open Inference Protocol's infer endpoint,
``POST /v2/models/{model}/infer``, of the same server under the same load as
``/v1/translate``, sent by Triton's own HTTP client (``tritonclient.http``).

The tensors are the same images as the PNG uploads, decoded once up front into the
model's input: float32 NCHW in [-1, 1] (the pixels / 127.5 - 1), shape [1, C, S, S] (or
uint8 NHWC for a --with-preprocessing export), as binary tensor data, with the output
asked for as binary data too. Each image's ``InferInput`` is built once, as each PNG is
encoded once for /v1. A request's latency runs from the send to the output as a numpy
array (``InferResult.as_numpy``).

How the load is driven: one ``InferenceServerClient(concurrency=N)`` (geventhttpclient's
pool of N keep-alive connections) and N greenlets, each of which sends its next request
(``client.infer``, which blocks only its own greenlet) as soon as its last one is
answered. This is the same closed loop as the /v1 client's N asyncio workers over httpx,
so there are always N requests in flight. ``async_infer`` is not used: it sleeps 10 ms
(``gevent.sleep(0.01)``) after every submission. Refilling the slots after a batch of 8
answers would then take 80 ms, with fewer than N in flight. Its latency would also
count the wait until ``get_result`` is called. A thread pool is not used either: the
client is not thread-safe, and one client per thread would put N gevent hubs behind
the GIL.
"""
from __future__ import annotations

import io
import time

import numpy as np

#: why the /v2 rows are left out, when they are (None: tritonclient[http] is installed)
MISSING = None
try:
    import gevent
    import tritonclient.http as th
    from tritonclient.utils import InferenceServerException
except ImportError as e:  # pragma: no cover - depends on the environment
    MISSING = f"tritonclient[http] is not installed ({e}); pip install 'tritonclient[http]'"

ENDPOINT = "/v2 infer, binary tensors (tritonclient.http)"


def stats(latencies: list[float], codes: dict[int, int], wall: float, requests: int) -> dict:
    """A load's row: throughput, latency percentiles (ms), errors (status codes other than
    200; 0 when no answer came), and whether ``--time-cap`` cut it short of ``requests``."""
    lat = np.array(latencies) * 1000
    return {"requests": len(latencies), "seconds": round(wall, 2),
            "throughput_rps": round(len(latencies) / wall, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 1), "p95_ms": round(float(np.percentile(lat, 95)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1),
            "errors": sum(v for k, v in codes.items() if k != 200), "codes": codes,
            "capped": len(latencies) < requests}


class ClosedLoop:
    """The state the workers of one load share: the next request's index, until
    ``requests`` are sent or ``time_cap`` seconds have passed, and each answer's latency
    and status code."""

    def __init__(self, requests: int, time_cap: float) -> None:
        self.requests, self.time_cap = requests, time_cap
        self.latencies: list[float] = []
        self.codes: dict[int, int] = {}
        self.sent = 0
        self.start = time.perf_counter()

    def take(self) -> int | None:
        """The next request's index, or None when the load is over."""
        if self.sent >= self.requests or time.perf_counter() - self.start >= self.time_cap:
            return None
        self.sent += 1
        return self.sent - 1

    def record(self, sent_at: float, code: int) -> None:
        self.latencies.append(time.perf_counter() - sent_at)
        self.codes[code] = self.codes.get(code, 0) + 1

    def stats(self) -> dict:
        return stats(self.latencies, self.codes, time.perf_counter() - self.start, self.requests)


def tensors(uploads: list[bytes], metadata: dict) -> list[np.ndarray]:
    """The PNG uploads as the model's first input takes them (``metadata``: the model's v2
    metadata): float32 NCHW in [-1, 1], or uint8 NHWC; one image each."""
    from PIL import Image

    from pyganx_runtime.images import convert_image
    spec = metadata["inputs"][0]
    nhwc = spec["datatype"] == "UINT8"
    channels = spec["shape"][3 if nhwc else 1]
    channels = 3 if channels == -1 else channels
    out = []
    for data in uploads:
        px = np.asarray(convert_image(Image.open(io.BytesIO(data)), channels), dtype=np.uint8)
        px = px.reshape(px.shape[0], px.shape[1], -1)[None]                 # 1, H, W, C
        out.append(np.ascontiguousarray(px if nhwc else px.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1))
    return out


def _status(e: Exception) -> int:
    s = e.status() if isinstance(e, InferenceServerException) else None
    return int(s) if s and str(s).isdigit() else 0


def load(url: str, model: str, uploads: list[bytes], requests: int, concurrency: int, time_cap: float) -> dict:
    """Sends ``requests`` infer requests (the uploads as tensors) to the service at ``url``
    for its model ``model``, ``concurrency`` in flight, for ``time_cap`` seconds at most."""
    client = th.InferenceServerClient(url.split("://", 1)[-1], concurrency=concurrency,
                                      connection_timeout=60, network_timeout=60)
    try:
        meta = client.get_model_metadata(model)
        name, dtype = meta["inputs"][0]["name"], meta["inputs"][0]["datatype"]
        inputs = []
        for x in tensors(uploads, meta):
            t = th.InferInput(name, list(x.shape), dtype)
            t.set_data_from_numpy(x, binary_data=True)
            inputs.append([t])
        out_name = meta["outputs"][0]["name"]
        outputs = [th.InferRequestedOutput(out_name, binary_data=True)]
        loop = ClosedLoop(requests, time_cap)

        def worker() -> None:
            while (i := loop.take()) is not None:
                t0 = time.perf_counter()
                try:
                    client.infer(model, inputs[i % len(inputs)], outputs=outputs).as_numpy(out_name)
                    code = 200
                except (InferenceServerException, OSError) as e:
                    code = _status(e)
                loop.record(t0, code)
        gevent.joinall([gevent.spawn(worker) for _ in range(concurrency)], raise_error=True)
        return loop.stats()
    finally:
        client.close()


__all__ = ["ENDPOINT", "MISSING", "ClosedLoop", "load", "stats", "tensors"]
