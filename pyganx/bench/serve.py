"""`pyganx bench serve`: a bounded load test of `pyganx serve` on 127.0.0.1, with
micro-batching on and off.

For each configuration a fresh `pyganx serve` process serves one model (by default a
CycleGAN ResnetGenerator, 64 filters and 6 blocks, random weights, exported here; or
``--model``); a client in this process sends ``--requests`` PNG uploads (default 500) with
``--concurrency`` requests in flight (default 16), stopping early at ``--time-cap``
seconds. Reported: throughput, p50/p95/p99 latency, errors, the mean batch size the
service ran (from its /metrics) and the server's resident memory after a warm-up and
after the run. Client and server share the machine's cores.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

LOOPBACK = "127.0.0.1"


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def export_default_model(path: Path, size: int) -> None:
    import torch

    from ..export.exporter import ImageGenerator, size_multiple, to_onnx
    from ..nn import ResnetGenerator
    torch.manual_seed(0)
    net = ResnetGenerator(3, 3, 64, 6).eval()
    example = torch.rand(2, 3, size, size) * 2 - 1
    path.write_bytes(to_onnx(ImageGenerator(net).eval(), example, size_multiple=size_multiple(net))
                     .SerializeToString())


def _uploads(size: int, n: int = 16) -> list[bytes]:
    from PIL import Image
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


async def _load(url: str, uploads: list[bytes], requests: int, concurrency: int, time_cap: float) -> dict:
    import httpx

    latencies: list[float] = []
    codes: dict[int, int] = {}
    next_index = 0
    start = time.perf_counter()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        async def worker() -> None:
            nonlocal next_index
            while next_index < requests and time.perf_counter() - start < time_cap:
                i = next_index
                next_index += 1
                t0 = time.perf_counter()
                try:
                    r = await client.post("/v1/translate/model",
                                          files={"image": ("x.png", uploads[i % len(uploads)], "image/png")})
                    code = r.status_code
                except httpx.HTTPError:
                    code = 0
                latencies.append(time.perf_counter() - t0)
                codes[code] = codes.get(code, 0) + 1
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    lat = np.array(latencies) * 1000
    return {"requests": len(latencies), "seconds": round(wall, 2),
            "throughput_rps": round(len(latencies) / wall, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 1), "p95_ms": round(float(np.percentile(lat, 95)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1),
            "errors": sum(v for k, v in codes.items() if k != 200), "codes": codes,
            "capped": len(latencies) < requests}


def start_server(models: list, *flags: str, timeout: float = 120) -> tuple[subprocess.Popen, str]:
    """``pyganx serve MODELS --port <free> FLAGS`` in a subprocess (stdout and stderr in
    one pipe), once /healthz answers 200: (the process, its URL). Raises RuntimeError,
    with what the server printed, when it exits or does not answer in ``timeout`` s."""
    import httpx

    port = _free_port()
    url = f"http://{LOOPBACK}:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "pyganx", "serve", *map(str, models), "--host", LOOPBACK,
                             "--port", str(port), *flags], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"pyganx serve did not start: {proc.stdout.read()}")
        time.sleep(0.2)


def stop_server(proc: subprocess.Popen) -> str:
    """Stops it (SIGTERM, then SIGKILL after 20 s); what it printed."""
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
    return proc.stdout.read()


def run_config(model: Path, max_batch: int, max_wait_ms: float, args, uploads: list[bytes]) -> dict:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    proc, url = start_server([model], "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms),
                             "--device", args.device, "--log-level", "warning")
    try:
        asyncio.run(_load(url, uploads, 2 * args.concurrency, args.concurrency, args.time_cap))   # warm-up
        rss_before = _rss_mib(proc.pid)
        result = asyncio.run(_load(url, uploads, args.requests, args.concurrency, args.time_cap))
        rss_after = _rss_mib(proc.pid)
        fams = {f.name: f for f in text_string_to_metric_families(httpx.get(url + "/metrics").text)}
        s = {x.name.rsplit("_", 1)[1]: x.value for x in fams["pyganx_batch_size"].samples
             if x.name.endswith(("_sum", "_count"))}
        result.update(max_batch=max_batch, max_wait_ms=max_wait_ms,
                      mean_batch=round(s["sum"] / max(s["count"], 1), 2),
                      rss_before_mib=round(rss_before, 1), rss_after_mib=round(rss_after, 1))
        return result
    finally:
        stop_server(proc)


def format_table(rows: list[dict]) -> str:
    out = ["| micro-batching | requests | req/s | p50 ms | p95 ms | p99 ms | errors | mean batch "
           "| RSS before → after (MiB) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mode = f"on (max {r['max_batch']}, {r['max_wait_ms']:g} ms)" if r["max_batch"] > 1 else "off (max 1)"
        out.append(f"| {mode} | {r['requests']}{' (capped)' if r['capped'] else ''} | {r['throughput_rps']} "
                   f"| {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | {r['errors']} | {r['mean_batch']} "
                   f"| {r['rss_before_mib']} → {r['rss_after_mib']} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="pyganx bench serve", description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="an exported translator (default: a random CycleGAN generator)")
    ap.add_argument("--size", type=int, default=64, help="upload size in pixels (square)")
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--time-cap", type=float, default=300, help="seconds per configuration at most")
    ap.add_argument("--max-batch", type=int, default=8, help="the micro-batching configuration")
    ap.add_argument("--max-wait-ms", type=float, default=10)
    ap.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args(argv)
    try:
        import httpx  # noqa: F401
        import onnxruntime  # noqa: F401
        import starlette  # noqa: F401
    except ImportError as e:
        print(f"pyganx bench serve: needs the serve and cpu extras and httpx ({e})", file=sys.stderr)
        return 1
    uploads = _uploads(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else Path(tmp) / "model.onnx"
        if not args.model:
            export_default_model(model, args.size)
        rows = [run_config(model, args.max_batch, args.max_wait_ms, args, uploads),
                run_config(model, 1, 0, args, uploads)]
    from .ops import machine_description
    import torch
    what = args.model or "CycleGAN generator (64 filters, 6 blocks, random weights)"
    print(f"pyganx serve load test: {what}, {args.size}x{args.size} PNG uploads, {args.requests} requests at "
          f"concurrency {args.concurrency}, client and server on {machine_description(torch.device('cpu'))}")
    print(format_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0
