// CPU kernels of pyganx::instance_norm_relu, as plain functions over raw pointers.
//
// instance_norm_relu_kernel.cpp is compiled once per CPU capability (DEFAULT, AVX2,
// AVX512; see the files in avx2/ and avx512/). Each compile puts its kernels in a
// namespace named after the capability, and the DEFAULT compile also holds the
// dispatcher that picks the best one the running CPU supports. The parameter structs
// below hold no ATen types so that the capability-specific compiles share as little
// inline code with the rest of the library as possible.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

namespace pyganx::cpu {

// Statistics, weight and bias are "acc" typed: double for double input, float otherwise.
struct InstanceNormForwardParams {
  const void* x = nullptr;
  void* out = nullptr;
  void* mean = nullptr;            // [N * C], acc type
  void* rstd = nullptr;            // [N * C], acc type
  const void* weight = nullptr;    // [C], acc type, or null
  const void* bias = nullptr;      // [C], acc type, or null
  const void* residual = nullptr;  // same layout and dtype as x, or null: out += residual
  int64_t N = 0, C = 0, HW = 0;
  // pad_out: out has planes of (H + 2) x (W + 2) (NCHW) or rows of W + 2 pixels (NHWC),
  // and the kernel fills the 1-pixel ring with the reflection of the result (the input
  // of a reflection-padded 3x3 convolution, written in the same pass). Not with residual.
  bool pad_out = false;
  int64_t H = 0, W = 0;
  double eps = 1e-5;
  bool relu = true;
  bool channels_last = false;  // memory is N, H, W, C instead of N, C, H, W
  c10::ScalarType dtype = c10::ScalarType::Float;
};

struct InstanceNormBackwardParams {
  const void* grad_out = nullptr;  // same layout and dtype as x
  const void* x = nullptr;
  const void* mean = nullptr;    // [N * C], acc type
  const void* rstd = nullptr;    // [N * C], acc type
  const void* weight = nullptr;  // [C], acc type, or null
  const void* bias = nullptr;    // [C], acc type, or null
  void* grad_x = nullptr;        // same layout as x, or null when not wanted
  void* sum_dy = nullptr;        // [N * C], acc type: sum of the gradient behind the ReLU
  void* sum_dy_xhat = nullptr;   // [N * C], acc type: the same, weighted by x-hat
  int64_t N = 0, C = 0, HW = 0;
  bool relu = true;
  bool channels_last = false;
  c10::ScalarType dtype = c10::ScalarType::Float;
};

#define PYGANX_DECLARE_CPU_KERNELS(CAP)                                  \
  namespace CAP {                                                        \
  void instance_norm_relu_forward(const InstanceNormForwardParams& p);   \
  void instance_norm_relu_backward(const InstanceNormBackwardParams& p); \
  }

PYGANX_DECLARE_CPU_KERNELS(DEFAULT)
PYGANX_DECLARE_CPU_KERNELS(AVX2)
PYGANX_DECLARE_CPU_KERNELS(AVX512)
#undef PYGANX_DECLARE_CPU_KERNELS

// Runs the kernel of the best capability compiled in and supported by this CPU
// (ATen's own choice, so ATEN_CPU_CAPABILITY=default|avx2|avx512 also steers it).
void instance_norm_relu_forward(const InstanceNormForwardParams& p);
void instance_norm_relu_backward(const InstanceNormBackwardParams& p);

// The capability the dispatcher uses: "DEFAULT", "AVX2" or "AVX512".
const char* selected_capability();
// Capabilities compiled into this build, e.g. "DEFAULT;AVX2;AVX512".
const char* compiled_capabilities();

}  // namespace pyganx::cpu
