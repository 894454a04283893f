// CPU registration of pyganx::instance_norm_relu: the launchers that hand the tensors
// prepared by the shared glue (../instance_norm_relu.cpp) to the kernels of
// instance_norm_relu_kernel.cpp as raw pointers, and the ops' CPU kernels built on them.
//
// Not in instance_norm_relu_kernel.cpp itself: that file is compiled once per CPU
// capability (avx2/, avx512/ include it) and is kept free of ATen tensor code; code
// added to its DEFAULT compile also changes how GCC inlines the kernels there.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include "instance_norm_relu_kernel.h"

#include "../instance_norm_relu.h"

#include <torch/library.h>

namespace pyganx::cpu {
namespace {

const void* data_or_null(const at::Tensor& t) { return t.defined() ? t.const_data_ptr() : nullptr; }

void launch_forward_cpu(const ops::InstanceNormInput& in, const at::Tensor& residual, bool pad_out,
                        double eps, bool relu, at::Tensor& out, at::Tensor& mean,
                        at::Tensor& rstd) {
  InstanceNormForwardParams p;
  p.x = in.x.const_data_ptr();
  p.residual = data_or_null(residual);
  p.pad_out = pad_out;
  p.H = in.H;
  p.W = in.W;
  p.out = out.mutable_data_ptr();
  p.mean = mean.mutable_data_ptr();
  p.rstd = rstd.mutable_data_ptr();
  p.weight = data_or_null(in.weight);
  p.bias = data_or_null(in.bias);
  p.N = in.N;
  p.C = in.C;
  p.HW = in.HW;
  p.eps = eps;
  p.relu = relu;
  p.channels_last = in.channels_last;
  p.dtype = in.x.scalar_type();
  cpu::instance_norm_relu_forward(p);
}

void launch_backward_cpu(const ops::InstanceNormInput& in, const at::Tensor& grad_out,
                         const at::Tensor& mean, const at::Tensor& rstd, bool relu,
                         at::Tensor& grad_x, at::Tensor& sum_dy, at::Tensor& sum_dy_xhat) {
  InstanceNormBackwardParams p;
  p.grad_out = grad_out.const_data_ptr();
  p.x = in.x.const_data_ptr();
  p.mean = mean.const_data_ptr();
  p.rstd = rstd.const_data_ptr();
  p.weight = data_or_null(in.weight);
  p.bias = data_or_null(in.bias);
  p.grad_x = grad_x.defined() ? grad_x.mutable_data_ptr() : nullptr;
  p.sum_dy = sum_dy.mutable_data_ptr();
  p.sum_dy_xhat = sum_dy_xhat.mutable_data_ptr();
  p.N = in.N;
  p.C = in.C;
  p.HW = in.HW;
  p.relu = relu;
  p.channels_last = in.channels_last;
  p.dtype = in.x.scalar_type();
  cpu::instance_norm_relu_backward(p);
}

}  // namespace

ops::InstanceNormLaunchers launchers() {
  return {launch_forward_cpu, launch_backward_cpu, ring_launchers()};
}

using Ops = ops::InstanceNormOps<launch_forward_cpu, launch_backward_cpu>;

}  // namespace pyganx::cpu

TORCH_LIBRARY_IMPL(pyganx, CPU, m) {
  m.impl("instance_norm_relu", &pyganx::cpu::Ops::op);
  m.impl("_instance_norm_relu_forward", &pyganx::cpu::Ops::forward);
  m.impl("_instance_norm_relu_backward", &pyganx::cpu::Ops::backward);
}
