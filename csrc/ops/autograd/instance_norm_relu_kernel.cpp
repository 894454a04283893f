// Autograd of pyganx::instance_norm_relu, in C++ so that it costs no Python call per
// op and works for LibTorch users too.
//
// The public op records a node only when a gradient is needed: it then runs the
// private forward, which also returns the per-plane statistics, and saves x and those
// statistics (no normalised copy). The backward op recomputes x-hat and the ReLU mask
// from them. Without gradients the public op runs directly and writes only its output.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "../optional_tensor.h"

namespace pyganx::ops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor call_public(const at::Tensor& x, const OptTensor& w, const OptTensor& b, double eps,
                       bool relu) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("pyganx::instance_norm_relu", "")
          .typed<at::Tensor(const at::Tensor&, const OptTensor&, const OptTensor&, double, bool)>();
  return op.call(x, w, b, eps, relu);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_forward(const at::Tensor& x, const OptTensor& w,
                                                            const OptTensor& b, double eps,
                                                            bool relu) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("pyganx::_instance_norm_relu_forward", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const OptTensor&,
                                                                const OptTensor&, double, bool)>();
  return op.call(x, w, b, eps, relu);
}

std::tuple<OptTensor, OptTensor, OptTensor> call_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& rstd,
    const OptTensor& w, const OptTensor& b, bool relu, std::array<bool, 3> mask) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("pyganx::_instance_norm_relu_backward", "")
          .typed<std::tuple<OptTensor, OptTensor, OptTensor>(
              const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
              const OptTensor&, const OptTensor&, bool, std::array<bool, 3>)>();
  return op.call(grad_out, x, mean, rstd, w, b, relu, mask);
}

class InstanceNormReLUFunction : public torch::autograd::Function<InstanceNormReLUFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const OptTensor& weight,
                               const OptTensor& bias, double eps, bool relu) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, mean, rstd] = call_forward(x, weight, bias, eps, relu);
    ctx->save_for_backward(
        {x, mean, rstd, weight.value_or(at::Tensor()), bias.value_or(at::Tensor())});
    ctx->saved_data["relu"] = relu;
    ctx->mark_non_differentiable({mean, rstd});
    ctx->set_materialize_grads(false);  // mean and rstd get no zero-filled gradients
    return {out, mean, rstd};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return variable_list(5);  // out unused: no gradient anywhere
    const auto saved = ctx->get_saved_variables();
    const OptTensor weight = as_optional(saved[3]), bias = as_optional(saved[4]);
    // needs_input_grad counts only the tensors that were passed.
    size_t edge = 0;
    const bool need_x = ctx->needs_input_grad(edge++);
    const bool need_w = defined(weight) && ctx->needs_input_grad(edge++);
    const bool need_b = defined(bias) && ctx->needs_input_grad(edge++);
    auto [dx, dw, db] = call_backward(grads[0], saved[0], saved[1], saved[2], weight, bias,
                                      ctx->saved_data["relu"].toBool(), {need_x, need_w, need_b});
    return {dx.value_or(at::Tensor()), dw.value_or(at::Tensor()), db.value_or(at::Tensor()),
            at::Tensor(), at::Tensor()};
  }
};

bool grad_needed(const at::Tensor& x, const OptTensor& w, const OptTensor& b) {
  if (!at::GradMode::is_enabled()) return false;
  return x.requires_grad() || (defined(w) && w->requires_grad()) ||
         (defined(b) && b->requires_grad());
}

at::Tensor instance_norm_relu_autograd(const at::Tensor& x, const OptTensor& weight,
                                       const OptTensor& bias, double eps, bool relu) {
  if (!grad_needed(x, weight, bias)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_public(x, weight, bias, eps, relu);
  }
  return InstanceNormReLUFunction::apply(x, weight, bias, eps, relu)[0];
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> instance_norm_relu_forward_autograd(
    const at::Tensor& x, const OptTensor& weight, const OptTensor& bias, double eps, bool relu) {
  auto r = InstanceNormReLUFunction::apply(x, weight, bias, eps, relu);
  return {r[0], r[1], r[2]};
}

}  // namespace
}  // namespace pyganx::ops

TORCH_LIBRARY_IMPL(pyganx, Autograd, m) {
  m.impl("instance_norm_relu", &pyganx::ops::instance_norm_relu_autograd);
  m.impl("_instance_norm_relu_forward", &pyganx::ops::instance_norm_relu_forward_autograd);
}
