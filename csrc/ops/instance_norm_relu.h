// Device-independent glue of pyganx::instance_norm_relu: argument checks, output
// allocation and the gradient reductions, shared by the CPU and CUDA registrations.
// Each backend only supplies a launcher that runs its kernels on prepared tensors.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <tuple>

namespace pyganx::ops {

// The arguments after validation, in the form the kernels take.
struct InstanceNormInput {
  at::Tensor x;       // 4-D and dense, NCHW or NHWC
  at::Tensor weight;  // [C] contiguous in the acc dtype, or undefined
  at::Tensor bias;    // [C] contiguous in the acc dtype, or undefined
  bool channels_last = false;
  bool unbatched = false;  // the caller passed (C, H, W)
  int64_t N = 0, C = 0, HW = 0, H = 0, W = 0;
};

// Statistics dtype: float64 for float64 input, float32 otherwise.
at::ScalarType acc_dtype(at::ScalarType t);

// Kernel launchers: write out/mean/rstd, or grad_x (undefined when not wanted),
// sum_dy and sum_dy_xhat ([N, C], acc dtype). Called only when N * C > 0. `residual`
// is undefined, or a tensor of x's shape, dtype and layout added to the output
// (out = act(norm(x)) + residual); with pad_out, out is (N, C, H + 2, W + 2) in x's
// layout and its 1-pixel ring holds the reflection (the residual block uses both).
using ForwardLauncher = void (*)(const InstanceNormInput& in, const at::Tensor& residual,
                                 bool pad_out, double eps, bool relu, at::Tensor& out,
                                 at::Tensor& mean, at::Tensor& rstd);
using BackwardLauncher = void (*)(const InstanceNormInput& in, const at::Tensor& grad_out,
                                  const at::Tensor& mean, const at::Tensor& rstd, bool relu,
                                  at::Tensor& grad_x, at::Tensor& sum_dy, at::Tensor& sum_dy_xhat);

// The reflection-padding ring term of a 3x3 convolution (see residual_block.cpp):
// forward adds it to h; backward adds its gradients to gx and gw (either may be
// undefined; gw contiguous). A backend without kernels for it leaves these null and the
// residual block computes the term with ATen convolutions of thin strips.
using RingForward = void (*)(at::Tensor& h, const at::Tensor& x, const at::Tensor& w);
using RingBackward = void (*)(const at::Tensor& g, const at::Tensor& x, const at::Tensor& w,
                              at::Tensor& gx, at::Tensor& gw);
struct ReflectRing {
  RingForward forward = nullptr;
  RingBackward backward = nullptr;
};

// A backend's launchers (the residual block calls the norms through these).
struct InstanceNormLaunchers {
  ForwardLauncher forward = nullptr;
  BackwardLauncher backward = nullptr;
  ReflectRing ring{};
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> instance_norm_relu_forward_with(
    ForwardLauncher launch, const at::Tensor& x, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, double eps, bool relu, const at::Tensor& residual = {},
    bool pad_out = false);

std::tuple<std::optional<at::Tensor>, std::optional<at::Tensor>, std::optional<at::Tensor>>
instance_norm_relu_backward_with(BackwardLauncher launch, const at::Tensor& grad_out,
                                 const at::Tensor& x, const at::Tensor& mean,
                                 const at::Tensor& rstd, const std::optional<at::Tensor>& weight,
                                 const std::optional<at::Tensor>& bias, bool relu,
                                 std::array<bool, 3> output_mask);

// The three ops over one backend's launchers, for its TORCH_LIBRARY_IMPL block
// (cpu/instance_norm_relu_launch_kernel.cpp, cuda/instance_norm_relu_kernel.cu).
template <ForwardLauncher Forward, BackwardLauncher Backward>
struct InstanceNormOps {
  static at::Tensor op(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                       const std::optional<at::Tensor>& bias, double eps, bool relu) {
    return std::get<0>(instance_norm_relu_forward_with(Forward, x, weight, bias, eps, relu));
  }
  static std::tuple<at::Tensor, at::Tensor, at::Tensor> forward(
      const at::Tensor& x, const std::optional<at::Tensor>& weight,
      const std::optional<at::Tensor>& bias, double eps, bool relu) {
    return instance_norm_relu_forward_with(Forward, x, weight, bias, eps, relu);
  }
  static std::tuple<std::optional<at::Tensor>, std::optional<at::Tensor>, std::optional<at::Tensor>>
  backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& mean,
           const at::Tensor& rstd, const std::optional<at::Tensor>& weight,
           const std::optional<at::Tensor>& bias, bool relu, std::array<bool, 3> output_mask) {
    return instance_norm_relu_backward_with(Backward, grad_out, x, mean, rstd, weight, bias, relu,
                                            output_mask);
  }
};

}  // namespace pyganx::ops

namespace pyganx::cpu {
// The CPU launchers (cpu/instance_norm_relu_launch_kernel.cpp).
ops::InstanceNormLaunchers launchers();
// The ring term of the residual block's reflection padding on CPU
// (cpu/reflect_ring_kernel.cpp).
ops::ReflectRing ring_launchers();
}  // namespace pyganx::cpu

namespace pyganx::cuda {
// The CUDA launchers (defined in cuda/*.cu; CUDA builds only).
ops::InstanceNormLaunchers launchers();
ops::ReflectRing ring_launchers();
}  // namespace pyganx::cuda
