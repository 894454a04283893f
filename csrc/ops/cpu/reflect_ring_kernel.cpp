// The reflection-padding ring term of a 3x3 convolution on CPU (see residual_block.cpp,
// reflect_ring_geometry.h and docs/ops.md): the four groups' products R_g = K_g U_g as
// one at::bmm, between a gather (U, K) and a scatter-add onto h's border. Its backward is
// two more bmm's, G U^T for w and K^T G for x, G being g on the border. The same
// arithmetic as the ATen formulation with thin strip convolutions (residual_block.cpp),
// in four calls instead of about thirty, most of them small: the ring is a few per cent
// of a convolution's FLOPs, and on small planes the calls around it cost more than it.
#include "../instance_norm_relu.h"
#include "../reflect_ring_geometry.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>

#include <cstdint>

namespace pyganx::cpu {
namespace {

using namespace ops::ring;

struct Geometry {
  int64_t N, C, O, H, W, L;
  Geometry(const at::Tensor& x, const at::Tensor& w)
      : N(x.size(0)),
        C(x.size(1)),
        O(w.size(0)),
        H(x.size(2)),
        W(x.size(3)),
        L(columns(x.size(2), x.size(3))) {}
  int64_t length(int g) const { return ops::ring::length(g, H, W); }
};

// A 4-d tensor's data and strides, for element (n, c, i, j).
template <typename T>
struct Plane4 {
  T* p;
  int64_t sn, sc, sh, sw;
  Plane4(T* data, const at::Tensor& t)
      : p(data), sn(t.stride(0)), sc(t.stride(1)), sh(t.stride(2)), sw(t.stride(3)) {}
  T& at(int64_t n, int64_t c, int64_t i, int64_t j) const {
    return p[n * sn + c * sc + i * sh + j * sw];
  }
};

// f(w_index, k_index) for every tap of the four groups: w (O, C, 3, 3) and K (4, O, 3C)
// contiguous, one task per block of output channels (each touches its own rows only).
template <typename F>
void for_each_tap(const Geometry& d, const F& f) {
  const int64_t plane = d.O * 3 * d.C;
  at::parallel_for(0, d.O, 16, [&](int64_t o0, int64_t o1) {
    for (int64_t o = o0; o < o1; ++o) {
      for (int64_t c = 0; c < d.C; ++c) {
        for (int g = 0; g < 4; ++g) {
          for (int64_t t = 0; t < 3; ++t) {
            f((o * d.C + c) * 9 + tap_offset(g, t), g * plane + o * 3 * d.C + c * 3 + t);
          }
        }
      }
    }
  });
}

// K (4, O, 3C) from w.
template <typename T>
at::Tensor gather_kernel(const at::Tensor& w, const Geometry& d) {
  at::Tensor K = at::empty({4, d.O, 3 * d.C}, w.options());
  const T* src = w.const_data_ptr<T>();
  T* dst = K.mutable_data_ptr<T>();
  for_each_tap(d, [&](int64_t wi, int64_t ki) { dst[ki] = src[wi]; });
  return K;
}

// U (4, 3C, N L): U[g][c*3 + t][n*L + p] = the source of (g, t, p), zero where there is none.
template <typename T>
at::Tensor gather_unfolded(const at::Tensor& x, const Geometry& d) {
  at::Tensor U = at::empty({4, 3 * d.C, d.N * d.L}, x.options());
  const Plane4<const T> xs(x.const_data_ptr<T>(), x);
  T* dst = U.mutable_data_ptr<T>();
  const int64_t row = d.N * d.L, plane = 3 * d.C * row;
  at::parallel_for(0, d.C, 8, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      for (int g = 0; g < 4; ++g) {
        const int64_t len = d.length(g);
        for (int64_t t = 0; t < 3; ++t) {
          T* out = dst + g * plane + (c * 3 + t) * row;
          for (int64_t n = 0; n < d.N; ++n) {
            for (int64_t p = 0; p < d.L; ++p) {
              int64_t a, b;
              out[n * d.L + p] =
                  p < len && source(g, t, p, d.H, d.W, a, b) ? xs.at(n, c, a, b) : T(0);
            }
          }
        }
      }
    }
  });
  return U;
}

// G (4, O, N L): g on the border positions of each group, zero beyond its length.
template <typename T>
at::Tensor gather_border(const at::Tensor& grad, const Geometry& d) {
  at::Tensor G = at::empty({4, d.O, d.N * d.L}, grad.options());
  const Plane4<const T> gs(grad.const_data_ptr<T>(), grad);
  T* dst = G.mutable_data_ptr<T>();
  const int64_t row = d.N * d.L, plane = d.O * row;
  at::parallel_for(0, d.O, 8, [&](int64_t o0, int64_t o1) {
    for (int64_t o = o0; o < o1; ++o) {
      for (int g = 0; g < 4; ++g) {
        T* out = dst + g * plane + o * row;
        for (int64_t n = 0; n < d.N; ++n) {
          for (int64_t p = 0; p < d.L; ++p) {
            int64_t i, j;
            border(g, p, d.H, d.W, i, j);
            out[n * d.L + p] = p < d.length(g) ? gs.at(n, o, i, j) : T(0);
          }
        }
      }
    }
  });
  return G;
}

template <typename T>
inline void add_to(T& dst, T v) {
  using acc_t = at::opmath_type<T>;
  dst = static_cast<T>(static_cast<acc_t>(dst) + static_cast<acc_t>(v));
}

// h[n, o, border of g at p] += R[g][o][n*L + p]; one (n, o) plane per task.
template <typename T>
void scatter_border(at::Tensor& h, const at::Tensor& R, const Geometry& d) {
  TORCH_INTERNAL_ASSERT(R.is_contiguous(), "pyganx.residual_block: ring products not contiguous");
  const Plane4<T> hs(h.mutable_data_ptr<T>(), h);
  const T* src = R.const_data_ptr<T>();
  const int64_t row = d.N * d.L, plane = d.O * row;
  at::parallel_for(0, d.N * d.O, 16, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t n = q / d.O, o = q % d.O;
      for (int g = 0; g < 4; ++g) {
        const T* in = src + g * plane + o * row + n * d.L;
        for (int64_t p = 0; p < d.length(g); ++p) {
          int64_t i, j;
          border(g, p, d.H, d.W, i, j);
          add_to(hs.at(n, o, i, j), in[p]);
        }
      }
    }
  });
}

// gx[n, c, source of (g, t, p)] += gU[g][c*3 + t][n*L + p]; one (n, c) plane per task, so
// the many contributions to one source element add up in a fixed order.
template <typename T>
void scatter_sources(at::Tensor& gx, const at::Tensor& gU, const Geometry& d) {
  TORCH_INTERNAL_ASSERT(gU.is_contiguous(), "pyganx.residual_block: ring products not contiguous");
  const Plane4<T> xs(gx.mutable_data_ptr<T>(), gx);
  const T* src = gU.const_data_ptr<T>();
  const int64_t row = d.N * d.L, plane = 3 * d.C * row;
  at::parallel_for(0, d.N * d.C, 16, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t n = q / d.C, c = q % d.C;
      for (int g = 0; g < 4; ++g) {
        for (int64_t t = 0; t < 3; ++t) {
          const T* in = src + g * plane + (c * 3 + t) * row + n * d.L;
          for (int64_t p = 0; p < d.length(g); ++p) {
            int64_t a, b;
            if (source(g, t, p, d.H, d.W, a, b)) add_to(xs.at(n, c, a, b), in[p]);
          }
        }
      }
    }
  });
}

// gw[o, c, tap (g, t)] += gK[g][o][c*3 + t]; gw contiguous.
template <typename T>
void scatter_kernel(at::Tensor& gw, const at::Tensor& gK, const Geometry& d) {
  TORCH_INTERNAL_ASSERT(gK.is_contiguous(), "pyganx.residual_block: ring products not contiguous");
  const T* src = gK.const_data_ptr<T>();
  T* dst = gw.mutable_data_ptr<T>();
  for_each_tap(d, [&](int64_t wi, int64_t ki) { add_to(dst[wi], src[ki]); });
}

void ring_forward_cpu(at::Tensor& h, const at::Tensor& x, const at::Tensor& w_in) {
  const at::Tensor w = w_in.contiguous();
  const Geometry d(x, w);
  if (d.N * d.O * d.C == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pyganx.ring", [&] {
    const at::Tensor R = at::bmm(gather_kernel<scalar_t>(w, d), gather_unfolded<scalar_t>(x, d));
    scatter_border<scalar_t>(h, R, d);
  });
}

void ring_backward_cpu(const at::Tensor& g, const at::Tensor& x, const at::Tensor& w_in,
                       at::Tensor& gx, at::Tensor& gw) {
  const at::Tensor w = w_in.contiguous();
  const Geometry d(x, w);
  if (d.N * d.O * d.C == 0 || (!gx.defined() && !gw.defined())) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pyganx.ring", [&] {
    const at::Tensor G = gather_border<scalar_t>(g, d);
    if (gw.defined()) {
      TORCH_CHECK(gw.is_contiguous(), "pyganx.residual_block: internal: gw must be contiguous");
      const at::Tensor U = gather_unfolded<scalar_t>(x, d);
      scatter_kernel<scalar_t>(gw, at::bmm(G, U.transpose(1, 2)), d);
    }
    if (gx.defined()) {
      const at::Tensor K = gather_kernel<scalar_t>(w, d);
      scatter_sources<scalar_t>(gx, at::bmm(K.transpose(1, 2), G), d);
    }
  });
}

}  // namespace

ops::ReflectRing ring_launchers() { return {ring_forward_cpu, ring_backward_cpu}; }

}  // namespace pyganx::cpu
