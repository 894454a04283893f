"""The build: CUDA kernels compiled where a toolkit is present, the CPU capability
variants, and the package working without its extension."""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pyganx

ROOT = Path(__file__).resolve().parents[1]


def _nvcc_present() -> bool:
    home = os.environ.get("CUDA_HOME")
    return bool(home and Path(home, "bin", "nvcc").exists()) or shutil.which("nvcc") is not None


def test_build_info_fields():
    info = pyganx.build_info()
    assert info["version"] == pyganx.__version__
    assert info["extension"] is True, info["reason"]
    assert info["torch_version"] == torch.__version__
    assert info["compiler"]
    assert "DEFAULT" in info["cpu_capabilities"].split(";")
    assert info["cpu_capability"] in info["cpu_capabilities"].split(";")


@pytest.mark.skipif(not _nvcc_present() or os.environ.get("PYGANX_CPU_ONLY") == "1",
                    reason="no CUDA toolkit (nvcc) here, or a CPU-only build was asked for")
def test_cuda_kernels_were_compiled_where_a_toolkit_is_present():
    # Proves in CI (which has nvcc but no GPU) that the .cu files build.
    info = pyganx.build_info()
    assert info["cuda"] is True
    assert info["cuda_version"] and info["cuda_arch_list"]
    assert torch.ops.pyganx.instance_norm_relu.default.has_kernel_for_dispatch_key(
        torch._C.DispatchKey.CUDA)


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86-64 only")
def test_simd_variants_are_built_on_x86():
    assert pyganx.build_info()["cpu_capabilities"].split(";") == ["DEFAULT", "AVX2", "AVX512"]


def _run(code: str, **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=full_env, cwd=ROOT, timeout=300)


_CHECK_CAPABILITY = """
import json, torch, torch.nn.functional as F, pyganx
from pyganx.ops import instance_norm_relu
torch.manual_seed(0)
worst = 0.0
for shape in [(2, 3, 5, 7), (1, 40, 33, 17), (1, 1, 200, 301)]:
    for cl in (False, True):
        for dtype in (torch.float32, torch.float64, torch.bfloat16):
            x = torch.randn(shape, dtype=torch.float64).to(dtype)
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            w = torch.rand(shape[1]) + 0.5
            b = torch.randn(shape[1])
            xg = x.detach().requires_grad_()
            out = instance_norm_relu(xg, w, b)
            out.backward(torch.ones_like(out))
            x64 = x.double().contiguous().requires_grad_()
            ref = F.relu(F.instance_norm(x64, weight=w.double(), bias=b.double()))
            ref.backward(torch.ones_like(ref))
            tol = {torch.float32: 1e-4, torch.float64: 1e-9, torch.bfloat16: 0.05}[dtype]
            err = max((out.double() - ref).abs().max().item() / (1 + ref.abs().max().item()),
                      (xg.grad.double() - x64.grad).abs().max().item() / (1 + x64.grad.abs().max().item()))
            assert err < tol, (shape, cl, dtype, err)
print(json.dumps(pyganx.build_info()["cpu_capability"]))
"""


@pytest.mark.parametrize("capability", ["default", "avx2", "avx512"])
def test_each_cpu_capability_variant_is_correct(capability):
    supported = torch.backends.cpu.get_cpu_capability()
    order = ["DEFAULT", "AVX2", "AVX512"]
    if supported not in order or order.index(capability.upper()) > order.index(supported):
        pytest.skip(f"this CPU supports {supported}, not {capability.upper()}")
    if capability != "default" and capability.upper() not in pyganx.build_info()["cpu_capabilities"]:
        pytest.skip(f"{capability} variant not built on this platform")
    proc = _run(_CHECK_CAPABILITY, ATEN_CPU_CAPABILITY=capability)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == capability.upper()


def test_package_works_with_the_extension_disabled():
    code = """
import warnings, json
warnings.simplefilter("error")   # a deliberate opt-out must not warn
import torch, torch.nn.functional as F, pyganx
from pyganx.nn import InstanceNormReLU
info = pyganx.build_info()
assert info["extension"] is False and "PYGANX_DISABLE_EXTENSION" in info["reason"], info
assert not hasattr(torch.ops.pyganx, "instance_norm_relu") or not pyganx.extension_available()
m = InstanceNormReLU(4, affine=True)
x = torch.randn(2, 4, 6, 5, requires_grad=True)
y = m(x)
ref = F.relu(F.instance_norm(x, weight=m.weight, bias=m.bias))
torch.testing.assert_close(y, ref, rtol=0, atol=0)
y.sum().backward()
assert x.grad is not None and m.weight.grad is not None
print("ok")
"""
    proc = _run(code, PYGANX_DISABLE_EXTENSION="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")


def test_torch_mismatch_is_reported_not_a_symbol_error(tmp_path):
    # A build for another torch version: the package imports, warns with the rebuild
    # hint, and uses the reference path instead of loading the extension.
    pkg = tmp_path / "pyganx"
    shutil.copytree(ROOT / "pyganx", pkg, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    (pkg / "_build_meta.py").write_text("TORCH_VERSION = '1.0.0'\nWITH_CUDA = False\n")
    code = """
import warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import pyganx
msgs = [str(w.message) for w in caught if "pyganx" in str(w.message)]
assert any("built against torch 1.0.0" in m and "rebuild" in m for m in msgs), msgs
assert pyganx.build_info()["extension"] is False
import torch
print(pyganx.ops.instance_norm_relu(torch.randn(1, 2, 3, 3)).shape)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torch.Size([1, 2, 3, 3])" in proc.stdout
