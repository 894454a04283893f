// pyganx::residual_block: schemas, argument checks, the implementation shared by the
// backends, and the CPU registration.
//
//   residual_block(x, w1, b1?, w2, b2?, gamma1?, beta1?, gamma2?, beta2?, padding, eps) -> y
//   _residual_block_forward(...same...) -> (y, h1, h2, mean1, rstd1, mean2, rstd2)
//   _residual_block_backward(grad_y, x, y, w1, b1?, w2, b2?, gamma1?, beta1?, gamma2?,
//       beta2?, h1, h2, mean1, rstd1, mean2, rstd2, padding, eps, output_mask[9]) -> grads
//
// y = x + IN2(conv2(pad(ReLU(IN1(conv1(pad(x))))))), padding "reflect" or "zero" (1 px),
// 3x3 convolutions with optional bias, instance norms with optional affine.
//
// What is fused (see docs/ops.md, "Residual block"):
// - Padding is never materialised. Both convolutions run with ATen's implicit zero
//   padding; for reflection padding the difference (the reflected ring minus zeros)
//   only touches the outermost output rows and columns and is added there by two thin
//   grouped convolutions over the rows/columns the ring reflects (an exact
//   reformulation, ~2-3 % of the block's FLOPs at 64x64).
// - IN1 + ReLU is one pass; IN2 + the residual add is one pass.
// - Lean backward: besides x and y (kept anyway as block boundaries) only h1 (the first
//   conv's output) and the per-plane statistics are kept. The ReLU'd activation is
//   recomputed from h1; without affine the second norm's output is y - x exactly, so
//   h2 is not kept (float32/float64; for float16/bfloat16, and with affine, h2 is kept
//   so that the gradient does not inherit the rounding of y).
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include "residual_block.h"

#include <ATen/ops/cat.h>
#include <ATen/ops/convolution.h>
#include <ATen/ops/convolution_backward.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/reflection_pad1d.h>
#include <ATen/ops/reflection_pad1d_backward.h>
#include <ATen/ops/sub.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <string>

namespace pyganx::ops {
namespace {

constexpr const char* kOp = "pyganx.residual_block";

bool defined(const OptTensor& t) { return t.has_value() && t->defined(); }

bool parse_padding(c10::string_view padding) {
  if (padding == "reflect") return true;
  if (padding == "zero") return false;
  TORCH_CHECK(false, kOp, ": padding must be \"reflect\" or \"zero\", got \"",
              std::string(padding.data(), padding.size()), "\"");
}

void check_vector(const char* name, const OptTensor& t, const at::Tensor& x, bool same_dtype) {
  if (!defined(t)) return;
  const int64_t C = x.size(1);
  TORCH_CHECK(t->device() == x.device(), kOp, ": ", name, " is on ", t->device(),
              " but the input is on ", x.device());
  TORCH_CHECK(t->dim() == 1 && t->numel() == C, kOp, ": ", name,
              " must be a 1-D tensor of size C = ", C, ", got shape ", t->sizes());
  TORCH_CHECK(!same_dtype || t->scalar_type() == x.scalar_type(), kOp, ": ", name, " is ",
              t->scalar_type(), " but the input is ", x.scalar_type());
  TORCH_CHECK(at::isFloatingType(t->scalar_type()), kOp, ": ", name,
              " must be floating point, got ", t->scalar_type());
}

void check_args(const at::Tensor& x, const BlockParams& p) {
  TORCH_CHECK(x.defined(), kOp, ": the input is an undefined tensor");
  TORCH_CHECK(x.dim() == 4, kOp, ": expected a 4-D (N, C, H, W) input, got shape ", x.sizes());
  const auto t = x.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16, kOp,
              ": expected a float32, float64, float16 or bfloat16 input, got ", t);
  TORCH_CHECK(x.size(2) >= 2 && x.size(3) >= 2, kOp,
              ": H and W must be at least 2 (a 3x3 convolution with 1-pixel reflection padding "
              "needs a second row and column to reflect), got input of shape ",
              x.sizes());
  const int64_t C = x.size(1);
  for (const auto& [name, w] : {std::pair<const char*, const at::Tensor*>{"w1", &p.w1},
                                {"w2", &p.w2}}) {
    TORCH_CHECK(w->defined() && w->dim() == 4 && w->size(0) == C && w->size(1) == C &&
                    w->size(2) == 3 && w->size(3) == 3,
                kOp, ": ", name, " must have shape (C, C, 3, 3) with C = ", C, ", got ",
                w->defined() ? w->sizes() : at::IntArrayRef{});
    TORCH_CHECK(w->device() == x.device() && w->scalar_type() == t, kOp, ": ", name, " is ",
                w->scalar_type(), " on ", w->device(), " but the input is ", t, " on ",
                x.device());
  }
  check_vector("b1", p.b1, x, true);
  check_vector("b2", p.b2, x, true);
  check_vector("gamma1", p.gamma1, x, false);
  check_vector("beta1", p.beta1, x, false);
  check_vector("gamma2", p.gamma2, x, false);
  check_vector("beta2", p.beta2, x, false);
}

// The layout rule of the pyganx ops: channels_last in (and not also NCHW-contiguous),
// channels_last out; contiguous otherwise.
at::MemoryFormat layout_of(const at::Tensor& x) {
  return !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast)
             ? at::MemoryFormat::ChannelsLast
             : at::MemoryFormat::Contiguous;
}

// Both thin strips the reflected ring is made of, and the matching kernel slices:
//   tb: rows 1 and H-2 (what rows -1 and H reflect), each reflection-padded along W,
//       as (N, 2C, 1, W+2), with k_tb = [w[:, :, 0:1, :]; w[:, :, 2:3, :]] (2C_out, C, 1, 3);
//   lr: columns 1 and W-2, as (N, 2C, H, 1), with k_lr = [w[..., 0:1]; w[..., 2:3]].
// A groups=2 convolution of each gives the correction of output rows 0 and H-1
// (corners included) and of columns 0 and W-1.
struct Ring {
  at::Tensor rows;  // (N, 2C, W): rows 1 and H-2, before their reflection padding
  at::Tensor tb, lr, k_tb, k_lr;
};

Ring ring_of(const at::Tensor& x, const at::Tensor& w) {
  const int64_t H = x.size(2), W = x.size(3);
  Ring r;
  r.rows = at::cat({x.narrow(2, 1, 1), x.narrow(2, H - 2, 1)}, 1).squeeze(2);
  r.tb = at::reflection_pad1d(r.rows, {1, 1}).unsqueeze(2);
  r.lr = at::cat({x.narrow(3, 1, 1), x.narrow(3, W - 2, 1)}, 1);
  r.k_tb = at::cat({w.narrow(2, 0, 1), w.narrow(2, 2, 1)}, 0);
  r.k_lr = at::cat({w.narrow(3, 0, 1), w.narrow(3, 2, 1)}, 0);
  return r;
}

at::Tensor grouped(const at::Tensor& in, const at::Tensor& k, int64_t pad_h) {
  return at::convolution(in, k, std::nullopt, {1, 1}, {pad_h, 0}, {1, 1}, false, {0, 0}, 2);
}

// Adds the first half of `a` (split along split_dim) to index `first` of out's `dim`, and
// the second half to index `last`.
void add_halves(at::Tensor& out, const at::Tensor& a, int64_t dim, int64_t first, int64_t last,
                int64_t split_dim = 1) {
  const int64_t half = a.size(split_dim) / 2;
  out.narrow(dim, first, 1).add_(a.narrow(split_dim, 0, half));
  out.narrow(dim, last, 1).add_(a.narrow(split_dim, half, half));
}

// conv3x3(pad(x)) with the padding folded in (see the header comment).
at::Tensor conv3x3(const at::Tensor& x, const at::Tensor& w, const OptTensor& b, bool reflect,
                   at::MemoryFormat fmt) {
  at::Tensor h = at::convolution(x, w, b, {1, 1}, {1, 1}, {1, 1}, false, {0, 0}, 1);
  if (reflect) {
    const Ring r = ring_of(x, w);
    add_halves(h, grouped(r.tb, r.k_tb, 0), 2, 0, h.size(2) - 1);
    add_halves(h, grouped(r.lr, r.k_lr, 1), 3, 0, h.size(3) - 1);
  }
  return h.contiguous(fmt);
}

// Gradients of conv3x3 w.r.t. (x, w, b) for mask.
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv3x3_backward(
    const at::Tensor& g, const at::Tensor& x, const at::Tensor& w, bool has_bias, bool reflect,
    std::array<bool, 3> mask) {
  const int64_t C = w.size(0), H = x.size(2), W = x.size(3);
  std::vector<int64_t> bias_sizes{C};
  auto [gx, gw, gb] = at::convolution_backward(
      g, x, w, has_bias ? at::OptionalIntArrayRef(bias_sizes) : std::nullopt, {1, 1}, {1, 1},
      {1, 1}, false, {0, 0}, 1, {mask[0], mask[1], mask[2] && has_bias});
  if (reflect && (mask[0] || mask[1])) {
    const Ring r = ring_of(x, w);
    const at::Tensor g_tb = at::cat({g.narrow(2, 0, 1), g.narrow(2, H - 1, 1)}, 1);
    const at::Tensor g_lr = at::cat({g.narrow(3, 0, 1), g.narrow(3, W - 1, 1)}, 1);
    auto [gi_tb, gk_tb, u0] = at::convolution_backward(
        g_tb, r.tb, r.k_tb, std::nullopt, {1, 1}, {0, 0}, {1, 1}, false, {0, 0}, 2,
        {mask[0], mask[1], false});
    auto [gi_lr, gk_lr, u1] = at::convolution_backward(
        g_lr, r.lr, r.k_lr, std::nullopt, {1, 1}, {1, 0}, {1, 1}, false, {0, 0}, 2,
        {mask[0], mask[1], false});
    if (mask[1]) {
      add_halves(gw, gk_tb, 2, 0, 2, 0);
      add_halves(gw, gk_lr, 3, 0, 2, 0);
    }
    if (mask[0]) {
      const at::Tensor g_rows = at::reflection_pad1d_backward(gi_tb.squeeze(2), r.rows, {1, 1});
      add_halves(gx, g_rows.unsqueeze(2), 2, 1, H - 2);
      add_halves(gx, gi_lr, 3, 1, W - 2);
    }
  }
  return {gx, gw, gb};
}

// Whether the backward recovers the second norm's output as y - x instead of keeping h2.
bool recover_h2(const at::Tensor& x, const BlockParams& p) {
  const auto t = x.scalar_type();
  return !defined(p.gamma2) && !defined(p.beta2) && (t == at::kFloat || t == at::kDouble);
}

struct Forward {
  at::Tensor y, h1, h2, mean1, rstd1, mean2, rstd2;
};

Forward run_forward(const InstanceNormLaunchers& k, const at::Tensor& x_in, const BlockParams& p,
                    c10::string_view padding, double eps, bool training) {
  check_args(x_in, p);
  const bool reflect = parse_padding(padding);
  TORCH_CHECK(eps >= 0.0, kOp, ": eps must be non-negative, got ", eps);
  const auto fmt = layout_of(x_in);
  const at::Tensor x = x_in.contiguous(fmt);
  Forward f;
  f.h1 = conv3x3(x, p.w1, p.b1, reflect, fmt);
  at::Tensor a;
  std::tie(a, f.mean1, f.rstd1) =
      instance_norm_relu_forward_with(k.forward, f.h1, p.gamma1, p.beta1, eps, true);
  at::Tensor h2 = conv3x3(a, p.w2, p.b2, reflect, fmt);
  a.reset();
  std::tie(f.y, f.mean2, f.rstd2) =
      instance_norm_relu_forward_with(k.forward, h2, p.gamma2, p.beta2, eps, false, x);
  if (training && !recover_h2(x, p)) f.h2 = h2;
  if (!f.h2.defined()) f.h2 = at::empty({0}, x.options());
  return f;
}

}  // namespace

at::Tensor residual_block_with(const InstanceNormLaunchers& k, const at::Tensor& x,
                               const BlockParams& p, c10::string_view padding, double eps) {
  return run_forward(k, x, p, padding, eps, false).y;
}

BlockForward residual_block_forward_with(const InstanceNormLaunchers& k, const at::Tensor& x,
                                         const BlockParams& p, c10::string_view padding,
                                         double eps) {
  Forward f = run_forward(k, x, p, padding, eps, true);
  return {f.y, f.h1, f.h2, f.mean1, f.rstd1, f.mean2, f.rstd2};
}

BlockGrads residual_block_backward_with(const InstanceNormLaunchers& k, const at::Tensor& grad_y,
                                        const at::Tensor& x_in, const at::Tensor& y,
                                        const BlockParams& p, const at::Tensor& h1,
                                        const at::Tensor& h2, const at::Tensor& mean1,
                                        const at::Tensor& rstd1, const at::Tensor& mean2,
                                        const at::Tensor& rstd2, c10::string_view padding,
                                        double eps, std::array<bool, 9> mask) {
  check_args(x_in, p);
  const bool reflect = parse_padding(padding);
  const auto fmt = layout_of(x_in);
  const at::Tensor x = x_in.contiguous(fmt);
  TORCH_CHECK(grad_y.sizes() == x.sizes() && y.sizes() == x.sizes() && h1.sizes() == x.sizes(),
              kOp, ": grad_y, y and h1 must have the input's shape ", x.sizes());
  const at::Tensor gy = grad_y.contiguous(fmt);
  const int64_t N = x.size(0), C = x.size(1);

  // IN2 (no ReLU): the gradient w.r.t. h2.
  at::Tensor gh2;
  OptTensor d_gamma2, d_beta2;
  if (h2.numel() > 0) {
    std::tie(gh2, d_gamma2, d_beta2) = [&] {
      auto [a, b, c] = instance_norm_relu_backward_with(k.backward, gy, h2.contiguous(fmt), mean2,
                                                        rstd2, p.gamma2, p.beta2, false,
                                                        {true, mask[7], mask[8]});
      return std::make_tuple(*a, b, c);
    }();
  } else {
    TORCH_CHECK(recover_h2(x, p), kOp, ": h2 was not saved, but the block has affine "
                "parameters or a reduced-precision dtype");
    // x-hat2 = y - x exactly; run the norm backward with unit statistics, then scale by
    // the real rstd2 (the backward's dx is rstd * (g - mean(g) - xhat * mean(g * xhat))).
    const at::Tensor xhat2 = at::sub(y.contiguous(fmt), x);
    const auto stats = mean2.options();
    auto [a, b, c] = instance_norm_relu_backward_with(
        k.backward, gy, xhat2, at::zeros({N, C}, stats), at::ones({N, C}, stats), std::nullopt,
        std::nullopt, false, {true, false, false});
    gh2 = a->mul_(rstd2.view({N, C, 1, 1}));
  }

  // conv2, on the recomputed activation ReLU(IN1(h1)).
  const at::Tensor h1c = h1.contiguous(fmt);
  at::Tensor act = std::get<0>(
      instance_norm_relu_forward_with(k.forward, h1c, p.gamma1, p.beta1, eps, true));
  auto [g_act, g_w2, g_b2] =
      conv3x3_backward(gh2, act, p.w2, defined(p.b2), reflect, {true, mask[3], mask[4]});
  act.reset();
  gh2.reset();

  // IN1 + ReLU.
  auto [g_h1, d_gamma1, d_beta1] = instance_norm_relu_backward_with(
      k.backward, g_act.contiguous(fmt), h1c, mean1, rstd1, p.gamma1, p.beta1, true,
      {true, mask[5], mask[6]});
  g_act.reset();

  // conv1, plus the identity path.
  auto [g_x, g_w1, g_b1] =
      conv3x3_backward(*g_h1, x, p.w1, defined(p.b1), reflect, {mask[0], mask[1], mask[2]});
  auto opt = [](const at::Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; };
  OptTensor gx;
  if (mask[0]) gx = g_x.add_(gy).contiguous(fmt);
  // Weight gradients are contiguous whatever layout the convolution picked (the fake
  // kernel promises that).
  if (mask[1]) g_w1 = g_w1.contiguous();
  if (mask[3]) g_w2 = g_w2.contiguous();
  return {gx,
          mask[1] ? opt(g_w1) : std::nullopt,
          mask[2] ? opt(g_b1) : std::nullopt,
          mask[3] ? opt(g_w2) : std::nullopt,
          mask[4] ? opt(g_b2) : std::nullopt,
          d_gamma1,
          d_beta1,
          d_gamma2,
          d_beta2};
}

}  // namespace pyganx::ops

TORCH_LIBRARY_FRAGMENT(pyganx, m) {
  // Fake (meta) kernels live in the Python package; autograd in autograd/.
  m.set_python_module("pyganx.ops.residual_block");
  const std::vector<at::Tag> tags = {at::Tag::pt2_compliant_tag};
  m.def(
      "residual_block(Tensor x, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, Tensor? gamma1,"
      " Tensor? beta1, Tensor? gamma2, Tensor? beta2, str padding, float eps) -> Tensor",
      tags);
  m.def(
      "_residual_block_forward(Tensor x, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2,"
      " Tensor? gamma1, Tensor? beta1, Tensor? gamma2, Tensor? beta2, str padding, float eps)"
      " -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
      tags);
  m.def(
      "_residual_block_backward(Tensor grad_y, Tensor x, Tensor y, Tensor w1, Tensor? b1,"
      " Tensor w2, Tensor? b2, Tensor? gamma1, Tensor? beta1, Tensor? gamma2, Tensor? beta2,"
      " Tensor h1, Tensor h2, Tensor mean1, Tensor rstd1, Tensor mean2, Tensor rstd2,"
      " str padding, float eps, bool[9] output_mask)"
      " -> (Tensor?, Tensor?, Tensor?, Tensor?, Tensor?, Tensor?, Tensor?, Tensor?, Tensor?)",
      tags);
}

PYGANX_REGISTER_RESIDUAL_BLOCK(CPU, pyganx::ops::cpu_launchers())
