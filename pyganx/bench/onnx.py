"""`pyganx bench onnx`: the CycleGAN generator's inference through every path pyganx offers.

The 9-block ResnetGenerator at 256x256 (``--quick``: 2 blocks at 64x64), batch 1 and 4,
float32, with the same weights throughout:

- PyTorch eager (the plain composition), pyganx's fused ops, torch.compile;
- onnxruntime CPU float32 of ``pyganx export``'s graph, of ``--winograd``'s, and the int8
  QDQ model;
- on a GPU: PyTorch eager in float16, and with onnxruntime-gpu ORT CUDA float32 and
  float16 (``--fp16``'s graph), both through IO binding on CUDA tensors.

Round-robin in one process (pyganx.bench.timing); ratios are against eager. The weights
are random (a trained generator has the same cost; int8's quality is measured by
``pyganx export --int8``, not here), and int8 is calibrated on 8 random inputs.
"""
from __future__ import annotations

import argparse
import copy

import numpy as np
import torch

from ..nn import ResnetGenerator
from .ops import machine_description
from .timing import add_common_args, allocator_for, report, round_robin


def _onnx_sessions(model: torch.nn.Module, size: int, with_int8: bool, cuda: bool) -> dict:
    """name -> onnxruntime session: the exported float32 model on CPU, its int8 twin, and
    on a GPU the float32 and float16 graphs on ORT CUDA."""
    import onnxruntime as ort

    from ..export.convert import ort_session, to_onnx
    from ..export.quantize import quantize
    from ..export.winograd import winograd
    from ..export.wrappers import HalfPrecision, ImageGenerator

    example = torch.rand(2, 3, size, size) * 2 - 1
    blob = to_onnx(ImageGenerator(model).eval(), example, size_multiple=4).SerializeToString()
    fast = to_onnx(ImageGenerator(winograd(model)[0]).eval(), example, size_multiple=4).SerializeToString()
    out = {"ort-cpu": ort_session(blob), "ort-cpu-winograd": ort_session(fast)}
    if with_int8:
        calib = (np.random.default_rng(0).random((8, 3, size, size), dtype=np.float32) * 2 - 1)
        out["ort-int8"] = ort_session(quantize(blob, calib))
    if cuda and "CUDAExecutionProvider" in ort.get_available_providers():
        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()
        half = to_onnx(HalfPrecision(model).eval(), example, size_multiple=4, norm_in_float32=True).SerializeToString()
        out["ort-cuda"] = ort_session(blob, ("CUDAExecutionProvider",))
        out["ort-cuda-fp16"] = ort_session(half, ("CUDAExecutionProvider",))
    return out


def _bound_call(sess, x: torch.Tensor):
    """A call of ``sess`` through IO binding on ``x``'s CUDA memory, writing into a
    preallocated torch tensor: what ``Translator.run_tensor`` does, bound once."""
    from pyganx_runtime.translator import bind_tensors
    y = torch.empty_like(x)
    binding = bind_tensors(sess, x, y)

    def run():
        sess.run_with_iobinding(binding)
        return y
    return run


def bench(size: int, n_blocks: int, batches: list[int], device: torch.device, rounds: int,
          use_compile: bool, with_int8: bool) -> list[dict]:
    torch.manual_seed(0)
    eager = ResnetGenerator(3, 3, 64, n_blocks, fused=False).eval()
    fused = ResnetGenerator(3, 3, 64, n_blocks, fused=True).eval()
    fused.load_state_dict(eager.state_dict())
    sessions = _onnx_sessions(eager, size, with_int8, device.type == "cuda")
    eager, fused = eager.to(device), fused.to(device)
    compiled = torch.compile(copy.deepcopy(eager)) if use_compile else None
    eager_half = copy.deepcopy(eager).half() if device.type == "cuda" else None
    rows = []
    for n in batches:
        x = torch.rand(n, 3, size, size, device=device) * 2 - 1
        xn = x.cpu().numpy()
        cands = {}

        def torch_call(m, inp=x):
            def run():
                with torch.inference_mode():
                    return m(inp)
            return run
        cands["eager"] = torch_call(eager)
        cands["pyganx"] = torch_call(fused)
        if compiled is not None:
            cands["compile"] = torch_call(compiled)
        if device.type == "cuda":
            cands["eager-fp16"] = torch_call(eager_half, x.half())
        for name, sess in sessions.items():
            if name.startswith("ort-cuda"):         # device-resident input and output
                cands[name] = _bound_call(sess, x)
            else:
                cands[name] = (lambda s=sess, xn=xn: s.run(None, {"image": xn}))
        t = round_robin(cands, rounds=rounds, warmup=2, device=device)
        base = t["eager"].best_ms
        for name, tm in t.items():
            rows.append({"size": size, "batch": n, "path": name, "best_ms": round(tm.best_ms, 2),
                         "median_ms": round(tm.median_ms, 2), "vs_eager": round(base / tm.best_ms, 3)})
    return rows


def format_table(rows: list[dict]) -> str:
    out = ["| size | batch | path | best ms | median ms | speed vs eager |", "|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['size']} | {r['batch']} | {r['path']} | {r['best_ms']:.1f} | {r['median_ms']:.1f} "
                   f"| {r['vs_eager']:.2f}x |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="pyganx bench onnx", description=__doc__.splitlines()[0])
    add_common_args(ap)
    ap.add_argument("--no-int8", action="store_true", help="skip the int8 model")
    args = ap.parse_args(argv)
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        print("pyganx bench onnx: needs onnxruntime: pip install 'pyganx[cpu]' (or [gpu])")
        return 1
    tuned = allocator_for(args)
    dev = torch.device(args.device)
    size, blocks = (64, 2) if args.quick else (256, 9)
    rounds = args.rounds or (3 if args.quick else (20 if dev.type == "cuda" else 5))
    rows = bench(size, blocks, [1, 4], dev, rounds, not args.no_compile, not args.no_int8)
    report(f"CycleGAN generator ({blocks} blocks, {size}x{size}, float32, random weights) on "
           f"{machine_description(dev)}", rounds, tuned, format_table(rows), rows, args.json)
    return 0
