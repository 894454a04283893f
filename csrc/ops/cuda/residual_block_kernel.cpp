// CUDA registration of pyganx::residual_block: the shared implementation
// (residual_block.cpp) with the CUDA instance-norm launchers. Convolutions run on cuDNN
// through ATen. Compiled only in CUDA builds.
#include "../residual_block.h"

#include <torch/library.h>

PYGANX_REGISTER_RESIDUAL_BLOCK(CUDA, pyganx::cuda::launchers())
