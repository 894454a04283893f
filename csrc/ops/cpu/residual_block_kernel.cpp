// CPU registration of pyganx::residual_block: the shared implementation
// (../residual_block.cpp) with the CPU launchers, cpu::launchers() (the instance norms
// of instance_norm_relu_launch_kernel.cpp, the ring term of reflect_ring_kernel.cpp).
// Convolutions run on oneDNN, or NNPACK for large float32 planes, through ATen.
#include "../residual_block.h"

#include <torch/library.h>

PYGANX_REGISTER_RESIDUAL_BLOCK(CPU, pyganx::cpu::launchers())
