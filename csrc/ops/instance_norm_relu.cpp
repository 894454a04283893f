// pyganx::instance_norm_relu: the schemas, and the device-independent glue that the CPU
// and CUDA registrations share (argument checks, output allocation, gradient
// reductions; see instance_norm_relu.h). The CPU kernels are in cpu/ (registered in
// cpu/instance_norm_relu_launch_kernel.cpp), the CUDA ones and their registration in
// cuda/instance_norm_relu_kernel.cu, autograd in autograd/instance_norm_relu_kernel.cpp.
//
//   instance_norm_relu(x, weight?, bias?, eps, relu) -> out
//   _instance_norm_relu_forward(...)  -> (out, mean, rstd)   statistics [N, C]
//   _instance_norm_relu_backward(grad_out, x, mean, rstd, weight?, bias?, relu,
//                                output_mask) -> (grad_x?, grad_weight?, grad_bias?)
//
// Semantics: PyTorch's instance norm in training mode without running statistics
// (biased variance, eps inside the square root), optional per-channel affine, optional
// ReLU. The output is channels_last when the input is, contiguous otherwise.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include "instance_norm_relu.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/sum.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

namespace pyganx::ops {
namespace {

void check_param(const char* op, const char* name, const std::optional<at::Tensor>& t,
                 const at::Tensor& x, int64_t C) {
  if (!t.has_value() || !t->defined()) return;
  TORCH_CHECK(t->device() == x.device(), op, ": ", name, " is on ", t->device(),
              " but the input is on ", x.device(), "; move both to the same device");
  TORCH_CHECK(at::isFloatingType(t->scalar_type()), op, ": ", name,
              " must be a floating-point tensor, got ", t->scalar_type());
  TORCH_CHECK(t->dim() == 1 && t->numel() == C, op, ": ", name,
              " must be a 1-D tensor of size C = ", C, ", got shape ", t->sizes());
}

at::Tensor prepare_param(const std::optional<at::Tensor>& t, at::ScalarType acc) {
  if (!t.has_value() || !t->defined()) return {};
  return t->to(acc).contiguous();
}

InstanceNormInput prepare_input(const char* op, const at::Tensor& x,
                                const std::optional<at::Tensor>& weight,
                                const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.defined(), op, ": the input is an undefined tensor");
  TORCH_CHECK(x.dim() == 4 || x.dim() == 3, op,
              ": expected a 4-D (N, C, H, W) or 3-D (C, H, W) tensor, got shape ", x.sizes());
  const auto t = x.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16, op,
              ": expected a float32, float64, float16 or bfloat16 tensor, got ", t);
  InstanceNormInput in;
  in.unbatched = x.dim() == 3;
  at::Tensor x4 = in.unbatched ? x.unsqueeze(0) : x;
  in.N = x4.size(0);
  in.C = x4.size(1);
  in.H = x4.size(2);
  in.W = x4.size(3);
  in.HW = in.H * in.W;
  TORCH_CHECK(in.N * in.C == 0 || in.HW > 1, op,
              ": expected more than 1 spatial element per channel (H * W > 1), got input size ",
              x.sizes());
  check_param(op, "weight", weight, x, in.C);
  check_param(op, "bias", bias, x, in.C);

  if (in.unbatched || x4.is_contiguous()) {
    in.x = x4.contiguous();
  } else if (x4.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    in.x = x4;
    in.channels_last = true;
  } else {
    in.x = x4.contiguous();
  }
  const auto acc = acc_dtype(t);
  in.weight = prepare_param(weight, acc);
  in.bias = prepare_param(bias, acc);
  return in;
}

at::Tensor empty_in_layout(const InstanceNormInput& in, at::ScalarType dtype) {
  return at::empty(in.x.sizes(), in.x.options().dtype(dtype).memory_format(
                                     in.channels_last ? at::MemoryFormat::ChannelsLast
                                                      : at::MemoryFormat::Contiguous));
}

at::Tensor to_caller_rank(const at::Tensor& t, const InstanceNormInput& in) {
  return in.unbatched ? t.squeeze(0) : t;
}

}  // namespace

at::ScalarType acc_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

std::tuple<at::Tensor, at::Tensor, at::Tensor> instance_norm_relu_forward_with(
    ForwardLauncher launch, const at::Tensor& x, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, double eps, bool relu, const at::Tensor& residual,
    bool pad_out) {
  const char* op = "pyganx.instance_norm_relu";
  TORCH_CHECK(eps >= 0.0, op, ": eps must be non-negative, got ", eps);
  auto in = prepare_input(op, x, weight, bias);
  at::Tensor res;
  if (residual.defined()) {
    TORCH_CHECK(residual.sizes() == x.sizes() && residual.scalar_type() == x.scalar_type() &&
                    residual.device() == x.device(),
                op, ": the residual must match the input's shape, dtype and device");
    res = (in.unbatched ? residual.unsqueeze(0) : residual)
              .contiguous(in.channels_last ? at::MemoryFormat::ChannelsLast
                                           : at::MemoryFormat::Contiguous);
  }
  at::Tensor out;
  if (pad_out) {
    TORCH_CHECK(!res.defined() && !in.unbatched && in.H >= 2 && in.W >= 2, op,
                ": a padded output needs 4-D input with H, W >= 2 and no residual");
    out = at::empty({in.N, in.C, in.H + 2, in.W + 2},
                    in.x.options().memory_format(in.channels_last ? at::MemoryFormat::ChannelsLast
                                                                  : at::MemoryFormat::Contiguous));
  } else {
    out = empty_in_layout(in, x.scalar_type());
  }
  const auto stats_opts = x.options().dtype(acc_dtype(x.scalar_type()));
  at::Tensor mean = at::empty({in.N, in.C}, stats_opts);
  at::Tensor rstd = at::empty({in.N, in.C}, stats_opts);
  if (in.N * in.C > 0) launch(in, res, pad_out, eps, relu, out, mean, rstd);
  return {to_caller_rank(out, in), mean, rstd};
}

std::tuple<std::optional<at::Tensor>, std::optional<at::Tensor>, std::optional<at::Tensor>>
instance_norm_relu_backward_with(BackwardLauncher launch, const at::Tensor& grad_out,
                                 const at::Tensor& x, const at::Tensor& mean,
                                 const at::Tensor& rstd, const std::optional<at::Tensor>& weight,
                                 const std::optional<at::Tensor>& bias, bool relu,
                                 std::array<bool, 3> output_mask) {
  const char* op = "pyganx._instance_norm_relu_backward";
  auto in = prepare_input(op, x, weight, bias);
  TORCH_CHECK(grad_out.sizes() == x.sizes(), op, ": grad_out has shape ", grad_out.sizes(),
              " but the input has shape ", x.sizes());
  TORCH_CHECK(grad_out.scalar_type() == x.scalar_type(), op, ": grad_out is ",
              grad_out.scalar_type(), " but the input is ", x.scalar_type());
  TORCH_CHECK(grad_out.device() == x.device(), op, ": grad_out is on ", grad_out.device(),
              " but the input is on ", x.device());
  const auto acc = acc_dtype(x.scalar_type());
  for (const auto* s : {&mean, &rstd}) {
    TORCH_CHECK(s->device() == x.device() && s->scalar_type() == acc && s->numel() == in.N * in.C,
                op, ": the saved statistics must be ", acc, " tensors of N * C = ", in.N * in.C,
                " elements on ", x.device(), ", got ", s->scalar_type(), " ", s->sizes(), " on ",
                s->device());
  }
  at::Tensor g4 = in.unbatched ? grad_out.unsqueeze(0) : grad_out;
  g4 = g4.contiguous(in.channels_last ? at::MemoryFormat::ChannelsLast
                                      : at::MemoryFormat::Contiguous);
  at::Tensor grad_x = output_mask[0] ? empty_in_layout(in, x.scalar_type()) : at::Tensor();
  const auto stats_opts = x.options().dtype(acc);
  at::Tensor sum_dy = at::empty({in.N, in.C}, stats_opts);
  at::Tensor sum_dy_xhat = at::empty({in.N, in.C}, stats_opts);
  if (in.N * in.C > 0) {
    launch(in, g4, mean.contiguous(), rstd.contiguous(), relu, grad_x, sum_dy, sum_dy_xhat);
  }
  std::optional<at::Tensor> gx, gw, gb;
  if (output_mask[0]) gx = to_caller_rank(grad_x, in);
  if (output_mask[1] && weight.has_value() && weight->defined()) {
    gw = at::sum(sum_dy_xhat, {0}).to(weight->scalar_type());
  }
  if (output_mask[2] && bias.has_value() && bias->defined()) {
    gb = at::sum(sum_dy, {0}).to(bias->scalar_type());
  }
  return {gx, gw, gb};
}

}  // namespace pyganx::ops

TORCH_LIBRARY_FRAGMENT(pyganx, m) {
  // Fake (meta) kernels live in the Python package (pyganx/ops/instance_norm_relu.py);
  // autograd is C++, autograd/instance_norm_relu_kernel.cpp.
  m.set_python_module("pyganx.ops.instance_norm_relu");
  const std::vector<at::Tag> tags = {at::Tag::pt2_compliant_tag};
  m.def(
      "instance_norm_relu(Tensor x, Tensor? weight, Tensor? bias, float eps, bool relu) -> Tensor",
      tags);
  m.def(
      "_instance_norm_relu_forward(Tensor x, Tensor? weight, Tensor? bias, float eps, bool relu)"
      " -> (Tensor, Tensor, Tensor)",
      tags);
  m.def(
      "_instance_norm_relu_backward(Tensor grad_out, Tensor x, Tensor mean, Tensor rstd,"
      " Tensor? weight, Tensor? bias, bool relu, bool[3] output_mask)"
      " -> (Tensor?, Tensor?, Tensor?)",
      tags);
}
