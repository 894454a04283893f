// CUDA kernels of pyganx::instance_norm_relu (forward and backward).
//
// Two strategies, chosen per call:
//  * plane kernels (NCHW, planes below kLargePlane elements, enough planes to fill the
//    GPU or small ones): one block per (n, c)
//    plane reduces its statistics (Welford, merged across threads with Chan's
//    formula), then normalises the plane it has just read (a second read that mostly
//    hits L2), with 16-byte vector loads and stores where alignment allows;
//  * split kernels (NCHW large planes, and every NHWC input): several blocks per plane
//    write partial statistics, a small kernel merges them per plane, and an
//    element-wise kernel applies the result. The NHWC reduction reads rows of 32
//    consecutive channels per warp (coalesced), so channels_last never goes through a
//    copy to NCHW.
// The backward has the same two shapes; its reduction is two plain sums.
// Only light c10 CUDA headers are used (no ATen/cuda/CUDAContext.h), which keeps the
// build free of cuBLAS/cuSPARSE headers and fast.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include "../instance_norm_relu.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <algorithm>

namespace pyganx::cuda {

int runtime_version_built() { return CUDART_VERSION; }

namespace {

using pyganx::ops::InstanceNormInput;

constexpr int kThreads = 256;
constexpr int64_t kLargePlane = 65536;  // planes of at least this many elements are split

int sm_count(int device) {
  static int counts[64] = {0};
  if (device < 0 || device >= 64) return 108;
  if (counts[device] == 0) {
    int n = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
    counts[device] = n;
  }
  return counts[device];
}

__host__ __device__ inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---------------------------------------------------------------------------------
// Reductions. Acc3 is either a Welford triple (mean, m2, count) or two sums (a, b).
template <typename acc_t>
struct Acc3 {
  acc_t a, b, c;
};

template <typename acc_t>
__device__ __forceinline__ Acc3<acc_t> shfl_down(const Acc3<acc_t>& v, int offset) {
  return {__shfl_down_sync(0xffffffffu, v.a, offset), __shfl_down_sync(0xffffffffu, v.b, offset),
          __shfl_down_sync(0xffffffffu, v.c, offset)};
}

struct WelfordCombine {
  template <typename acc_t>
  __device__ __forceinline__ Acc3<acc_t> operator()(const Acc3<acc_t>& x,
                                                    const Acc3<acc_t>& y) const {
    // An empty side returns the other unchanged (its mean of 0 could overflow d * d).
    if (y.c == acc_t(0)) return x;
    if (x.c == acc_t(0)) return y;
    const acc_t n = x.c + y.c;
    const acc_t d = y.a - x.a;
    const acc_t wy = y.c / n;
    return {x.a + d * wy, x.b + y.b + d * d * x.c * wy, n};
  }
};

struct SumCombine {
  template <typename acc_t>
  __device__ __forceinline__ Acc3<acc_t> operator()(const Acc3<acc_t>& x,
                                                    const Acc3<acc_t>& y) const {
    return {x.a + y.a, x.b + y.b, x.c + y.c};
  }
};

template <typename acc_t>
__device__ __forceinline__ void welford_add(Acc3<acc_t>& w, acc_t v) {
  w.c += acc_t(1);
  const acc_t d = v - w.a;
  w.a += d / w.c;
  w.b += d * (v - w.a);
}

// Reduces over the whole (1-D) block; the result is valid in thread 0.
template <typename Combine, typename acc_t>
__device__ Acc3<acc_t> block_reduce(Acc3<acc_t> v, Combine combine) {
  __shared__ Acc3<acc_t> warp_results[32];
  for (int o = 16; o > 0; o >>= 1) v = combine(v, shfl_down(v, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_results[warp] = v;
  __syncthreads();
  const int warps = blockDim.x >> 5;
  v = threadIdx.x < warps ? warp_results[lane] : Acc3<acc_t>{0, 0, 0};
  if (warp == 0) {
    for (int o = 16; o > 0; o >>= 1) v = combine(v, shfl_down(v, o));
  }
  return v;
}

template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

template <typename acc_t, bool RELU>
__device__ __forceinline__ acc_t activate(acc_t v) {
  if constexpr (RELU) return v > acc_t(0) ? v : (v != v ? v : acc_t(0));  // keep NaN
  return v;
}

// Per-plane constants of the backward: xhat = (x - mean) * rstd, pre = xhat * w + b,
// gm = pre > 0 ? g : 0 (with ReLU), dx = k * gm + c0 + c1 * xhat.
template <typename acc_t>
struct GradCoef {
  acc_t mean, rstd, w, b, k, c0, c1;
};

template <typename acc_t, bool RELU>
__device__ __forceinline__ void grad_terms(acc_t g, acc_t x, acc_t mean, acc_t rstd, acc_t w,
                                           acc_t b, acc_t& gm, acc_t& xhat) {
  xhat = (x - mean) * rstd;
  gm = (!RELU || xhat * w + b > acc_t(0)) ? g : acc_t(0);
}

template <typename acc_t>
__device__ __forceinline__ void plane_affine(const acc_t* w, const acc_t* b, int64_t c, acc_t& wc,
                                             acc_t& bc) {
  wc = w ? w[c] : acc_t(1);
  bc = b ? b[c] : acc_t(0);
}

// Writes v at pixel `pix` (h, w) of image `img` (NCHW: the plane; NHWC: n, channel c)
// of a reflection-padded (H + 2) x (W + 2) output, and at the ring positions that
// reflect that pixel: padded row 0 mirrors input row 1, row H + 1 row H - 2, column 0
// column 1, column W + 1 column W - 2 (corners both ways).
template <typename T, bool CL>
__device__ __forceinline__ void store_reflect_padded(T* __restrict__ y, int64_t img, int64_t c,
                                                     int64_t pix, int64_t H, int64_t W, int64_t C,
                                                     T v) {
  const int64_t h = pix / W, w = pix % W, Wp = W + 2;
  auto put = [&](int64_t hp, int64_t wp) {
    const int64_t at = (img * (H + 2) + hp) * Wp + wp;
    if constexpr (CL) {
      y[at * C + c] = v;
    } else {
      y[at] = v;
    }
  };
  int64_t rows[3];
  int nr = 0;
  rows[nr++] = h + 1;
  if (h == 1) rows[nr++] = 0;
  if (h == H - 2) rows[nr++] = H + 1;
  for (int k = 0; k < nr; ++k) {
    put(rows[k], w + 1);
    if (w == 1) put(rows[k], 0);
    if (w == W - 2) put(rows[k], W + 1);
  }
}

// ---------------------------------------------------------------------------------
// Plane kernels (NCHW): one block per plane.
// PAD: y is reflection-padded (store_reflect_padded); needs VEC == 1.
template <typename T, int VEC, bool RELU, bool PAD>
__global__ void forward_plane_kernel(const T* __restrict__ x, const T* __restrict__ res,
                                     T* __restrict__ y, at::opmath_type<T>* __restrict__ mean_out,
                                     at::opmath_type<T>* __restrict__ rstd_out,
                                     const at::opmath_type<T>* __restrict__ weight,
                                     const at::opmath_type<T>* __restrict__ bias, int64_t L,
                                     int64_t C, double eps, int64_t H, int64_t W) {
  static_assert(!PAD || VEC == 1, "a padded output is written element by element");
  using acc_t = at::opmath_type<T>;
  __shared__ acc_t s_mean, s_scale, s_bias;
  const int64_t plane = blockIdx.x;
  const T* xp = x + plane * L;
  T* yp = y + plane * L;
  const int64_t nvec = L / VEC;
  // Statistics of x - pivot (the plane's first element): a large common offset then
  // costs no precision, in the mean or in the normalisation.
  const acc_t pivot = static_cast<acc_t>(xp[0]);

  Acc3<acc_t> w{0, 0, 0};
  for (int64_t i = threadIdx.x; i < nvec; i += blockDim.x) {
    const auto pk = reinterpret_cast<const Pack<T, VEC>*>(xp)[i];
#pragma unroll
    for (int j = 0; j < VEC; ++j) welford_add(w, static_cast<acc_t>(pk.v[j]) - pivot);
  }
  w = block_reduce(w, WelfordCombine{});
  if (threadIdx.x == 0) {
    const acc_t rstd = static_cast<acc_t>(rsqrt(static_cast<double>(w.b) / L + eps));
    mean_out[plane] = static_cast<acc_t>(static_cast<double>(pivot) + static_cast<double>(w.a));
    rstd_out[plane] = rstd;
    acc_t wc, bc;
    plane_affine(weight, bias, plane % C, wc, bc);
    s_mean = w.a;
    s_scale = wc * rstd;
    s_bias = bc;
  }
  __syncthreads();
  const acc_t mu = s_mean, scale = s_scale, beta = s_bias;
  for (int64_t i = threadIdx.x; i < nvec; i += blockDim.x) {
    auto pk = reinterpret_cast<const Pack<T, VEC>*>(xp)[i];
    Pack<T, VEC> rk;
    if (res != nullptr) rk = reinterpret_cast<const Pack<T, VEC>*>(res + plane * L)[i];
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      acc_t v = activate<acc_t, RELU>(((static_cast<acc_t>(pk.v[j]) - pivot) - mu) * scale + beta);
      if (res != nullptr) v += static_cast<acc_t>(rk.v[j]);
      pk.v[j] = static_cast<T>(v);
    }
    if constexpr (PAD) {
      store_reflect_padded<T, false>(y, plane, 0, i, H, W, C, pk.v[0]);
    } else {
      reinterpret_cast<Pack<T, VEC>*>(yp)[i] = pk;
    }
  }
}

template <typename T, int VEC, bool RELU>
__global__ void backward_plane_kernel(
    const T* __restrict__ g, const T* __restrict__ x, T* __restrict__ dx,
    const at::opmath_type<T>* __restrict__ mean, const at::opmath_type<T>* __restrict__ rstd,
    const at::opmath_type<T>* __restrict__ weight, const at::opmath_type<T>* __restrict__ bias,
    at::opmath_type<T>* __restrict__ sum_dy, at::opmath_type<T>* __restrict__ sum_dy_xhat,
    int64_t L, int64_t C) {
  using acc_t = at::opmath_type<T>;
  __shared__ acc_t s_k, s_c0, s_c1;
  const int64_t plane = blockIdx.x;
  const T* gp = g + plane * L;
  const T* xp = x + plane * L;
  const int64_t nvec = L / VEC;
  const acc_t mu = mean[plane], rs = rstd[plane];
  acc_t wc, bc;
  plane_affine(weight, bias, plane % C, wc, bc);

  Acc3<acc_t> s{0, 0, 0};
  for (int64_t i = threadIdx.x; i < nvec; i += blockDim.x) {
    const auto gk = reinterpret_cast<const Pack<T, VEC>*>(gp)[i];
    const auto xk = reinterpret_cast<const Pack<T, VEC>*>(xp)[i];
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      acc_t gm, xh;
      grad_terms<acc_t, RELU>(static_cast<acc_t>(gk.v[j]), static_cast<acc_t>(xk.v[j]), mu, rs, wc,
                              bc, gm, xh);
      s.a += gm;
      s.b += gm * xh;
    }
  }
  s = block_reduce(s, SumCombine{});
  if (threadIdx.x == 0) {
    sum_dy[plane] = s.a;
    sum_dy_xhat[plane] = s.b;
    const acc_t k = wc * rs;
    s_k = k;
    s_c0 = -k * s.a / static_cast<acc_t>(L);
    s_c1 = -k * s.b / static_cast<acc_t>(L);
  }
  if (dx == nullptr) return;
  __syncthreads();
  const acc_t k = s_k, c0 = s_c0, c1 = s_c1;
  T* dp = dx + plane * L;
  for (int64_t i = threadIdx.x; i < nvec; i += blockDim.x) {
    const auto gk = reinterpret_cast<const Pack<T, VEC>*>(gp)[i];
    const auto xk = reinterpret_cast<const Pack<T, VEC>*>(xp)[i];
    Pack<T, VEC> out;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      acc_t gm, xh;
      grad_terms<acc_t, RELU>(static_cast<acc_t>(gk.v[j]), static_cast<acc_t>(xk.v[j]), mu, rs, wc,
                              bc, gm, xh);
      out.v[j] = static_cast<T>(k * gm + c0 + c1 * xh);
    }
    reinterpret_cast<Pack<T, VEC>*>(dp)[i] = out;
  }
}

// ---------------------------------------------------------------------------------
// Split kernels. Element visitors: state(plane) loads what a thread needs for one
// plane; visit(acc, state, memory offset) adds one element to an Acc3.

// Offset of a plane's first element (its pivot for the statistics).
template <bool CL>
__device__ __forceinline__ int64_t plane_start(int64_t plane, int64_t L, int64_t C) {
  if constexpr (CL) return (plane / C) * L * C + plane % C;
  return plane * L;
}

template <typename T, bool CL>
struct StatsVisitor {
  using acc_t = at::opmath_type<T>;
  using Combine = WelfordCombine;
  using State = acc_t;  // the pivot
  const T* x;
  int64_t L, C;
  __device__ __forceinline__ State state(int64_t plane) const {
    return static_cast<acc_t>(x[plane_start<CL>(plane, L, C)]);
  }
  __device__ __forceinline__ void operator()(Acc3<acc_t>& a, const State& pivot,
                                             int64_t off) const {
    welford_add(a, static_cast<acc_t>(x[off]) - pivot);
  }
};

template <typename T, bool RELU>
struct GradVisitor {
  using acc_t = at::opmath_type<T>;
  using Combine = SumCombine;
  using State = GradCoef<acc_t>;
  const T* g;
  const T* x;
  const GradCoef<acc_t>* coef;
  __device__ __forceinline__ State state(int64_t plane) const { return coef[plane]; }
  __device__ __forceinline__ void operator()(Acc3<acc_t>& a, const State& k, int64_t off) const {
    acc_t gm, xh;
    grad_terms<acc_t, RELU>(static_cast<acc_t>(g[off]), static_cast<acc_t>(x[off]), k.mean, k.rstd,
                            k.w, k.b, gm, xh);
    a.a += gm;
    a.b += gm * xh;
  }
};

// NCHW: block b handles segment (b % S) of plane (b / S).
template <typename Visitor, typename acc_t>
__global__ void partial_nchw_kernel(Visitor visit, Acc3<acc_t>* __restrict__ partial, int64_t L,
                                    int64_t S, int64_t seg) {
  const int64_t plane = blockIdx.x / S, s = blockIdx.x % S;
  const int64_t begin = s * seg, end = min(L, begin + seg);
  Acc3<acc_t> a{0, 0, 0};
  const auto st = visit.state(plane);
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) visit(a, st, plane * L + i);
  a = block_reduce(a, typename Visitor::Combine{});
  if (threadIdx.x == 0) partial[plane * S + s] = a;
}

// NHWC: block (32 x 8 threads) handles 32 channels of one image over one row segment.
template <typename Visitor, typename acc_t>
__global__ void partial_nhwc_kernel(Visitor visit, Acc3<acc_t>* __restrict__ partial, int64_t L,
                                    int64_t C, int64_t S, int64_t seg) {
  __shared__ Acc3<acc_t> rows[8][32];
  const int64_t cblocks = ceil_div(C, 32);
  int64_t b = blockIdx.x;
  const int64_t s = b % S;
  b /= S;
  const int64_t cb = b % cblocks, n = b / cblocks;
  const int64_t c = cb * 32 + threadIdx.x;
  const int64_t begin = s * seg, end = min(L, begin + seg);
  Acc3<acc_t> a{0, 0, 0};
  if (c < C) {
    const auto st = visit.state(n * C + c);
    for (int64_t r = begin + threadIdx.y; r < end; r += blockDim.y) {
      visit(a, st, (n * L + r) * C + c);
    }
  }
  rows[threadIdx.y][threadIdx.x] = a;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    typename Visitor::Combine combine;
    for (int k = 1; k < blockDim.y; ++k) a = combine(a, rows[k][threadIdx.x]);
    partial[(n * C + c) * S + s] = a;
  }
}

// Merge the S partial Welford triples (of x - pivot) of each plane into mean/rstd and
// the (pivot, mean, scale, bias) of the apply kernel:
// y = ((x - pivot) - mean) * scale + bias. (Not x * scale + shift: that cancels
// catastrophically for data with a large offset.)
template <typename T, bool CL>
__global__ void finalize_stats_kernel(
    const T* __restrict__ x, const Acc3<at::opmath_type<T>>* __restrict__ partial, int64_t S,
    int64_t planes, int64_t C, int64_t L, double eps, const at::opmath_type<T>* __restrict__ weight,
    const at::opmath_type<T>* __restrict__ bias, at::opmath_type<T>* __restrict__ mean,
    at::opmath_type<T>* __restrict__ rstd, at::opmath_type<T>* __restrict__ norm) {
  using acc_t = at::opmath_type<T>;
  const int64_t q = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (q >= planes) return;
  Acc3<acc_t> a = partial[q * S];
  for (int64_t s = 1; s < S; ++s) a = WelfordCombine{}(a, partial[q * S + s]);
  const acc_t r = static_cast<acc_t>(rsqrt(static_cast<double>(a.b) / L + eps));
  const acc_t pivot = static_cast<acc_t>(x[plane_start<CL>(q, L, C)]);
  mean[q] = static_cast<acc_t>(static_cast<double>(pivot) + static_cast<double>(a.a));
  rstd[q] = r;
  acc_t wc, bc;
  plane_affine(weight, bias, q % C, wc, bc);
  norm[4 * q] = pivot;
  norm[4 * q + 1] = a.a;
  norm[4 * q + 2] = wc * r;
  norm[4 * q + 3] = bc;
}

template <typename acc_t>
__global__ void grad_coef_kernel(const acc_t* __restrict__ mean, const acc_t* __restrict__ rstd,
                                 const acc_t* __restrict__ weight, const acc_t* __restrict__ bias,
                                 int64_t planes, int64_t C, GradCoef<acc_t>* __restrict__ coef) {
  const int64_t q = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (q >= planes) return;
  acc_t wc, bc;
  plane_affine(weight, bias, q % C, wc, bc);
  coef[q] = {mean[q], rstd[q], wc, bc, acc_t(0), acc_t(0), acc_t(0)};
}

template <typename acc_t>
__global__ void finalize_grad_kernel(const Acc3<acc_t>* __restrict__ partial, int64_t S,
                                     int64_t planes, int64_t L, acc_t* __restrict__ sum_dy,
                                     acc_t* __restrict__ sum_dy_xhat,
                                     GradCoef<acc_t>* __restrict__ coef) {
  const int64_t q = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (q >= planes) return;
  Acc3<acc_t> a = partial[q * S];
  for (int64_t s = 1; s < S; ++s) a = SumCombine{}(a, partial[q * S + s]);
  sum_dy[q] = a.a;
  sum_dy_xhat[q] = a.b;
  GradCoef<acc_t>& k = coef[q];
  k.k = k.w * k.rstd;
  k.c0 = -k.k * a.a / static_cast<acc_t>(L);
  k.c1 = -k.k * a.b / static_cast<acc_t>(L);
}

// Plane index of a flat element offset.
template <bool CL>
__device__ __forceinline__ int64_t plane_of(int64_t e, int64_t L, int64_t C) {
  if constexpr (CL) return (e / (L * C)) * C + e % C;
  return e / L;
}

template <typename T, int VEC, bool RELU, bool CL, bool PAD>
__global__ void apply_kernel(const T* __restrict__ x, const T* __restrict__ res, T* __restrict__ y,
                             const at::opmath_type<T>* __restrict__ norm, int64_t total, int64_t L,
                             int64_t C, int64_t H, int64_t W) {
  static_assert(!PAD || VEC == 1, "a padded output is written element by element");
  using acc_t = at::opmath_type<T>;
  const int64_t nvec = total / VEC;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < nvec;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    auto pk = reinterpret_cast<const Pack<T, VEC>*>(x)[i];
    Pack<T, VEC> rk;
    if (res != nullptr) rk = reinterpret_cast<const Pack<T, VEC>*>(res)[i];
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const int64_t q = plane_of<CL>(i * VEC + j, L, C);
      acc_t v = activate<acc_t, RELU>(
          ((static_cast<acc_t>(pk.v[j]) - norm[4 * q]) - norm[4 * q + 1]) * norm[4 * q + 2] +
          norm[4 * q + 3]);
      if (res != nullptr) v += static_cast<acc_t>(rk.v[j]);
      pk.v[j] = static_cast<T>(v);
    }
    if constexpr (PAD) {
      if constexpr (CL) {
        store_reflect_padded<T, true>(y, i / (L * C), i % C, (i / C) % L, H, W, C, pk.v[0]);
      } else {
        store_reflect_padded<T, false>(y, i / L, 0, i % L, H, W, C, pk.v[0]);
      }
    } else {
      reinterpret_cast<Pack<T, VEC>*>(y)[i] = pk;
    }
  }
}

template <typename T, int VEC, bool RELU, bool CL>
__global__ void grad_apply_kernel(const T* __restrict__ g, const T* __restrict__ x,
                                  T* __restrict__ dx,
                                  const GradCoef<at::opmath_type<T>>* __restrict__ coef,
                                  int64_t total, int64_t L, int64_t C) {
  using acc_t = at::opmath_type<T>;
  const int64_t nvec = total / VEC;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < nvec;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const auto gk = reinterpret_cast<const Pack<T, VEC>*>(g)[i];
    const auto xk = reinterpret_cast<const Pack<T, VEC>*>(x)[i];
    Pack<T, VEC> out;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const GradCoef<acc_t> k = coef[plane_of<CL>(i * VEC + j, L, C)];
      acc_t gm, xh;
      grad_terms<acc_t, RELU>(static_cast<acc_t>(gk.v[j]), static_cast<acc_t>(xk.v[j]), k.mean,
                              k.rstd, k.w, k.b, gm, xh);
      out.v[j] = static_cast<T>(k.k * gm + k.c0 + k.c1 * xh);
    }
    reinterpret_cast<Pack<T, VEC>*>(dx)[i] = out;
  }
}

// ---------------------------------------------------------------------------------
// Host side.

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Whether 16-byte vector accesses are possible: every pointer aligned and the span a
// multiple of the vector width.
template <typename T>
bool can_vectorize(int64_t span, std::initializer_list<const void*> ptrs) {
  if (span % (16 / sizeof(T)) != 0) return false;
  for (const void* p : ptrs) {
    if (p != nullptr && !aligned16(p)) return false;
  }
  return true;
}

// Calls f with the vector width as a compile-time constant: 16 bytes of T, or 1.
template <typename T, typename F>
void with_vec(bool vectorize, F&& f) {
  if (vectorize) return f(std::integral_constant<int, static_cast<int>(16 / sizeof(T))>{});
  return f(std::integral_constant<int, 1>{});
}

template <typename F>
void with_bool(bool b, F&& f) {
  if (b) return f(std::true_type{});
  return f(std::false_type{});
}

int plane_threads(int64_t L) {
  if (L <= 1024) return 64;
  if (L <= 4096) return 128;
  if (L <= 16384) return 256;
  return 512;
}

// Number of blocks per plane (S) and elements (or rows) per block for split kernels.
struct Split {
  int64_t S, seg;
};

Split split_for(int64_t L, int64_t blocks_per_segment_unit, int64_t min_seg, int sms) {
  const int64_t want = ceil_div(4LL * sms, std::max<int64_t>(1, blocks_per_segment_unit));
  const int64_t S = std::max<int64_t>(1, std::min<int64_t>(want, ceil_div(L, min_seg)));
  return {S, ceil_div(L, S)};
}

int64_t apply_blocks(int64_t nvec, int sms) {
  return std::max<int64_t>(1, std::min<int64_t>(ceil_div(nvec, kThreads), 16LL * sms));
}

// One block per plane unless the planes are large, or too few to fill the GPU.
bool use_plane_kernels(const InstanceNormInput& in, int sms) {
  if (in.channels_last || in.HW >= kLargePlane) return false;
  return in.N * in.C >= sms || in.HW < 8192;
}

// Grids are one-dimensional in x, which takes at most 2^31 - 1 blocks.
int64_t checked_blocks(int64_t blocks) {
  TORCH_CHECK(blocks <= 2147483647LL, "pyganx.instance_norm_relu: the input is too large for ",
              "one kernel launch (", blocks, " blocks); split the batch");
  return blocks;
}

const void* ptr_or_null(const at::Tensor& t) { return t.defined() ? t.const_data_ptr() : nullptr; }

// Launches the NCHW or NHWC partial reduction of `visit` into `partial` [planes, S].
template <typename Visitor, typename acc_t>
void launch_partial(const InstanceNormInput& in, const Visitor& visit, Acc3<acc_t>* partial,
                    const Split& sp, cudaStream_t stream) {
  if (in.channels_last) {
    const int64_t blocks = checked_blocks(in.N * ceil_div(in.C, 32) * sp.S);
    partial_nhwc_kernel<<<blocks, dim3(32, 8), 0, stream>>>(visit, partial, in.HW, in.C, sp.S,
                                                            sp.seg);
  } else {
    partial_nchw_kernel<<<checked_blocks(in.N * in.C * sp.S), kThreads, 0, stream>>>(
        visit, partial, in.HW, sp.S, sp.seg);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

Split split_of(const InstanceNormInput& in, int sms) {
  if (in.channels_last) return split_for(in.HW, in.N * ceil_div(in.C, 32), 64, sms);
  return split_for(in.HW, in.N * in.C, 4096, sms);
}

void launch_forward_cuda(const InstanceNormInput& in, const at::Tensor& residual, bool pad_out,
                         double eps, bool relu, at::Tensor& out, at::Tensor& mean,
                         at::Tensor& rstd) {
  const c10::cuda::CUDAGuard guard(in.x.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int sms = sm_count(in.x.get_device());
  const int64_t planes = in.N * in.C, L = in.HW, total = planes * L;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, in.x.scalar_type(), "pyganx.instance_norm_relu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto* x = in.x.const_data_ptr<scalar_t>();
        auto* y = out.mutable_data_ptr<scalar_t>();
        const auto* res = static_cast<const scalar_t*>(ptr_or_null(residual));
        const auto* w = static_cast<const acc_t*>(ptr_or_null(in.weight));
        const auto* b = static_cast<const acc_t*>(ptr_or_null(in.bias));
        auto* mu = mean.mutable_data_ptr<acc_t>();
        auto* rs = rstd.mutable_data_ptr<acc_t>();
        if (use_plane_kernels(in, sms)) {
          if (pad_out) {
            with_bool(relu, [&](auto r) {
              forward_plane_kernel<scalar_t, 1, decltype(r)::value, true>
                  <<<checked_blocks(planes), plane_threads(L), 0, stream>>>(
                      x, nullptr, y, mu, rs, w, b, L, in.C, eps, in.H, in.W);
              C10_CUDA_KERNEL_LAUNCH_CHECK();
            });
            return;
          }
          with_vec<scalar_t>(can_vectorize<scalar_t>(L, {x, y, res}), [&](auto vec) {
            with_bool(relu, [&](auto r) {
              forward_plane_kernel<scalar_t, decltype(vec)::value, decltype(r)::value, false>
                  <<<checked_blocks(planes), plane_threads(L), 0, stream>>>(
                      x, res, y, mu, rs, w, b, L, in.C, eps, in.H, in.W);
              C10_CUDA_KERNEL_LAUNCH_CHECK();
            });
          });
          return;
        }
        const Split sp = split_of(in, sms);
        auto partial = at::empty({planes * sp.S * 3}, mean.options());
        auto norm = at::empty({planes * 4}, mean.options());
        auto* part = reinterpret_cast<Acc3<acc_t>*>(partial.mutable_data_ptr<acc_t>());
        with_bool(in.channels_last, [&](auto cl) {
          constexpr bool CL = decltype(cl)::value;
          launch_partial(in, StatsVisitor<scalar_t, CL>{x, L, in.C}, part, sp, stream);
          finalize_stats_kernel<scalar_t, CL><<<ceil_div(planes, kThreads), kThreads, 0, stream>>>(
              x, part, sp.S, planes, in.C, L, eps, w, b, mu, rs, norm.mutable_data_ptr<acc_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
        const auto* nm = norm.const_data_ptr<acc_t>();
        if (pad_out) {
          with_bool(relu, [&](auto r) {
            with_bool(in.channels_last, [&](auto cl) {
              apply_kernel<scalar_t, 1, decltype(r)::value, decltype(cl)::value, true>
                  <<<apply_blocks(total, sms), kThreads, 0, stream>>>(x, nullptr, y, nm, total, L,
                                                                      in.C, in.H, in.W);
              C10_CUDA_KERNEL_LAUNCH_CHECK();
            });
          });
          return;
        }
        with_vec<scalar_t>(can_vectorize<scalar_t>(total, {x, y, res}), [&](auto vec) {
          with_bool(relu, [&](auto r) {
            with_bool(in.channels_last, [&](auto cl) {
              constexpr int V = decltype(vec)::value;
              apply_kernel<scalar_t, V, decltype(r)::value, decltype(cl)::value, false>
                  <<<apply_blocks(total / V, sms), kThreads, 0, stream>>>(x, res, y, nm, total, L,
                                                                          in.C, in.H, in.W);
              C10_CUDA_KERNEL_LAUNCH_CHECK();
            });
          });
        });
      });
}

void launch_backward_cuda(const InstanceNormInput& in, const at::Tensor& grad_out,
                          const at::Tensor& mean, const at::Tensor& rstd, bool relu,
                          at::Tensor& grad_x, at::Tensor& sum_dy, at::Tensor& sum_dy_xhat) {
  const c10::cuda::CUDAGuard guard(in.x.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int sms = sm_count(in.x.get_device());
  const int64_t planes = in.N * in.C, L = in.HW, total = planes * L;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, in.x.scalar_type(), "pyganx._instance_norm_relu_backward", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto* x = in.x.const_data_ptr<scalar_t>();
        const auto* g = grad_out.const_data_ptr<scalar_t>();
        auto* dx = grad_x.defined() ? grad_x.mutable_data_ptr<scalar_t>() : nullptr;
        const auto* w = static_cast<const acc_t*>(ptr_or_null(in.weight));
        const auto* b = static_cast<const acc_t*>(ptr_or_null(in.bias));
        const auto* mu = mean.const_data_ptr<acc_t>();
        const auto* rs = rstd.const_data_ptr<acc_t>();
        auto* sdy = sum_dy.mutable_data_ptr<acc_t>();
        auto* sdyx = sum_dy_xhat.mutable_data_ptr<acc_t>();
        if (use_plane_kernels(in, sms)) {
          with_vec<scalar_t>(can_vectorize<scalar_t>(L, {x, g, dx}), [&](auto vec) {
            with_bool(relu, [&](auto r) {
              backward_plane_kernel<scalar_t, decltype(vec)::value, decltype(r)::value>
                  <<<checked_blocks(planes), plane_threads(L), 0, stream>>>(g, x, dx, mu, rs, w, b,
                                                                            sdy, sdyx, L, in.C);
              C10_CUDA_KERNEL_LAUNCH_CHECK();
            });
          });
          return;
        }
        const Split sp = split_of(in, sms);
        auto partial = at::empty({planes * sp.S * 3}, mean.options());
        auto coef_buf =
            at::empty({planes * static_cast<int64_t>(sizeof(GradCoef<acc_t>) / sizeof(acc_t))},
                      mean.options());
        auto* part = reinterpret_cast<Acc3<acc_t>*>(partial.mutable_data_ptr<acc_t>());
        auto* coef = reinterpret_cast<GradCoef<acc_t>*>(coef_buf.mutable_data_ptr<acc_t>());
        const int64_t pblocks = ceil_div(planes, kThreads);
        grad_coef_kernel<<<pblocks, kThreads, 0, stream>>>(mu, rs, w, b, planes, in.C, coef);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        with_bool(relu, [&](auto r) {
          launch_partial(in, GradVisitor<scalar_t, decltype(r)::value>{g, x, coef}, part, sp,
                         stream);
        });
        finalize_grad_kernel<<<pblocks, kThreads, 0, stream>>>(part, sp.S, planes, L, sdy, sdyx,
                                                               coef);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        if (dx == nullptr) return;
        with_vec<scalar_t>(can_vectorize<scalar_t>(total, {x, g, dx}), [&](auto vec) {
          with_bool(relu, [&](auto r) {
            with_bool(in.channels_last, [&](auto cl) {
              constexpr int V = decltype(vec)::value;
              grad_apply_kernel<scalar_t, V, decltype(r)::value, decltype(cl)::value>
                  <<<apply_blocks(total / V, sms), kThreads, 0, stream>>>(g, x, dx, coef, total, L,
                                                                          in.C);
              C10_CUDA_KERNEL_LAUNCH_CHECK();
            });
          });
        });
      });
}

}  // namespace

ops::InstanceNormLaunchers launchers() {
  return {launch_forward_cuda, launch_backward_cuda, ring_launchers()};
}

using Ops = ops::InstanceNormOps<launch_forward_cuda, launch_backward_cuda>;

}  // namespace pyganx::cuda

TORCH_LIBRARY_IMPL(pyganx, CUDA, m) {
  m.impl("instance_norm_relu", &pyganx::cuda::Ops::op);
  m.impl("_instance_norm_relu_forward", &pyganx::cuda::Ops::forward);
  m.impl("_instance_norm_relu_backward", &pyganx::cuda::Ops::backward);
}
