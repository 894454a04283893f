"""`pyganx bench serve`: the table with its /v1 and /v2 rows, the v2/v1 ratio, and the
tensors the /v2 load sends (the PNG uploads' pixels, as the server itself converts
them). No server and no timing here."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pyganx.bench import serve, serve_v2

pytest.importorskip("pyganx_runtime")


def _row(endpoint: str | None, max_batch: int, rps: float) -> dict:
    row = {"server": "pyganx-runtime", "max_batch": max_batch, "max_wait_ms": 10.0 if max_batch > 1 else 0,
           "requests": 500, "capped": False, "throughput_rps": rps, "p50_ms": 300.0, "p95_ms": 350.0,
           "p99_ms": 400.0, "errors": 0, "mean_batch": 7.9, "rss_idle_mib": 160.0, "rss_before_mib": 180.0,
           "rss_after_mib": 181.0}
    if endpoint is not None:
        row.update(endpoint=endpoint, server_cpu_ms=40.5, client_cpu_ms=1.5)
    return row


def test_table_and_ratios_pair_v2_with_v1_of_the_same_configuration():
    rows = [_row(serve.V1_ENDPOINT, 8, 40.0), _row(serve_v2.ENDPOINT, 8, 44.0),
            _row(serve.V1_ENDPOINT, 1, 40.0), _row(serve_v2.ENDPOINT, 1, 30.0)]
    table = serve.format_table(rows).splitlines()
    assert len(table) == 2 + 4
    assert all(line.count("|") == table[0].count("|") for line in table)
    assert "endpoint (client)" in table[0] and serve_v2.ENDPOINT in table[3] and "| 40.5 / 1.5 |" in table[3]
    assert serve.format_ratios(rows).splitlines() == [
        "/v2 binary vs /v1 PNG requests/s, pyganx-runtime, micro-batching on (max 8, 10 ms): 1.10x",
        "/v2 binary vs /v1 PNG requests/s, pyganx-runtime, micro-batching off (max 1): 0.75x"]
    # rows of an older --json (no endpoint, no CPU times) are /v1 rows; without /v2 rows there is no ratio
    old = serve.format_table([_row(None, 8, 40.0)]).splitlines()
    assert serve.V1_ENDPOINT in old[2] and "| - |" in old[2] and old[2].count("|") == old[0].count("|")
    assert serve.format_ratios([_row(None, 8, 40.0)]) == ""


def test_stats_counts_errors_and_the_cap():
    s = serve_v2.stats([0.1, 0.2, 0.3, 0.4], {200: 3, 503: 1}, 2.0, requests=5)
    assert (s["requests"], s["throughput_rps"], s["errors"], s["capped"]) == (4, 2.0, 1, True)
    assert s["p50_ms"] == 250.0


def _metadata(datatype: str, shape: list[int]) -> dict:
    return {"inputs": [{"name": "image", "datatype": datatype, "shape": shape}],
            "outputs": [{"name": "output", "datatype": datatype, "shape": shape}]}


def test_tensors_are_the_uploads_pixels():
    uploads = serve._uploads(8, n=2)
    pixels = [np.asarray(Image.open(io.BytesIO(u)).convert("RGB")) for u in uploads]
    nchw = serve_v2.tensors(uploads, _metadata("FP32", [-1, 3, -1, -1]))
    for x, px in zip(nchw, pixels):
        assert x.dtype == np.float32 and x.shape == (1, 3, 8, 8) and x.flags.c_contiguous
        np.testing.assert_array_equal(x[0], px.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1)
    nhwc = serve_v2.tensors(uploads, _metadata("UINT8", [-1, -1, -1, 3]))
    np.testing.assert_array_equal(nhwc[1], pixels[1][None])
    grey = serve_v2.tensors(uploads, _metadata("FP32", [-1, 1, -1, -1]))
    assert grey[0].shape == (1, 1, 8, 8)
