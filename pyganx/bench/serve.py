"""`pyganx bench serve`: a bounded load test of the HTTP service on 127.0.0.1, with
micro-batching on and off, and the cold start of `translate`.

For each configuration a fresh ``serve`` process serves one model (by default a
CycleGAN ResnetGenerator, 64 filters and 6 blocks, random weights, exported here; or
``--model``); a client in this process sends ``--requests`` PNG uploads (default 500) with
``--concurrency`` requests in flight (default 16), stopping early at ``--time-cap``
seconds, to ``/v1/translate`` (httpx). Then the same server gets the same load on the
Open Inference Protocol's ``/v2/models/{model}/infer``: the same images as binary
tensors, sent by ``tritonclient.http`` (serve_v2.py says how; without tritonclient
those rows are left out, and the reason is printed). Each load has a warm-up of twice
``--concurrency`` requests first. Reported for each: throughput, p50/p95/p99 latency,
errors, the mean batch size the service ran during the load (from its /metrics), the
CPU time per request of the server process and of the client (this process), and the
server's resident memory when idle after start-up, after the warm-up and after the
load. Client and server share the machine's cores. The server is ``pyganx-runtime
serve`` (``--server pyganx`` for ``pyganx serve``), run by ``--python`` (e.g. a
torch-free environment's interpreter).

Then ``translate`` of one image from a cold start, as a new process: wall time (best
and median of ``--translate-runs``) and peak resident memory, for ``pyganx-runtime
translate`` under ``--python`` and ``pyganx translate`` under this interpreter.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from . import serve_v2

#: --server: the module each command runs as
SERVERS = {"pyganx-runtime": "pyganx_runtime", "pyganx": "pyganx"}
#: the table's name of the /v1 load
V1_ENDPOINT = "/v1/translate, PNG (httpx)"


def export_default_model(path: Path, size: int) -> None:
    import torch

    from ..export.convert import to_onnx
    from ..export.wrappers import ImageGenerator, size_multiple
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


async def _load(url: str, model: str, uploads: list[bytes], requests: int, concurrency: int,
                time_cap: float) -> dict:
    """Sends the uploads to the service at ``url``, for its model ``model``."""
    import httpx

    loop = serve_v2.ClosedLoop(requests, time_cap)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        async def worker() -> None:
            while (i := loop.take()) is not None:
                t0 = time.perf_counter()
                try:
                    r = await client.post(f"/v1/translate/{model}",
                                          files={"image": ("x.png", uploads[i % len(uploads)], "image/png")})
                    code = r.status_code
                except httpx.HTTPError:
                    code = 0
                loop.record(t0, code)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return loop.stats()


def _batches(url: str) -> tuple[float, float]:
    """The server's model runs so far, from its /metrics: (images run, runs)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    fams = {f.name: f for f in text_string_to_metric_families(httpx.get(url + "/metrics").text)}
    s = {x.name.rsplit("_", 1)[1]: x.value for x in fams["pyganx_batch_size"].samples
         if x.name.endswith(("_sum", "_count"))}
    return s["sum"], s["count"]


def _cpu_seconds(pid: int) -> float:
    """A process's CPU time so far (user + system, all its threads), in seconds (Linux;
    NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def _measure(pid: int, url: str, load: Callable[[int], dict], args) -> dict:
    """A warm-up of twice ``--concurrency`` requests, then ``load(--requests)``: its row
    with the mean batch of the runs during the load, the CPU time per request of the
    server and of this process (the client), and the server's memory around it."""
    from pyganx_runtime.serve.process import rss_mib

    load(2 * args.concurrency)
    rss_before = rss_mib(pid)
    images, runs = _batches(url)
    server_cpu, client_cpu = _cpu_seconds(pid), time.process_time()
    result = load(args.requests)
    server_cpu, client_cpu = _cpu_seconds(pid) - server_cpu, time.process_time() - client_cpu
    rss_after = rss_mib(pid)
    images_after, runs_after = _batches(url)
    n = max(result["requests"], 1)
    result.update(mean_batch=round((images_after - images) / max(runs_after - runs, 1), 2),
                  server_cpu_ms=round(server_cpu * 1000 / n, 1), client_cpu_ms=round(client_cpu * 1000 / n, 1),
                  rss_before_mib=round(rss_before, 1), rss_after_mib=round(rss_after, 1))
    return result


def run_config(model: Path, max_batch: int, max_wait_ms: float, args, uploads: list[bytes]) -> list[dict]:
    """One server: the /v1 row, then (with tritonclient) the /v2 row."""
    from pyganx_runtime.serve.process import rss_mib, start_server, stop_server

    proc, url = start_server([model], "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms),
                             "--device", args.device, "--log-level", "warning", python=args.python,
                             module=SERVERS[args.server])
    c, cap = args.concurrency, args.time_cap
    loads = {V1_ENDPOINT: lambda n: asyncio.run(_load(url, model.stem, uploads, n, c, cap))}
    if serve_v2.MISSING is None:
        loads[serve_v2.ENDPOINT] = lambda n: serve_v2.load(url, model.stem, uploads, n, c, cap)
    try:
        time.sleep(1)
        rss_idle = rss_mib(proc.pid)
        rows = []
        for endpoint, load in loads.items():
            row = _measure(proc.pid, url, load, args)
            rows.append({"server": args.server, "endpoint": endpoint, "max_batch": max_batch,
                         "max_wait_ms": max_wait_ms, "rss_idle_mib": round(rss_idle, 1), **row})
        return rows
    finally:
        stop_server(proc)


#: runs argv[1:] as a forked child (stdout discarded), prints its wall seconds and peak RSS
#: (KiB), exits with its status
_LAUNCHER = """
import os, sys, time
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(time.perf_counter() - t0, usage.ru_maxrss)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def cold_translate(python: str, module: str, model: Path, image: Path, out: Path, runs: int) -> dict:
    """``python -m MODULE translate MODEL IMAGE`` as a new process, ``runs`` times: the
    wall times (best, median) and the largest peak resident memory."""
    times, peaks = [], []
    argv = [python, "-m", module, "translate", str(model), str(image), "-o", str(out), "--no-progress",
            "--device", "cpu"]
    for _ in range(runs):
        # Through a small launcher that forks and execs the command: a child forked from
        # this process would report a peak RSS of at least this process's (torch and all)
        r = subprocess.run([sys.executable, "-S", "-c", _LAUNCHER, *argv], capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"{module} translate failed: {r.stderr}")
        seconds, peak_kib = r.stdout.split()
        times.append(float(seconds))
        peaks.append(int(peak_kib) / 1024)
    return {"command": f"{module.replace('_', '-')} translate", "python": python,
            "best_s": round(min(times), 3), "median_s": round(float(np.median(times)), 3),
            "peak_rss_mib": round(max(peaks), 1)}


def _mode(r: dict) -> str:
    return f"on (max {r['max_batch']}, {r['max_wait_ms']:g} ms)" if r["max_batch"] > 1 else "off (max 1)"


def format_table(rows: list[dict]) -> str:
    out = ["| server | micro-batching | endpoint (client) | requests | req/s | p50 ms | p95 ms | p99 ms | errors "
           "| mean batch | CPU ms/request server / client | RSS idle / after warm-up / after (MiB) |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cpu = f"{r['server_cpu_ms']} / {r['client_cpu_ms']}" if "server_cpu_ms" in r else "-"
        out.append(f"| {r['server']} | {_mode(r)} | {r.get('endpoint', V1_ENDPOINT)} "
                   f"| {r['requests']}{' (capped)' if r['capped'] else ''} "
                   f"| {r['throughput_rps']} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | {r['errors']} "
                   f"| {r['mean_batch']} | {cpu} "
                   f"| {r['rss_idle_mib']} / {r['rss_before_mib']} / {r['rss_after_mib']} |")
    return "\n".join(out)


def format_ratios(rows: list[dict]) -> str:
    """The /v2 row's requests/s over the /v1 row's, for each server configuration that
    has both."""
    v1 = {(r["server"], _mode(r)): r for r in rows if r.get("endpoint", V1_ENDPOINT) == V1_ENDPOINT}
    out = []
    for r in rows:
        base = v1.get((r["server"], _mode(r)))
        if r.get("endpoint") == serve_v2.ENDPOINT and base is not None and base["throughput_rps"] > 0:
            out.append(f"/v2 binary vs /v1 PNG requests/s, {r['server']}, micro-batching {_mode(r)}: "
                       f"{r['throughput_rps'] / base['throughput_rps']:.2f}x")
    return "\n".join(out)


def format_translate(rows: list[dict]) -> str:
    out = ["| one image, cold start | best s | median s | peak RSS (MiB) |", "|---|---|---|---|"]
    out += [f"| {r['command']} ({r['python']}) | {r['best_s']} | {r['median_s']} | {r['peak_rss_mib']} |"
            for r in rows]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="pyganx bench serve", description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="an exported translator (default: a random CycleGAN generator)")
    ap.add_argument("--size", type=int, default=64, help="upload size in pixels (square)")
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--time-cap", type=float, default=300,
                    help="seconds per load (each endpoint of each configuration) at most")
    ap.add_argument("--max-batch", type=int, default=8, help="the micro-batching configuration")
    ap.add_argument("--max-wait-ms", type=float, default=10)
    ap.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--server", default="pyganx-runtime", choices=sorted(SERVERS),
                    help="which command serves: pyganx-runtime serve or pyganx serve")
    ap.add_argument("--python", default=sys.executable,
                    help="the interpreter that runs the server and pyganx-runtime translate (e.g. a "
                         "torch-free environment's)")
    ap.add_argument("--translate-runs", type=int, default=5, help="cold starts of translate per command")
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
        if serve_v2.MISSING is not None:
            print(f"pyganx bench serve: no /v2 rows: {serve_v2.MISSING}", file=sys.stderr)
        rows = [*run_config(model, args.max_batch, args.max_wait_ms, args, uploads),
                *run_config(model, 1, 0, args, uploads)]
        image = Path(tmp) / "one.png"
        image.write_bytes(uploads[0])
        cold = [cold_translate(args.python, "pyganx_runtime", model, image, Path(tmp) / "out", args.translate_runs),
                cold_translate(sys.executable, "pyganx", model, image, Path(tmp) / "out", args.translate_runs)]
    import torch

    from .ops import machine_description
    what = args.model or "CycleGAN generator (64 filters, 6 blocks, random weights)"
    print(f"serve load test: {what}, {args.size}x{args.size} PNG uploads (/v1) and the same images as tensors "
          f"(/v2), {args.requests} requests at "
          f"concurrency {args.concurrency}, client and server on {machine_description(torch.device('cpu'))}; "
          f"server run by {args.python}")
    print(format_table(rows))
    print(format_ratios(rows) or f"no /v2 rows: {serve_v2.MISSING}")
    print(format_translate(cold))
    if args.json:
        Path(args.json).write_text(json.dumps({"serve": rows, "translate": cold}, indent=2))
    return 0
