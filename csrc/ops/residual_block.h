// Device-independent implementation of pyganx::residual_block,
//   y = x + IN2(conv3x3(pad(ReLU(IN1(conv3x3(pad(x)))))))
// The convolutions go through ATen (oneDNN / cuDNN); the instance norms through a
// backend's launchers (instance_norm_relu.h). Each backend registers these functions
// with its launchers (PYGANX_REGISTER_RESIDUAL_BLOCK below): the CPU in
// cpu/residual_block_kernel.cpp, CUDA in cuda/residual_block_kernel.cpp.
#pragma once

#include "instance_norm_relu.h"
#include "optional_tensor.h"

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <array>
#include <optional>
#include <tuple>

namespace pyganx::ops {

// The parameters of one block, as the schema passes them.
struct BlockParams {
  const at::Tensor& w1;
  const OptTensor& b1;
  const at::Tensor& w2;
  const OptTensor& b2;
  const OptTensor& gamma1;
  const OptTensor& beta1;
  const OptTensor& gamma2;
  const OptTensor& beta2;
};

// Whether the CPU residual block runs its large 3x3 convolutions (float32, >= 128
// channels, planes >= 48 x 48) with NNPACK's Winograd transforms instead of oneDNN's
// direct algorithm. On by default; PYGANX_CPU_WINOGRAD=0 in the environment or
// set_cpu_winograd(false) turns it off. set_cpu_winograd returns the previous setting.
bool cpu_winograd_enabled();
bool set_cpu_winograd(bool enabled);

// A per-thread override of that setting (-1: none, 0: off, 1: on), for pyganx's
// implementation choice (pyganx/tuning/), which runs one block with and the next
// without. Returns the previous override. The autograd function records the setting in
// force at forward time and re-applies it to its backward, so a block's backward uses
// the convolutions its forward used.
int set_cpu_winograd_local(int mode);

// NNPACK's Winograd 3x3 convolution of float32 NCHW x (stride 1, zero padding `pad`),
// each OpenMP thread running NNPACK single-threaded on its own range of output channels
// (cpu/nnpack_conv.cpp). nullopt where NNPACK is not in this torch or refuses the shape.
bool nnpack_conv3x3_openmp_available();
std::optional<at::Tensor> nnpack_conv3x3_openmp(const at::Tensor& x, const at::Tensor& w,
                                                const OptTensor& b, int64_t pad);

// For tests: false makes the reflection ring term use the ATen formulation (thin strip
// convolutions) instead of the backend's ring kernels; returns the previous setting.
bool set_ring_kernels(bool enabled);

// y only (inference: nothing is kept).
at::Tensor residual_block_with(const InstanceNormLaunchers& k, const at::Tensor& x,
                               const BlockParams& p, c10::string_view padding, double eps);

// (y, h1, h2, mean1, rstd1, mean2, rstd2): what the backward needs besides x, y and the
// parameters. h1 is the first conv's output; h2 the second's, or an empty tensor when
// the second norm's input is recovered from y - x (no affine, float32/float64).
using BlockForward =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
BlockForward residual_block_forward_with(const InstanceNormLaunchers& k, const at::Tensor& x,
                                         const BlockParams& p, c10::string_view padding,
                                         double eps);

// Gradients of (x, w1, b1, w2, b2, gamma1, beta1, gamma2, beta2), as output_mask asks.
using BlockGrads = std::tuple<OptTensor, OptTensor, OptTensor, OptTensor, OptTensor, OptTensor,
                              OptTensor, OptTensor, OptTensor>;
BlockGrads residual_block_backward_with(const InstanceNormLaunchers& k, const at::Tensor& grad_y,
                                        const at::Tensor& x, const at::Tensor& y,
                                        const BlockParams& p, const at::Tensor& h1,
                                        const at::Tensor& h2, const at::Tensor& mean1,
                                        const at::Tensor& rstd1, const at::Tensor& mean2,
                                        const at::Tensor& rstd2, c10::string_view padding,
                                        double eps, std::array<bool, 9> output_mask);

}  // namespace pyganx::ops

// Registers the three residual-block ops for one dispatch key with its launchers.
#define PYGANX_REGISTER_RESIDUAL_BLOCK(KEY, LAUNCHERS)                                             \
  namespace {                                                                                      \
  using pyganx::ops::OptTensor;                                                                    \
  at::Tensor residual_block_##KEY(const at::Tensor& x, const at::Tensor& w1, const OptTensor& b1,  \
                                  const at::Tensor& w2, const OptTensor& b2, const OptTensor& g1,  \
                                  const OptTensor& be1, const OptTensor& g2, const OptTensor& be2, \
                                  c10::string_view padding, double eps) {                          \
    return pyganx::ops::residual_block_with(LAUNCHERS, x, {w1, b1, w2, b2, g1, be1, g2, be2},      \
                                            padding, eps);                                         \
  }                                                                                                \
  pyganx::ops::BlockForward residual_block_forward_##KEY(                                          \
      const at::Tensor& x, const at::Tensor& w1, const OptTensor& b1, const at::Tensor& w2,        \
      const OptTensor& b2, const OptTensor& g1, const OptTensor& be1, const OptTensor& g2,         \
      const OptTensor& be2, c10::string_view padding, double eps) {                                \
    return pyganx::ops::residual_block_forward_with(                                               \
        LAUNCHERS, x, {w1, b1, w2, b2, g1, be1, g2, be2}, padding, eps);                           \
  }                                                                                                \
  pyganx::ops::BlockGrads residual_block_backward_##KEY(                                           \
      const at::Tensor& gy, const at::Tensor& x, const at::Tensor& y, const at::Tensor& w1,        \
      const OptTensor& b1, const at::Tensor& w2, const OptTensor& b2, const OptTensor& g1,         \
      const OptTensor& be1, const OptTensor& g2, const OptTensor& be2, const at::Tensor& h1,       \
      const at::Tensor& h2, const at::Tensor& m1, const at::Tensor& r1, const at::Tensor& m2,      \
      const at::Tensor& r2, c10::string_view padding, double eps, std::array<bool, 9> mask) {      \
    return pyganx::ops::residual_block_backward_with(LAUNCHERS, gy, x, y,                          \
                                                     {w1, b1, w2, b2, g1, be1, g2, be2}, h1, h2,   \
                                                     m1, r1, m2, r2, padding, eps, mask);          \
  }                                                                                                \
  }                                                                                                \
  TORCH_LIBRARY_IMPL(pyganx, KEY, m) {                                                             \
    m.impl("residual_block", &residual_block_##KEY);                                               \
    m.impl("_residual_block_forward", &residual_block_forward_##KEY);                              \
    m.impl("_residual_block_backward", &residual_block_backward_##KEY);                            \
  }
