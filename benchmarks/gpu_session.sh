#!/usr/bin/env bash
# One GPU session, as run on the lent H100/H200 machine (torch preinstalled, no network):
# build the extension against that machine's torch, run the CUDA cases of the op tests,
# then the network, op, profile and memory benchmarks and a bf16/channels_last training run. Everything lands in $OUT (default /tmp/pyganx-gpu).
#   usage: bash benchmarks/gpu_session.sh [--tests-only]
set -u
OUT=${OUT:-/tmp/pyganx-gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} FORCE_CUDA=1
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
nvidia-smi -L | tee "$OUT/gpu.txt"
start=$(date +%s)
if ! $PY setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then
  tail -60 "$OUT/build.log"; exit 1
fi
echo "build: $(( $(date +%s) - start )) s"
$PY -c 'import json, pyganx; print(json.dumps(pyganx.build_info()))' | tee "$OUT/build_info.json"
timeout "${TEST_TIMEOUT:-240}" $PY -m pytest -q -p no:cacheprovider --maxfail=30 -k cuda \
  tests/test_residual_block.py tests/test_instance_norm_relu.py tests/test_op_registration.py \
  > "$OUT/tests.txt" 2>&1
echo "tests rc $?"; grep -E "passed|failed|Error|error" "$OUT/tests.txt" | tail -25
# the opt-in ring forward (gather + bmm + scatter, csrc/ops/cuda/reflect_ring_kernel.cu)
PYGANX_RING_FORWARD_KERNEL=1 timeout "${TEST_TIMEOUT:-240}" $PY -m pytest -q -p no:cacheprovider \
  --maxfail=30 -k cuda tests/test_residual_block.py > "$OUT/tests_ring_forward.txt" 2>&1
echo "ring-forward tests rc $?"; tail -3 "$OUT/tests_ring_forward.txt"
[ "${1:-}" = "--tests-only" ] && exit 0
timeout "${NETS_TIMEOUT:-240}" $PY -m pyganx bench nets --device cuda --rounds 10 --no-bf16 \
  --json "$OUT/nets.json" > "$OUT/nets.md" 2>&1
echo "nets rc $?"; tail -12 "$OUT/nets.md"
PYGANX_RING_FORWARD_KERNEL=1 timeout "${NETS_TIMEOUT:-240}" $PY -m pyganx bench nets --device cuda \
  --rounds 10 --no-bf16 --json "$OUT/nets_ring_forward.json" > "$OUT/nets_ring_forward.md" 2>&1
echo "nets (ring forward kernel) rc $?"; tail -8 "$OUT/nets_ring_forward.md"
timeout "${OPS_TIMEOUT:-90}" $PY -m pyganx bench ops --device cuda --rounds 20 --no-compile \
  --json "$OUT/ops.json" > "$OUT/ops.md" 2>&1
echo "ops rc $?"; tail -40 "$OUT/ops.md"
# where the time goes (kernels per iteration, device-busy time against wall time, top
# kernels) and how a generator step's peak memory splits (saved tensors vs workspaces)
timeout "${PROFILE_TIMEOUT:-120}" $PY -m pyganx bench profile --device cuda --json "$OUT/profile.json" \
  > "$OUT/profile.md" 2>&1
echo "profile rc $?"; head -8 "$OUT/profile.md"; tail -5 "$OUT/profile.md"
# peak memory of a generator step: eager vs fused vs checkpointing, and bf16 at 512 px
timeout "${MEM_TIMEOUT:-120}" $PY -m pyganx bench memory --device cuda --json "$OUT/memory.json" \
  > "$OUT/memory.md" 2>&1
echo "memory rc $?"; tail -9 "$OUT/memory.md"
# the training step under bf16 autocast with the fused ops, channels_last and checkpointing
timeout "${TRAIN_TIMEOUT:-120}" $PY -m pyganx train cyclegan --demo photos --steps 20 --no-progress \
  --precision bf16 --channels-last --checkpoint-activations -o "$OUT/run-bf16" > "$OUT/train.txt" 2>&1
echo "train rc $?"; tail -2 "$OUT/train.txt"
echo "total: $(( $(date +%s) - start )) s"
