// Autograd of pyganx::residual_block, in C++ like instance_norm_relu's.
//
// With gradients the public op runs the private forward and saves x, y, h1 (and h2
// only where it cannot be recovered from y - x) plus the per-plane statistics; the
// backward op recomputes the ReLU'd activation from h1. Without gradients the public
// op runs directly and keeps nothing.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "../optional_tensor.h"
#include "../residual_block.h"

#include <string>

namespace pyganx::ops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using T = at::Tensor;

using PublicSig = T(const T&, const T&, const OptTensor&, const T&, const OptTensor&,
                    const OptTensor&, const OptTensor&, const OptTensor&, const OptTensor&,
                    c10::string_view, double);
using ForwardSig = std::tuple<T, T, T, T, T, T, T>(const T&, const T&, const OptTensor&, const T&,
                                                   const OptTensor&, const OptTensor&,
                                                   const OptTensor&, const OptTensor&,
                                                   const OptTensor&, c10::string_view, double);
using BackwardSig = std::tuple<OptTensor, OptTensor, OptTensor, OptTensor, OptTensor, OptTensor,
                               OptTensor, OptTensor, OptTensor>(
    const T&, const T&, const T&, const T&, const OptTensor&, const T&, const OptTensor&,
    const OptTensor&, const OptTensor&, const OptTensor&, const OptTensor&, const T&, const T&,
    const T&, const T&, const T&, const T&, c10::string_view, double, std::array<bool, 9>);

template <typename Sig>
c10::TypedOperatorHandle<Sig> handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

class ResidualBlockFunction : public torch::autograd::Function<ResidualBlockFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const T& x, const T& w1, const OptTensor& b1,
                               const T& w2, const OptTensor& b2, const OptTensor& g1,
                               const OptTensor& be1, const OptTensor& g2, const OptTensor& be2,
                               const std::string& padding, double eps) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static const auto op = handle<ForwardSig>("pyganx::_residual_block_forward");
    auto [y, h1, h2, m1, r1, m2, r2] = op.call(x, w1, b1, w2, b2, g1, be1, g2, be2, padding, eps);
    auto u = [](const OptTensor& t) { return t.value_or(T()); };
    ctx->save_for_backward(
        {x, y, w1, u(b1), w2, u(b2), u(g1), u(be1), u(g2), u(be2), h1, h2, m1, r1, m2, r2});
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["eps"] = eps;
    // The backward uses the convolutions the forward used (Winograd or direct on CPU),
    // whatever the setting is when backward runs.
    ctx->saved_data["winograd"] = cpu_winograd_enabled();
    ctx->mark_non_differentiable({h1, h2, m1, r1, m2, r2});
    // Only y is differentiable: no zero-filled gradients for h1 (x-sized) and the rest.
    ctx->set_materialize_grads(false);
    return {y, h1, h2, m1, r1, m2, r2};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return variable_list(11);  // y unused: no gradient anywhere
    const auto s = ctx->get_saved_variables();
    std::array<OptTensor, 9> params{as_optional(s[0]), as_optional(s[2]), as_optional(s[3]),
                                    as_optional(s[4]), as_optional(s[5]), as_optional(s[6]),
                                    as_optional(s[7]), as_optional(s[8]), as_optional(s[9])};
    // needs_input_grad counts only the tensors that were passed.
    std::array<bool, 9> mask{};
    size_t edge = 0;
    for (size_t i = 0; i < params.size(); ++i) {
      mask[i] = defined(params[i]) && ctx->needs_input_grad(edge++);
    }
    static const auto op = handle<BackwardSig>("pyganx::_residual_block_backward");
    const std::string padding = ctx->saved_data["padding"].toStringRef();
    struct Restore {
      int previous;
      ~Restore() { set_cpu_winograd_local(previous); }
    } restore{set_cpu_winograd_local(ctx->saved_data["winograd"].toBool() ? 1 : 0)};
    auto g = op.call(grads[0], s[0], s[1], s[2], params[2], s[4], params[4], params[5], params[6],
                     params[7], params[8], s[10], s[11], s[12], s[13], s[14], s[15], padding,
                     ctx->saved_data["eps"].toDouble(), mask);
    auto v = [](const OptTensor& t) { return t.value_or(T()); };
    return {v(std::get<0>(g)),
            v(std::get<1>(g)),
            v(std::get<2>(g)),
            v(std::get<3>(g)),
            v(std::get<4>(g)),
            v(std::get<5>(g)),
            v(std::get<6>(g)),
            v(std::get<7>(g)),
            v(std::get<8>(g)),
            T(),
            T()};
  }
};

bool grad_needed(std::initializer_list<OptTensor> ts) {
  if (!at::GradMode::is_enabled()) return false;
  for (const auto& t : ts) {
    if (defined(t) && t->requires_grad()) return true;
  }
  return false;
}

T residual_block_autograd(const T& x, const T& w1, const OptTensor& b1, const T& w2,
                          const OptTensor& b2, const OptTensor& g1, const OptTensor& be1,
                          const OptTensor& g2, const OptTensor& be2, c10::string_view padding,
                          double eps) {
  if (!grad_needed({x, w1, b1, w2, b2, g1, be1, g2, be2})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static const auto op = handle<PublicSig>("pyganx::residual_block");
    return op.call(x, w1, b1, w2, b2, g1, be1, g2, be2, padding, eps);
  }
  return ResidualBlockFunction::apply(x, w1, b1, w2, b2, g1, be1, g2, be2,
                                      std::string(padding.data(), padding.size()), eps)[0];
}

std::tuple<T, T, T, T, T, T, T> residual_block_forward_autograd(
    const T& x, const T& w1, const OptTensor& b1, const T& w2, const OptTensor& b2,
    const OptTensor& g1, const OptTensor& be1, const OptTensor& g2, const OptTensor& be2,
    c10::string_view padding, double eps) {
  auto r = ResidualBlockFunction::apply(x, w1, b1, w2, b2, g1, be1, g2, be2,
                                        std::string(padding.data(), padding.size()), eps);
  return {r[0], r[1], r[2], r[3], r[4], r[5], r[6]};
}

}  // namespace
}  // namespace pyganx::ops

TORCH_LIBRARY_IMPL(pyganx, Autograd, m) {
  m.impl("residual_block", &pyganx::ops::residual_block_autograd);
  m.impl("_residual_block_forward", &pyganx::ops::residual_block_forward_autograd);
}
