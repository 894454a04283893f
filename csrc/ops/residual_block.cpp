// pyganx::residual_block: schemas, argument checks and the implementation shared by the
// backends. The CPU and CUDA registrations are in cpu/residual_block_kernel.cpp and
// cuda/residual_block_kernel.cpp, autograd in autograd/residual_block_kernel.cpp.
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
// - Padding is never materialised as a copy. With reflection, IN1 + ReLU writes conv2's
//   input straight into a padded buffer (ring included) and conv2 runs with padding 0;
//   conv1 runs with ATen's implicit zero padding and the difference a reflection makes
//   (it only reaches the outermost output rows and columns) is added as a ring term (an
//   exact reformulation, 4/H of a convolution's FLOPs): by the backend's ring kernels
//   (cpu/reflect_ring_kernel.cpp, cuda/reflect_ring_kernel.cu), except CUDA's forward,
//   which adds it with thin grouped strip convolutions (ATen) unless
//   PYGANX_RING_FORWARD_KERNEL=1 selects its kernel.
// - IN1 + ReLU is one pass; IN2 + the residual add is one pass.
// - Lean backward: besides x and y (kept anyway as block boundaries) only h1 (the first
//   conv's output) and the per-plane statistics are kept. The ReLU'd activation is
//   recomputed from h1; without affine the second norm's output is y - x exactly, so
//   h2 is not kept (float32/float64; for float16/bfloat16, and with affine, h2 is kept
//   so that the gradient does not inherit the rounding of y).
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include "residual_block.h"

#include <ATen/ops/_nnpack_available.h>
#include <ATen/ops/_nnpack_spatial_convolution.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/convolution.h>
#include <ATen/ops/convolution_backward.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/reflection_pad1d.h>
#include <ATen/ops/reflection_pad1d_backward.h>
#include <ATen/ops/reflection_pad2d_backward.h>
#include <ATen/ops/sub.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <string>

namespace pyganx::ops {
namespace {

constexpr const char* kOp = "pyganx.residual_block";

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
  for (const auto& [name, w] :
       {std::pair<const char*, const at::Tensor*>{"w1", &p.w1}, {"w2", &p.w2}}) {
    TORCH_CHECK(w->defined() && w->dim() == 4 && w->size(0) == C && w->size(1) == C &&
                    w->size(2) == 3 && w->size(3) == 3,
                kOp, ": ", name, " must have shape (C, C, 3, 3) with C = ", C, ", got ",
                w->defined() ? w->sizes() : at::IntArrayRef{});
    TORCH_CHECK(w->device() == x.device() && w->scalar_type() == t, kOp, ": ", name, " is ",
                w->scalar_type(), " on ", w->device(), " but the input is ", t, " on ", x.device());
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

// conv3x3(reflect_pad(x)) without the padded tensor: the zero-padded convolution plus
// the ring's contribution, which reaches only the outermost output rows and columns.
// Row -1 reflects row 1 and row H reflects row H-2 (each reflection-padded along W,
// which covers the corners); they meet kernel rows 0 and 2. Column -1 reflects column 1
// and column W column W-2 (zero above and below: the corners are in the rows); they
// meet kernel columns 0 and 2. The four strips, laid out as rows, form one grouped
// convolution with the four matching 1x3 kernel slices (two when H != W).
struct Ring {
  at::Tensor rows;    // (N, 2C, W): x rows 1 and H-2, before their reflection padding
  at::Tensor strips;  // (N, 4C, 1, W+2) when H == W, else undefined
  at::Tensor tb, lr;  // (N, 2C, 1, W+2), (N, 2C, 1, H+2): the row and the column strips
  at::Tensor k;       // (4 C_out, C, 1, 3): kernel rows 0, 2, columns 0, 2 (as rows)
};

Ring ring_of(const at::Tensor& x, const at::Tensor& w) {
  const int64_t H = x.size(2), W = x.size(3);
  Ring r;
  r.rows = at::cat({x.narrow(2, 1, 1), x.narrow(2, H - 2, 1)}, 1).squeeze(2);
  r.tb = at::reflection_pad1d(r.rows, {1, 1}).unsqueeze(2);
  const at::Tensor cols =
      at::cat({x.narrow(3, 1, 1), x.narrow(3, W - 2, 1)}, 1).squeeze(3);  // (N, 2C, H)
  r.lr = at::constant_pad_nd(cols, {1, 1}, 0).unsqueeze(2);
  if (H == W) r.strips = at::cat({r.tb, r.lr}, 1);
  r.k = at::cat({w.narrow(2, 0, 1), w.narrow(2, 2, 1), w.narrow(3, 0, 1).transpose(2, 3),
                 w.narrow(3, 2, 1).transpose(2, 3)},
                0);
  return r;
}

at::Tensor strip_conv(const at::Tensor& in, const at::Tensor& k, int64_t groups) {
  return at::convolution(in, k, std::nullopt, {1, 1}, {0, 0}, {1, 1}, false, {0, 0}, groups);
}

// out (N, C, H, W) += the four strip results s (N, 4C, 1, L) or the halves of two.
void add_ring(at::Tensor& out, const at::Tensor& top_bottom, const at::Tensor& left_right) {
  const int64_t C = out.size(1), H = out.size(2), W = out.size(3);
  out.narrow(2, 0, 1).add_(top_bottom.narrow(1, 0, C));
  out.narrow(2, H - 1, 1).add_(top_bottom.narrow(1, C, C));
  out.narrow(3, 0, 1).add_(left_right.narrow(1, 0, C).transpose(2, 3));
  out.narrow(3, W - 1, 1).add_(left_right.narrow(1, C, C).transpose(2, 3));
}

// Whether the backends' ring kernels run (tests turn them off to check the ATen
// formulation, which CUDA's forward uses, on CPU too).
std::atomic<bool> g_ring_kernels{true};

void add_reflect_ring(const InstanceNormLaunchers& k, at::Tensor& h, const at::Tensor& x,
                      const at::Tensor& w) {
  if (k.ring.forward != nullptr && g_ring_kernels.load()) return k.ring.forward(h, x, w);
  const Ring r = ring_of(x, w);
  const int64_t C = w.size(0);
  if (r.strips.defined()) {
    const at::Tensor s = strip_conv(r.strips, r.k, 4);
    add_ring(h, s.narrow(1, 0, 2 * C), s.narrow(1, 2 * C, 2 * C));
  } else {
    add_ring(h, strip_conv(r.tb, r.k.narrow(0, 0, 2 * C), 2),
             strip_conv(r.lr, r.k.narrow(0, 2 * C, 2 * C), 2));
  }
}

// Gradients of the ring term w.r.t. x and w, added to gx / gw.
void reflect_ring_backward(const InstanceNormLaunchers& k, const at::Tensor& g, const at::Tensor& x,
                           const at::Tensor& w, std::array<bool, 2> mask, at::Tensor& gx,
                           at::Tensor& gw) {
  if (k.ring.backward != nullptr && g_ring_kernels.load()) {
    if (mask[1]) gw = gw.contiguous();
    at::Tensor gx_or_none = mask[0] ? gx : at::Tensor();
    at::Tensor gw_or_none = mask[1] ? gw : at::Tensor();
    return k.ring.backward(g, x, w, gx_or_none, gw_or_none);
  }
  const int64_t C = w.size(0), H = x.size(2), W = x.size(3);
  const Ring r = ring_of(x, w);
  const at::Tensor g_tb = at::cat({g.narrow(2, 0, 1), g.narrow(2, H - 1, 1)}, 1);
  const at::Tensor g_lr = at::cat({g.narrow(3, 0, 1), g.narrow(3, W - 1, 1)}, 1).transpose(2, 3);
  at::Tensor gi_tb, gi_lr, gk;
  auto back = [&](const at::Tensor& go, const at::Tensor& in, const at::Tensor& k, int64_t groups) {
    auto res = at::convolution_backward(go, in, k, std::nullopt, {1, 1}, {0, 0}, {1, 1}, false,
                                        {0, 0}, groups, {mask[0], mask[1], false});
    return std::make_pair(std::get<0>(res), std::get<1>(res));
  };
  if (r.strips.defined()) {
    auto [gi, gkk] = back(at::cat({g_tb, g_lr}, 1), r.strips, r.k, 4);
    if (mask[0]) {
      gi_tb = gi.narrow(1, 0, 2 * C);
      gi_lr = gi.narrow(1, 2 * C, 2 * C);
    }
    gk = gkk;
  } else {
    auto [a, ka] = back(g_tb, r.tb, r.k.narrow(0, 0, 2 * C), 2);
    auto [b, kb] = back(g_lr, r.lr, r.k.narrow(0, 2 * C, 2 * C), 2);
    gi_tb = a;
    gi_lr = b;
    if (mask[1]) gk = at::cat({ka, kb}, 0);
  }
  if (mask[1]) {
    gw.narrow(2, 0, 1).add_(gk.narrow(0, 0, C));
    gw.narrow(2, 2, 1).add_(gk.narrow(0, C, C));
    gw.narrow(3, 0, 1).add_(gk.narrow(0, 2 * C, C).transpose(2, 3));
    gw.narrow(3, 2, 1).add_(gk.narrow(0, 3 * C, C).transpose(2, 3));
  }
  if (mask[0]) {
    const at::Tensor g_rows = at::reflection_pad1d_backward(gi_tb.squeeze(2), r.rows, {1, 1});
    gx.narrow(2, 1, 1).add_(g_rows.narrow(1, 0, C).unsqueeze(2));
    gx.narrow(2, H - 2, 1).add_(g_rows.narrow(1, C, C).unsqueeze(2));
    const at::Tensor g_cols = gi_lr.squeeze(2).narrow(2, 1, H);  // drop the zero padding
    gx.narrow(3, 1, 1).add_(g_cols.narrow(1, 0, C).unsqueeze(3));
    gx.narrow(3, W - 2, 1).add_(g_cols.narrow(1, C, C).unsqueeze(3));
  }
}

// CPU Winograd convolutions (docs/ops.md, "CPU convolutions"). On CPU, oneDNN runs the
// block's 3x3 convolutions at the cores' peak, so the only way left to a faster block is
// fewer FLOPs: ATen's NNPACK backend computes them with Winograd F(6x6, 3x3) transforms.
// ATen's own selection picks oneDNN for these shapes; on large planes NNPACK is 1.2-1.6x
// faster for the forward and the input gradient together with oneDNN's weight gradient
// (measured per convolution), and slower on small planes and few channels. Accuracy:
// about 1.5e-5 of the largest output in float32 (direct convolution: 3e-7).
std::atomic<int> g_cpu_winograd{-1};  // -1: not set yet (PYGANX_CPU_WINOGRAD decides)

bool nnpack_ready() {
  static const bool ready = at::_nnpack_available();  // also initialises NNPACK
  return ready;
}

// Whether a 3x3 stride-1 convolution over x (its unpadded planes H x W) runs through
// NNPACK: float32 NCHW on CPU, at least 128 channels and planes of at least 48 x 48
// (measured on a 2-core Zen 4: 1.18x at 256 x 48 x 48, 1.03x at 256 x 40 x 40, 0.98x at
// 256 x 32 x 32; 1.09x at 128 x 64 x 64).
bool use_winograd(const at::Tensor& x, int64_t H, int64_t W) {
  return x.device().is_cpu() && x.scalar_type() == at::kFloat && x.is_contiguous() &&
         x.size(1) >= 128 && std::min(H, W) >= 48 && cpu_winograd_enabled() && nnpack_ready();
}

// Whether winograd_conv runs NNPACK on OpenMP's threads (cpu/nnpack_conv.cpp) rather
// than through ATen and NNPACK's own pool. On unless PYGANX_NNPACK_OPENMP=0.
bool nnpack_openmp_enabled() {
  static const bool enabled = [] {
    const char* env = std::getenv("PYGANX_NNPACK_OPENMP");
    return !(env != nullptr && std::string(env) == "0") && nnpack_conv3x3_openmp_available();
  }();
  return enabled;
}

// NNPACK's batched path is slower than one image at a time (0.7x against 1.4x at
// 2 x 256 x 64 x 64), so the batch runs image by image.
at::Tensor winograd_conv(const at::Tensor& x, const at::Tensor& w, const OptTensor& b,
                         int64_t pad) {
  if (nnpack_openmp_enabled()) {
    if (auto y = nnpack_conv3x3_openmp(x, w, b, pad)) return *y;
  }
  const at::Tensor xc = x.contiguous(), wc = w.contiguous();
  if (xc.size(0) == 1) return at::_nnpack_spatial_convolution(xc, wc, b, {pad, pad}, {1, 1});
  std::vector<at::Tensor> out;
  out.reserve(xc.size(0));
  for (int64_t n = 0; n < xc.size(0); ++n) {
    out.push_back(at::_nnpack_spatial_convolution(xc.narrow(0, n, 1), wc, b, {pad, pad}, {1, 1}));
  }
  return at::cat(out, 0);
}

// conv3x3 of x with 1-pixel padding: the convolution's own zero padding, plus the ring
// term for reflection. `prepadded`: x already holds the reflected ring (N, C, H+2, W+2).
at::Tensor conv3x3(const InstanceNormLaunchers& k, const at::Tensor& x, const at::Tensor& w,
                   const OptTensor& b, bool reflect, bool prepadded, at::MemoryFormat fmt) {
  const int64_t p = prepadded ? 0 : 1;
  at::Tensor h = use_winograd(x, x.size(2) - 2 + 2 * p, x.size(3) - 2 + 2 * p)
                     ? winograd_conv(x, w, b, p)
                     : at::convolution(x, w, b, {1, 1}, {p, p}, {1, 1}, false, {0, 0}, 1);
  if (reflect && !prepadded) add_reflect_ring(k, h, x, w);
  return h.contiguous(fmt);
}

// Gradients of conv3x3 w.r.t. (x, w, b) for mask (x's gradient has x's shape: the
// padded one when x is prepadded).
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv3x3_backward(
    const InstanceNormLaunchers& k, const at::Tensor& g, const at::Tensor& x, const at::Tensor& w,
    bool has_bias, bool reflect, bool prepadded, std::array<bool, 3> mask) {
  const int64_t p = prepadded ? 0 : 1;
  std::vector<int64_t> bias_sizes{w.size(0)};
  // With Winograd the input gradient is itself a convolution: g, padded by 2 - p, with the
  // kernel rotated by 180 degrees and its two channel axes swapped.
  const bool winograd = mask[0] && use_winograd(x, g.size(2), g.size(3));
  auto [gx, gw, gb] = at::convolution_backward(
      g, x, w, has_bias ? at::OptionalIntArrayRef(bias_sizes) : std::nullopt, {1, 1}, {p, p},
      {1, 1}, false, {0, 0}, 1, {mask[0] && !winograd, mask[1], mask[2] && has_bias});
  if (winograd) gx = winograd_conv(g, w.flip({2, 3}).transpose(0, 1), std::nullopt, 2 - p);
  if (reflect && !prepadded && (mask[0] || mask[1])) {
    reflect_ring_backward(k, g, x, w, {mask[0], mask[1]}, gx, gw);
  }
  return {gx, gw, gb};
}

// The gradient of a reflection-padded (N, C, H+2, W+2) buffer folded onto its interior:
// ring columns onto columns 1 and W-2 (all padded rows), then ring rows onto rows 1 and
// H-2. Returns the interior (N, C, H, W) in layout fmt.
at::Tensor fold_reflect_ring(at::Tensor gp, const at::Tensor& like, at::MemoryFormat fmt) {
  // On CUDA one launch of ATen's reflection_pad2d_backward beats five small ones; on
  // CPU these in-place adds on the ring lines are ~3x faster than it.
  if (gp.is_cuda()) return at::reflection_pad2d_backward(gp, like, {1, 1, 1, 1}).contiguous(fmt);
  const int64_t Hp = gp.size(2), Wp = gp.size(3);
  gp.narrow(3, 2, 1).add_(gp.narrow(3, 0, 1));
  gp.narrow(3, Wp - 3, 1).add_(gp.narrow(3, Wp - 1, 1));
  gp.narrow(2, 2, 1).add_(gp.narrow(2, 0, 1));
  gp.narrow(2, Hp - 3, 1).add_(gp.narrow(2, Hp - 1, 1));
  return gp.narrow(2, 1, Hp - 2).narrow(3, 1, Wp - 2).contiguous(fmt);
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
  f.h1 = conv3x3(k, x, p.w1, p.b1, reflect, false, fmt);
  // With reflection the norm kernel writes the activation straight into a padded
  // buffer, ring included; zero padding is the convolution's own.
  at::Tensor a;
  std::tie(a, f.mean1, f.rstd1) =
      instance_norm_relu_forward_with(k.forward, f.h1, p.gamma1, p.beta1, eps, true, {}, reflect);
  at::Tensor h2 = conv3x3(k, a, p.w2, p.b2, reflect, reflect, fmt);
  a.reset();
  std::tie(f.y, f.mean2, f.rstd2) =
      instance_norm_relu_forward_with(k.forward, h2, p.gamma2, p.beta2, eps, false, x);
  if (training && !recover_h2(x, p)) f.h2 = h2;
  if (!f.h2.defined()) f.h2 = at::empty({0}, x.options());
  return f;
}

}  // namespace

thread_local int t_cpu_winograd = -1;  // set_cpu_winograd_local(): -1 none, 0 off, 1 on

bool cpu_winograd_enabled() {
  if (t_cpu_winograd >= 0) return t_cpu_winograd == 1;
  int v = g_cpu_winograd.load(std::memory_order_relaxed);
  if (v < 0) {
    const char* env = std::getenv("PYGANX_CPU_WINOGRAD");
    v = env != nullptr && std::string(env) == "0" ? 0 : 1;
    int unset = -1;
    if (!g_cpu_winograd.compare_exchange_strong(unset, v)) v = unset;
  }
  return v == 1;
}

int set_cpu_winograd_local(int mode) {
  const int previous = t_cpu_winograd;
  t_cpu_winograd = mode < 0 ? -1 : (mode > 0 ? 1 : 0);
  return previous;
}

bool set_cpu_winograd(bool enabled) {
  const bool previous = cpu_winograd_enabled();
  g_cpu_winograd.store(enabled ? 1 : 0);
  return previous;
}

bool set_ring_kernels(bool enabled) { return g_ring_kernels.exchange(enabled); }

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
  TORCH_CHECK(grad_y.sizes() == x.sizes() && y.sizes() == x.sizes() && h1.sizes() == x.sizes(), kOp,
              ": grad_y, y and h1 must have the input's shape ", x.sizes());
  const at::Tensor gy = grad_y.contiguous(fmt);
  const int64_t N = x.size(0), C = x.size(1);

  // IN2 (no ReLU): the gradient w.r.t. h2.
  at::Tensor gh2;
  OptTensor d_gamma2, d_beta2;
  if (h2.numel() > 0) {
    std::tie(gh2, d_gamma2, d_beta2) = [&] {
      auto [a, b, c] =
          instance_norm_relu_backward_with(k.backward, gy, h2.contiguous(fmt), mean2, rstd2,
                                           p.gamma2, p.beta2, false, {true, mask[7], mask[8]});
      return std::make_tuple(*a, b, c);
    }();
  } else {
    TORCH_CHECK(recover_h2(x, p), kOp,
                ": h2 was not saved, but the block has affine "
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
      instance_norm_relu_forward_with(k.forward, h1c, p.gamma1, p.beta1, eps, true, {}, reflect));
  auto [g_act, g_w2, g_b2] = conv3x3_backward(k, gh2, act, p.w2, defined(p.b2), reflect, reflect,
                                              {true, mask[3], mask[4]});
  act.reset();
  gh2.reset();
  if (reflect) g_act = fold_reflect_ring(g_act, h1c, fmt);

  // IN1 + ReLU.
  auto [g_h1, d_gamma1, d_beta1] =
      instance_norm_relu_backward_with(k.backward, g_act.contiguous(fmt), h1c, mean1, rstd1,
                                       p.gamma1, p.beta1, true, {true, mask[5], mask[6]});
  g_act.reset();

  // conv1, plus the identity path.
  auto [g_x, g_w1, g_b1] = conv3x3_backward(k, *g_h1, x, p.w1, defined(p.b1), reflect, false,
                                            {mask[0], mask[1], mask[2]});
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
