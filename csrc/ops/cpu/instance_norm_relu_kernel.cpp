// CPU kernels of pyganx::instance_norm_relu (forward and backward).
//
// Compiled once per CPU capability: directly as DEFAULT (this compile also holds the
// dispatcher), and through avx2/ and avx512/ which set CPU_CAPABILITY and the target
// ISA before including this file. at::vec picks its SIMD implementation from the
// CPU_CAPABILITY_* macros, so the same source becomes SSE-, AVX2- or AVX-512 code.
//
// Layouts: NCHW planes are contiguous spans; NHWC ("channels_last") is handled as
// [N][HW][C] rows, vectorised across channels, without a copy to NCHW.
//
// Statistics: each chunk of at most kChunk elements (per channel) is reduced in two
// passes over cache-resident data (mean, then the sum of squared deviations), and the
// chunks are merged in double with Chan's formula. This is exact enough for any offset
// of the data (no E[x^2] - E[x]^2 cancellation) and costs one read from memory.
#ifndef CPU_CAPABILITY
#define CPU_CAPABILITY DEFAULT
#define PYGANX_CPU_DISPATCHER 1
#endif

#include "instance_norm_relu_kernel.h"

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <vector>

namespace pyganx::cpu {
namespace CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;

// Elements per chunk (per channel for NHWC rows): 16 KiB of float32 stays in L1.
constexpr int64_t kChunk = 4096;
// Below this many elements of work a parallel task is not worth its start-up.
constexpr int64_t kMinTaskElements = 16384;
// Outputs at least this large are written with non-temporal (streaming) stores: they
// would not survive in cache until their consumer reads them anyway, and streaming
// skips the read-for-ownership of every output line and keeps the input planes,
// which are read twice, in cache.
constexpr int64_t kStreamBytes = int64_t(16) << 20;

// Loads and stores of T as pairs of accumulation-type vectors (one Vectorized<T> of
// a reduced type widens into two float vectors).
template <typename T>
struct Io {
  using acc_t = at::opmath_type<T>;
  using aVec = Vectorized<acc_t>;
  static constexpr int64_t kBlock = 2 * aVec::size();

  static inline void load(const T* p, aVec& a, aVec& b) {
    if constexpr (std::is_same_v<T, acc_t>) {
      a = aVec::loadu(p);
      b = aVec::loadu(p + aVec::size());
    } else {
      std::tie(a, b) = at::vec::convert_to_float<T>(Vectorized<T>::loadu(p));
    }
  }
  static inline void store(T* p, const aVec& a, const aVec& b) {
    if constexpr (std::is_same_v<T, acc_t>) {
      a.store(p);
      b.store(p + aVec::size());
    } else {
      at::vec::convert_from_float<T>(a, b).store(p);
    }
  }

  // Non-temporal store of one block; p must be aligned to kStreamAlign.
  static constexpr bool kCanStream =
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
      true;
#else
      false;
#endif
  static constexpr int64_t kStreamAlign = sizeof(aVec);
  static inline void store_stream(T* p, const aVec& a, const aVec& b) {
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (std::is_same_v<T, float>) {
      _mm512_stream_ps(p, a);
      _mm512_stream_ps(p + aVec::size(), b);
    } else if constexpr (std::is_same_v<T, double>) {
      _mm512_stream_pd(p, a);
      _mm512_stream_pd(p + aVec::size(), b);
    } else {
      _mm512_stream_si512(reinterpret_cast<__m512i*>(p),
                          static_cast<__m512i>(at::vec::convert_from_float<T>(a, b)));
    }
#elif defined(CPU_CAPABILITY_AVX2)
    if constexpr (std::is_same_v<T, float>) {
      _mm256_stream_ps(p, a);
      _mm256_stream_ps(p + aVec::size(), b);
    } else if constexpr (std::is_same_v<T, double>) {
      _mm256_stream_pd(p, a);
      _mm256_stream_pd(p + aVec::size(), b);
    } else {
      _mm256_stream_si256(reinterpret_cast<__m256i*>(p),
                          static_cast<__m256i>(at::vec::convert_from_float<T>(a, b)));
    }
#else
    store(p, a, b);
#endif
  }
};

// Orders streaming stores before anything later (other threads read the output).
inline void stream_fence() {
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
  _mm_sfence();
#endif
}

// out[i] for i in [0, len): block_fn(i, a, b) computes the block at i as two vectors,
// scalar_fn(i) one element. With `stream`, blocks go out as non-temporal stores after
// a scalar prologue up to the store alignment.
template <typename T, typename BlockFn, typename ScalarFn>
inline void span_write(T* out, int64_t len, bool stream, BlockFn block_fn, ScalarFn scalar_fn) {
  using IO = Io<T>;
  typename IO::aVec a, b;
  int64_t i = 0;
  if (IO::kCanStream && stream) {
    for (; i < len && reinterpret_cast<std::uintptr_t>(out + i) % IO::kStreamAlign != 0; ++i) {
      out[i] = static_cast<T>(scalar_fn(i));
    }
    for (; i + IO::kBlock <= len; i += IO::kBlock) {
      block_fn(i, a, b);
      IO::store_stream(out + i, a, b);
    }
    stream_fence();
  } else {
    for (; i + IO::kBlock <= len; i += IO::kBlock) {
      block_fn(i, a, b);
      IO::store(out + i, a, b);
    }
  }
  for (; i < len; ++i) out[i] = static_cast<T>(scalar_fn(i));
}

template <typename V>
inline typename V::value_type hsum(const V& v) {
  alignas(64) typename V::value_type tmp[V::size()];
  v.store(tmp);
  typename V::value_type s = 0;
  for (int64_t i = 0; i < V::size(); ++i) s += tmp[i];
  return s;
}

// Running (mean, M2, count) in double, merged chunk by chunk (Chan et al.).
struct Moments {
  double mean = 0.0, m2 = 0.0;
  int64_t n = 0;
  inline void merge(double cmean, double cm2, int64_t cn) {
    if (cn == 0) return;
    const int64_t tot = n + cn;
    const double delta = cmean - mean;
    mean += delta * static_cast<double>(cn) / static_cast<double>(tot);
    m2 += cm2 + delta * delta * static_cast<double>(n) * static_cast<double>(cn) /
                    static_cast<double>(tot);
    n = tot;
  }
};

// Mean and sum of squared deviations of a contiguous span (len <= kChunk).
// Pass 1 sums x - x[0] (so a large common offset costs no precision in the sum), pass 2
// sums squared deviations from the rounded mean, corrected to the exact mean. Four
// independent accumulators per pass keep add/FMA latency chains off the critical path.
template <typename T>
inline void span_moments(const T* p, int64_t len, double& mean_out, double& m2_out) {
  using IO = Io<T>;
  using acc_t = typename IO::acc_t;
  using aVec = typename IO::aVec;
  constexpr int64_t kStep = 2 * IO::kBlock;
  const acc_t shift = static_cast<acc_t>(p[0]);
  const aVec vk(shift);
  aVec s0(acc_t(0)), s1(acc_t(0)), s2(acc_t(0)), s3(acc_t(0)), a, b, c, d;
  int64_t i = 0;
  for (; i + kStep <= len; i += kStep) {
    IO::load(p + i, a, b);
    IO::load(p + i + IO::kBlock, c, d);
    s0 += a - vk;
    s1 += b - vk;
    s2 += c - vk;
    s3 += d - vk;
  }
  for (; i + IO::kBlock <= len; i += IO::kBlock) {
    IO::load(p + i, a, b);
    s0 += a - vk;
    s1 += b - vk;
  }
  acc_t sum = hsum((s0 + s1) + (s2 + s3));
  for (; i < len; ++i) sum += static_cast<acc_t>(p[i]) - shift;
  const double mean =
      static_cast<double>(shift) + static_cast<double>(sum) / static_cast<double>(len);
  const acc_t mean_r = static_cast<acc_t>(mean);

  const aVec vm(mean_r);
  s0 = s1 = s2 = s3 = aVec(acc_t(0));
  i = 0;
  for (; i + kStep <= len; i += kStep) {
    IO::load(p + i, a, b);
    IO::load(p + i + IO::kBlock, c, d);
    a = a - vm;
    b = b - vm;
    c = c - vm;
    d = d - vm;
    s0 = at::vec::fmadd(a, a, s0);
    s1 = at::vec::fmadd(b, b, s1);
    s2 = at::vec::fmadd(c, c, s2);
    s3 = at::vec::fmadd(d, d, s3);
  }
  for (; i + IO::kBlock <= len; i += IO::kBlock) {
    IO::load(p + i, a, b);
    a = a - vm;
    b = b - vm;
    s0 = at::vec::fmadd(a, a, s0);
    s1 = at::vec::fmadd(b, b, s1);
  }
  acc_t m2 = hsum((s0 + s1) + (s2 + s3));
  for (; i < len; ++i) {
    const acc_t dd = static_cast<acc_t>(p[i]) - mean_r;
    m2 += dd * dd;
  }
  const double off = mean - static_cast<double>(mean_r);
  mean_out = mean;
  m2_out = std::max(0.0, static_cast<double>(m2) - static_cast<double>(len) * off * off);
}

// The normalisation of one plane: y = ((x - mean_hi) - mean_lo) * scale + bias.
// The mean is split into two acc-type parts so that a large common offset of the
// data (x - mean small against mean) does not lose the precision the statistics have;
// folding it into a single x * scale + shift would cancel catastrophically there.
template <typename acc_t>
struct Normalizer {
  acc_t mean_hi, mean_lo, scale, bias;
  static Normalizer make(double mean, double rstd, acc_t w, acc_t b) {
    const acc_t hi = static_cast<acc_t>(mean);
    return {hi, static_cast<acc_t>(mean - static_cast<double>(hi)),
            static_cast<acc_t>(static_cast<double>(w) * rstd), b};
  }
};

template <typename acc_t, bool kRelu>
inline acc_t normalize_scalar(acc_t x, acc_t mh, acc_t ml, acc_t scale, acc_t bias) {
  acc_t v = ((x - mh) - ml) * scale + bias;
  if constexpr (kRelu) v = v > acc_t(0) ? v : (std::isnan(v) ? v : acc_t(0));
  return v;
}

template <typename acc_t, bool kRelu>
inline Vectorized<acc_t> normalize_vec(const Vectorized<acc_t>& x, const Vectorized<acc_t>& mh,
                                       const Vectorized<acc_t>& ml, const Vectorized<acc_t>& scale,
                                       const Vectorized<acc_t>& bias) {
  auto v = at::vec::fmadd((x - mh) - ml, scale, bias);
  if constexpr (kRelu) v = at::vec::maximum(v, Vectorized<acc_t>(acc_t(0)));
  return v;
}

// Normalises a contiguous span of one plane; with `res`, adds it after the activation.
template <typename T, bool kRelu>
inline void span_apply(const T* x, const T* res, T* y, int64_t len,
                       const Normalizer<at::opmath_type<T>>& nz, bool stream) {
  using IO = Io<T>;
  using acc_t = typename IO::acc_t;
  using aVec = typename IO::aVec;
  const aVec mh(nz.mean_hi), ml(nz.mean_lo), vs(nz.scale), vb(nz.bias);
  span_write<T>(
      y, len, stream,
      [&](int64_t i, aVec& a, aVec& b) {
        IO::load(x + i, a, b);
        a = normalize_vec<acc_t, kRelu>(a, mh, ml, vs, vb);
        b = normalize_vec<acc_t, kRelu>(b, mh, ml, vs, vb);
        if (res) {
          aVec ra, rb;
          IO::load(res + i, ra, rb);
          a = a + ra;
          b = b + rb;
        }
      },
      [&](int64_t i) {
        const acc_t v = normalize_scalar<acc_t, kRelu>(static_cast<acc_t>(x[i]), nz.mean_hi,
                                                       nz.mean_lo, nz.scale, nz.bias);
        return res ? v + static_cast<acc_t>(res[i]) : v;
      });
}

// Normalises one NCHW plane into a (H + 2) x (W + 2) plane and fills its ring with
// the reflection: padded row 0 repeats row 2 (input row 1), row H + 1 repeats row H - 1,
// column 0 repeats column 2, column W + 1 column W - 1 (corners follow from the rows).
template <typename T, bool kRelu>
inline void plane_apply_padded(const T* xp, T* yp, int64_t H, int64_t W,
                               const Normalizer<at::opmath_type<T>>& nz) {
  const int64_t Wp = W + 2;
  for (int64_t i = 0; i < H; ++i) {
    T* row = yp + (i + 1) * Wp;
    span_apply<T, kRelu>(xp + i * W, nullptr, row + 1, W, nz, false);
    row[0] = row[2];
    row[W + 1] = row[W - 1];
  }
  std::copy(yp + 2 * Wp, yp + 3 * Wp, yp);
  std::copy(yp + (H - 1) * Wp, yp + H * Wp, yp + (H + 1) * Wp);
}

template <typename acc_t>
struct PlaneAffine {
  acc_t w = 1, b = 0;
};

template <typename acc_t>
inline PlaneAffine<acc_t> plane_affine(const acc_t* weight, const acc_t* bias, int64_t c) {
  return {weight ? weight[c] : acc_t(1), bias ? bias[c] : acc_t(0)};
}

inline int64_t task_grain(int64_t elements_per_item) {
  return std::max<int64_t>(1, kMinTaskElements / std::max<int64_t>(1, elements_per_item));
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---------------------------------------------------------------------------------
// Forward, NCHW.
template <typename T, bool kRelu>
void forward_nchw(const InstanceNormForwardParams& p) {
  using acc_t = at::opmath_type<T>;
  const T* x = static_cast<const T*>(p.x);
  T* y = static_cast<T*>(p.out);
  auto* mean = static_cast<acc_t*>(p.mean);
  auto* rstd = static_cast<acc_t*>(p.rstd);
  const auto* weight = static_cast<const acc_t*>(p.weight);
  const auto* bias = static_cast<const acc_t*>(p.bias);
  const T* res = static_cast<const T*>(p.residual);
  const int64_t planes = p.N * p.C, L = p.HW;
  const int64_t chunks = ceil_div(L, kChunk);
  const bool stream = planes * L * static_cast<int64_t>(sizeof(T)) >= kStreamBytes;
  auto res_at = [&](int64_t off) { return res ? res + off : nullptr; };
  const int64_t padded_plane = (p.H + 2) * (p.W + 2);

  auto finish_plane = [&](int64_t q, const Moments& m) {
    const double r = 1.0 / std::sqrt(m.m2 / static_cast<double>(L) + p.eps);
    mean[q] = static_cast<acc_t>(m.mean);
    rstd[q] = static_cast<acc_t>(r);
    const auto aff = plane_affine(weight, bias, q % p.C);
    return Normalizer<acc_t>::make(m.mean, r, aff.w, aff.b);
  };

  if (planes >= at::get_num_threads() || chunks == 1) {
    // One task per plane: statistics, then the normalisation while the plane is hot.
    at::parallel_for(0, planes, task_grain(L), [&](int64_t begin, int64_t end) {
      for (int64_t q = begin; q < end; ++q) {
        const T* xp = x + q * L;
        Moments m;
        for (int64_t s = 0; s < L; s += kChunk) {
          double cm, cm2;
          const int64_t len = std::min(kChunk, L - s);
          span_moments(xp + s, len, cm, cm2);
          m.merge(cm, cm2, len);
        }
        if (p.pad_out) {
          plane_apply_padded<T, kRelu>(xp, y + q * padded_plane, p.H, p.W, finish_plane(q, m));
        } else {
          span_apply<T, kRelu>(xp, res_at(q * L), y + q * L, L, finish_plane(q, m), stream);
        }
      }
    });
    return;
  }
  // Fewer planes than threads: split each plane into chunks for both passes.
  std::vector<double> cmean(planes * chunks), cm2(planes * chunks);
  at::parallel_for(0, planes * chunks, task_grain(kChunk), [&](int64_t begin, int64_t end) {
    for (int64_t it = begin; it < end; ++it) {
      const int64_t q = it / chunks, s = (it % chunks) * kChunk;
      span_moments(x + q * L + s, std::min(kChunk, L - s), cmean[it], cm2[it]);
    }
  });
  // Not a std::vector: GCC 13 refuses to inline std::allocator's always_inline members
  // for a type of this (target-pragma) namespace into the ISA-specific code.
  std::unique_ptr<Normalizer<acc_t>[]> nz(new Normalizer<acc_t>[planes]);
  for (int64_t q = 0; q < planes; ++q) {
    Moments m;
    for (int64_t k = 0; k < chunks; ++k)
      m.merge(cmean[q * chunks + k], cm2[q * chunks + k], std::min(kChunk, L - k * kChunk));
    nz[q] = finish_plane(q, m);
  }
  if (p.pad_out) {
    at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
      for (int64_t q = begin; q < end; ++q) {
        plane_apply_padded<T, kRelu>(x + q * L, y + q * padded_plane, p.H, p.W, nz[q]);
      }
    });
    return;
  }
  at::parallel_for(0, planes * chunks, task_grain(kChunk), [&](int64_t begin, int64_t end) {
    for (int64_t it = begin; it < end; ++it) {
      const int64_t q = it / chunks, s = (it % chunks) * kChunk;
      span_apply<T, kRelu>(x + q * L + s, res_at(q * L + s), y + q * L + s, std::min(kChunk, L - s),
                           nz[q], stream);
    }
  });
}

// ---------------------------------------------------------------------------------
// NHWC helpers: rows of C channels; a work item is (n, a block of rows).
// An item holds about kRowItem elements (128 KiB of float32, in L2 for its two
// passes), so that the per-(n, c) merge of item statistics stays cheap.
constexpr int64_t kRowItem = 32768;

struct RowBlocks {
  int64_t rows_per_item, items_per_image, items;
  RowBlocks(int64_t N, int64_t HW, int64_t C) {
    // At most kChunk rows: each channel's float sums then cover <= kChunk elements.
    rows_per_item = std::clamp<int64_t>(kRowItem / std::max<int64_t>(1, C), 1, kChunk);
    rows_per_item = std::min(rows_per_item, HW);
    items_per_image = ceil_div(HW, rows_per_item);
    items = N * items_per_image;
  }
  int64_t image(int64_t it) const { return it / items_per_image; }
  int64_t row_begin(int64_t it) const { return (it % items_per_image) * rows_per_item; }
  int64_t row_count(int64_t it, int64_t HW) const {
    return std::min(rows_per_item, HW - row_begin(it));
  }
};

// Visits a row of C values, vectorised across channels: vec_op(c, a, b) gets the
// block of channels starting at c as two vectors, scalar_op(c, v) each leftover one.
template <typename T, typename VecOp, typename ScalarOp>
inline void row_foreach(const T* row, int64_t C, VecOp vec_op, ScalarOp scalar_op) {
  using IO = Io<T>;
  typename IO::aVec a, b;
  int64_t c = 0;
  for (; c + IO::kBlock <= C; c += IO::kBlock) {
    IO::load(row + c, a, b);
    vec_op(c, a, b);
  }
  for (; c < C; ++c) scalar_op(c, static_cast<at::opmath_type<T>>(row[c]));
}

template <typename acc_t>
inline void vec_accumulate(acc_t* dst, int64_t c, const Vectorized<acc_t>& a,
                           const Vectorized<acc_t>& b) {
  constexpr int64_t w = Vectorized<acc_t>::size();
  (Vectorized<acc_t>::loadu(dst + c) + a).store(dst + c);
  (Vectorized<acc_t>::loadu(dst + c + w) + b).store(dst + c + w);
}

// Per-channel mean and M2 of one item (rows x C), written to cmean/cm2[0..C); the
// same two passes as span_moments, with the first row as the per-channel shift.
template <typename T>
void rows_moments(const T* base, int64_t rows, int64_t C, double* cmean, double* cm2,
                  std::vector<at::opmath_type<T>>& buf) {
  using acc_t = at::opmath_type<T>;
  using aVec = Vectorized<acc_t>;
  constexpr int64_t w = aVec::size();
  buf.assign(3 * C, acc_t(0));
  acc_t* sum = buf.data();
  acc_t* mu = buf.data() + C;  // shift in pass 1, rounded mean in pass 2
  acc_t* first = buf.data() + 2 * C;
  for (int64_t c = 0; c < C; ++c) first[c] = static_cast<acc_t>(base[c]);
  for (int64_t r = 0; r < rows; ++r) {
    row_foreach<T>(
        base + r * C, C,
        [&](int64_t c, const aVec& a, const aVec& b) {
          vec_accumulate(sum, c, a - aVec::loadu(first + c), b - aVec::loadu(first + c + w));
        },
        [&](int64_t c, acc_t v) { sum[c] += v - first[c]; });
  }
  for (int64_t c = 0; c < C; ++c) {
    cmean[c] =
        static_cast<double>(first[c]) + static_cast<double>(sum[c]) / static_cast<double>(rows);
    mu[c] = static_cast<acc_t>(cmean[c]);
    sum[c] = 0;  // reused for M2
  }
  for (int64_t r = 0; r < rows; ++r) {
    row_foreach<T>(
        base + r * C, C,
        [&](int64_t c, aVec a, aVec b) {
          a = a - aVec::loadu(mu + c);
          b = b - aVec::loadu(mu + c + w);
          vec_accumulate(sum, c, a * a, b * b);
        },
        [&](int64_t c, acc_t v) {
          const acc_t d = v - mu[c];
          sum[c] += d * d;
        });
  }
  for (int64_t c = 0; c < C; ++c) {
    const double off = cmean[c] - static_cast<double>(mu[c]);
    cm2[c] = std::max(0.0, static_cast<double>(sum[c]) - static_cast<double>(rows) * off * off);
  }
}

// Per-image channel vectors of the Normalizer fields, so NHWC rows vectorise.
template <typename acc_t>
struct ChannelNormalizers {
  std::vector<acc_t> mean_hi, mean_lo, scale, bias;
  explicit ChannelNormalizers(int64_t n) : mean_hi(n), mean_lo(n), scale(n), bias(n) {}
  void set(int64_t q, const Normalizer<acc_t>& nz) {
    mean_hi[q] = nz.mean_hi;
    mean_lo[q] = nz.mean_lo;
    scale[q] = nz.scale;
    bias[q] = nz.bias;
  }
};

// Normalises rows x C channels (adding `res` when given); q0 is the (n, 0) index into
// the channel vectors.
template <typename T, bool kRelu>
void rows_apply(const T* x, const T* res, T* y, int64_t rows, int64_t C,
                const ChannelNormalizers<at::opmath_type<T>>& cn, int64_t q0) {
  using IO = Io<T>;
  using acc_t = typename IO::acc_t;
  using aVec = typename IO::aVec;
  constexpr int64_t w = aVec::size();
  const acc_t* mh = cn.mean_hi.data() + q0;
  const acc_t* ml = cn.mean_lo.data() + q0;
  const acc_t* sc = cn.scale.data() + q0;
  const acc_t* bi = cn.bias.data() + q0;
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * C;
    const T* rr = res ? res + r * C : nullptr;
    T* yr = y + r * C;
    aVec a, b;
    int64_t c = 0;
    for (; c + IO::kBlock <= C; c += IO::kBlock) {
      IO::load(xr + c, a, b);
      a = normalize_vec<acc_t, kRelu>(a, aVec::loadu(mh + c), aVec::loadu(ml + c),
                                      aVec::loadu(sc + c), aVec::loadu(bi + c));
      b = normalize_vec<acc_t, kRelu>(b, aVec::loadu(mh + c + w), aVec::loadu(ml + c + w),
                                      aVec::loadu(sc + c + w), aVec::loadu(bi + c + w));
      if (rr) {
        aVec ra, rb;
        IO::load(rr + c, ra, rb);
        a = a + ra;
        b = b + rb;
      }
      IO::store(yr + c, a, b);
    }
    for (; c < C; ++c) {
      const acc_t v =
          normalize_scalar<acc_t, kRelu>(static_cast<acc_t>(xr[c]), mh[c], ml[c], sc[c], bi[c]);
      yr[c] = static_cast<T>(rr ? v + static_cast<acc_t>(rr[c]) : v);
    }
  }
}

// The apply pass of the NHWC forward into rows of W + 2 pixels with the reflected ring
// (see plane_apply_padded): items are split where they cross an image row, then the
// ring columns and the ring rows are copied in two passes.
template <typename T, bool kRelu>
void forward_nhwc_apply_padded(const InstanceNormForwardParams& p, const RowBlocks& rb,
                               const ChannelNormalizers<at::opmath_type<T>>& cn) {
  const T* x = static_cast<const T*>(p.x);
  T* y = static_cast<T*>(p.out);
  const int64_t C = p.C, L = p.HW, H = p.H, W = p.W, Wp = W + 2;
  auto pixel = [&](int64_t n, int64_t hp, int64_t wp) {
    return y + ((n * (H + 2) + hp) * Wp + wp) * C;
  };
  at::parallel_for(0, rb.items, task_grain(rb.rows_per_item * C), [&](int64_t begin, int64_t end) {
    for (int64_t it = begin; it < end; ++it) {
      const int64_t n = rb.image(it), stop = rb.row_begin(it) + rb.row_count(it, L);
      for (int64_t pix = rb.row_begin(it); pix < stop;) {
        const int64_t h = pix / W, w = pix % W, seg = std::min(W - w, stop - pix);
        rows_apply<T, kRelu>(x + (n * L + pix) * C, nullptr, pixel(n, h + 1, w + 1), seg, C, cn,
                             n * C);
        pix += seg;
      }
    }
  });
  at::parallel_for(0, p.N * H, task_grain(4 * C), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / H, hp = r % H + 1;
      std::copy(pixel(n, hp, 2), pixel(n, hp, 3), pixel(n, hp, 0));
      std::copy(pixel(n, hp, W - 1), pixel(n, hp, W), pixel(n, hp, W + 1));
    }
  });
  at::parallel_for(0, p.N, 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      std::copy(pixel(n, 2, 0), pixel(n, 3, 0), pixel(n, 0, 0));
      std::copy(pixel(n, H - 1, 0), pixel(n, H, 0), pixel(n, H + 1, 0));
    }
  });
}

// Forward, NHWC: per-item channel moments, merged per (n, c), then one apply pass.
template <typename T, bool kRelu>
void forward_nhwc(const InstanceNormForwardParams& p) {
  using acc_t = at::opmath_type<T>;
  const T* x = static_cast<const T*>(p.x);
  T* y = static_cast<T*>(p.out);
  auto* mean = static_cast<acc_t*>(p.mean);
  auto* rstd = static_cast<acc_t*>(p.rstd);
  const auto* weight = static_cast<const acc_t*>(p.weight);
  const auto* bias = static_cast<const acc_t*>(p.bias);
  const T* res = static_cast<const T*>(p.residual);
  const int64_t C = p.C, L = p.HW;
  const RowBlocks rb(p.N, L, C);

  std::vector<double> cmean(rb.items * C), cm2(rb.items * C);
  at::parallel_for(0, rb.items, task_grain(rb.rows_per_item * C), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf;
    for (int64_t it = begin; it < end; ++it) {
      const int64_t n = rb.image(it), r0 = rb.row_begin(it);
      rows_moments<T>(x + (n * L + r0) * C, rb.row_count(it, L), C, &cmean[it * C], &cm2[it * C],
                      buf);
    }
  });
  ChannelNormalizers<acc_t> cn(p.N * C);
  at::parallel_for(0, p.N * C, 64, [&](int64_t begin, int64_t end) {
    for (int64_t q = begin; q < end; ++q) {
      const int64_t n = q / C, c = q % C;
      Moments m;
      for (int64_t k = 0; k < rb.items_per_image; ++k) {
        const int64_t it = n * rb.items_per_image + k;
        m.merge(cmean[it * C + c], cm2[it * C + c], rb.row_count(it, L));
      }
      const double r = 1.0 / std::sqrt(m.m2 / static_cast<double>(L) + p.eps);
      mean[q] = static_cast<acc_t>(m.mean);
      rstd[q] = static_cast<acc_t>(r);
      const auto aff = plane_affine(weight, bias, c);
      cn.set(q, Normalizer<acc_t>::make(m.mean, r, aff.w, aff.b));
    }
  });
  if (p.pad_out) {
    forward_nhwc_apply_padded<T, kRelu>(p, rb, cn);
    return;
  }
  at::parallel_for(0, rb.items, task_grain(rb.rows_per_item * C), [&](int64_t begin, int64_t end) {
    for (int64_t it = begin; it < end; ++it) {
      const int64_t n = rb.image(it), off = (n * L + rb.row_begin(it)) * C;
      rows_apply<T, kRelu>(x + off, res ? res + off : nullptr, y + off, rb.row_count(it, L), C, cn,
                           n * C);
    }
  });
}

// ---------------------------------------------------------------------------------
// Backward. With xhat = (x - mean) * rstd, pre = xhat * w + b and the ReLU mask
// m = pre > 0, the upstream gradient behind the ReLU is gm = g * m and
//   dbias = sum(gm), dweight = sum(gm * xhat),
//   dx = w * rstd * (gm - sum(gm) / L - xhat * sum(gm * xhat) / L).
// Pass 1 reduces the two sums per plane, pass 2 writes dx.

// Per-plane constants of the backward.
template <typename acc_t>
struct BackwardPlane {
  acc_t mean, rstd, w, b;
};

// gm and xhat of one vector of g and x.
template <typename acc_t, bool kRelu>
inline void grad_terms(const Vectorized<acc_t>& g, const Vectorized<acc_t>& x,
                       const Vectorized<acc_t>& mean, const Vectorized<acc_t>& rstd,
                       const Vectorized<acc_t>& w, const Vectorized<acc_t>& b,
                       Vectorized<acc_t>& gm, Vectorized<acc_t>& xhat) {
  xhat = (x - mean) * rstd;
  if constexpr (kRelu) {
    const auto pre = at::vec::fmadd(xhat, w, b);
    gm = Vectorized<acc_t>::blendv(Vectorized<acc_t>(acc_t(0)), g,
                                   pre > Vectorized<acc_t>(acc_t(0)));
  } else {
    gm = g;
  }
}

template <typename acc_t, bool kRelu>
inline void grad_terms_scalar(acc_t g, acc_t x, acc_t mean, acc_t rstd, acc_t w, acc_t b, acc_t& gm,
                              acc_t& xhat) {
  xhat = (x - mean) * rstd;
  gm = (!kRelu || xhat * w + b > acc_t(0)) ? g : acc_t(0);
}

// Sums of gm and gm * xhat over a contiguous span of one plane.
template <typename T, bool kRelu>
inline void span_grad_sums(const T* g, const T* x, int64_t len,
                           const BackwardPlane<at::opmath_type<T>>& pl, double& s_gm,
                           double& s_gmx) {
  using IO = Io<T>;
  using acc_t = typename IO::acc_t;
  using aVec = typename IO::aVec;
  const aVec vm(pl.mean), vr(pl.rstd), vw(pl.w), vb(pl.b);
  // Two accumulator pairs: the halves of a block do not wait on each other's adds.
  aVec A0(acc_t(0)), B0(acc_t(0)), A1(acc_t(0)), B1(acc_t(0)), g0, g1, x0, x1, gm, xh;
  int64_t i = 0;
  for (; i + IO::kBlock <= len; i += IO::kBlock) {
    IO::load(g + i, g0, g1);
    IO::load(x + i, x0, x1);
    grad_terms<acc_t, kRelu>(g0, x0, vm, vr, vw, vb, gm, xh);
    A0 += gm;
    B0 = at::vec::fmadd(gm, xh, B0);
    grad_terms<acc_t, kRelu>(g1, x1, vm, vr, vw, vb, gm, xh);
    A1 += gm;
    B1 = at::vec::fmadd(gm, xh, B1);
  }
  acc_t a = hsum(A0 + A1), b = hsum(B0 + B1);
  for (; i < len; ++i) {
    acc_t gms, xhs;
    grad_terms_scalar<acc_t, kRelu>(static_cast<acc_t>(g[i]), static_cast<acc_t>(x[i]), pl.mean,
                                    pl.rstd, pl.w, pl.b, gms, xhs);
    a += gms;
    b += gms * xhs;
  }
  s_gm = static_cast<double>(a);
  s_gmx = static_cast<double>(b);
}

// dx = k * gm + c0 + c1 * xhat over a contiguous span.
template <typename T, bool kRelu>
inline void span_grad_input(const T* g, const T* x, T* dx, int64_t len,
                            const BackwardPlane<at::opmath_type<T>>& pl, at::opmath_type<T> k,
                            at::opmath_type<T> c0, at::opmath_type<T> c1, bool stream) {
  using IO = Io<T>;
  using acc_t = typename IO::acc_t;
  using aVec = typename IO::aVec;
  const aVec vm(pl.mean), vr(pl.rstd), vw(pl.w), vb(pl.b), vk(k), vc0(c0), vc1(c1);
  span_write<T>(
      dx, len, stream,
      [&](int64_t i, aVec& d0, aVec& d1) {
        aVec g0, g1, x0, x1, gm, xh;
        IO::load(g + i, g0, g1);
        IO::load(x + i, x0, x1);
        grad_terms<acc_t, kRelu>(g0, x0, vm, vr, vw, vb, gm, xh);
        d0 = at::vec::fmadd(vk, gm, at::vec::fmadd(vc1, xh, vc0));
        grad_terms<acc_t, kRelu>(g1, x1, vm, vr, vw, vb, gm, xh);
        d1 = at::vec::fmadd(vk, gm, at::vec::fmadd(vc1, xh, vc0));
      },
      [&](int64_t i) {
        acc_t gms, xhs;
        grad_terms_scalar<acc_t, kRelu>(static_cast<acc_t>(g[i]), static_cast<acc_t>(x[i]), pl.mean,
                                        pl.rstd, pl.w, pl.b, gms, xhs);
        return k * gms + c0 + c1 * xhs;
      });
}

template <typename acc_t>
inline void grad_input_coefficients(const BackwardPlane<acc_t>& pl, double s_gm, double s_gmx,
                                    int64_t L, acc_t& k, acc_t& c0, acc_t& c1) {
  const double kk = static_cast<double>(pl.w) * static_cast<double>(pl.rstd);
  k = static_cast<acc_t>(kk);
  c0 = static_cast<acc_t>(-kk * s_gm / static_cast<double>(L));
  c1 = static_cast<acc_t>(-kk * s_gmx / static_cast<double>(L));
}

template <typename T, bool kRelu>
void backward_nchw(const InstanceNormBackwardParams& p) {
  using acc_t = at::opmath_type<T>;
  const T* g = static_cast<const T*>(p.grad_out);
  const T* x = static_cast<const T*>(p.x);
  T* dx = static_cast<T*>(p.grad_x);
  const auto* mean = static_cast<const acc_t*>(p.mean);
  const auto* rstd = static_cast<const acc_t*>(p.rstd);
  const auto* weight = static_cast<const acc_t*>(p.weight);
  const auto* bias = static_cast<const acc_t*>(p.bias);
  auto* sum_dy = static_cast<acc_t*>(p.sum_dy);
  auto* sum_dy_xhat = static_cast<acc_t*>(p.sum_dy_xhat);
  const int64_t planes = p.N * p.C, L = p.HW;
  const int64_t chunks = ceil_div(L, kChunk);
  const bool stream = planes * L * static_cast<int64_t>(sizeof(T)) >= kStreamBytes;

  auto plane = [&](int64_t q) {
    const auto aff = plane_affine(weight, bias, q % p.C);
    return BackwardPlane<acc_t>{mean[q], rstd[q], aff.w, aff.b};
  };

  if (planes >= at::get_num_threads() || chunks == 1) {
    at::parallel_for(0, planes, task_grain(L), [&](int64_t begin, int64_t end) {
      for (int64_t q = begin; q < end; ++q) {
        const auto pl = plane(q);
        const T* gp = g + q * L;
        const T* xp = x + q * L;
        double A = 0, B = 0;
        for (int64_t s = 0; s < L; s += kChunk) {
          double a, b;
          span_grad_sums<T, kRelu>(gp + s, xp + s, std::min(kChunk, L - s), pl, a, b);
          A += a;
          B += b;
        }
        sum_dy[q] = static_cast<acc_t>(A);
        sum_dy_xhat[q] = static_cast<acc_t>(B);
        if (dx) {
          acc_t k, c0, c1;
          grad_input_coefficients(pl, A, B, L, k, c0, c1);
          span_grad_input<T, kRelu>(gp, xp, dx + q * L, L, pl, k, c0, c1, stream);
        }
      }
    });
    return;
  }
  std::vector<double> pa(planes * chunks), pb(planes * chunks);
  at::parallel_for(0, planes * chunks, task_grain(kChunk), [&](int64_t begin, int64_t end) {
    for (int64_t it = begin; it < end; ++it) {
      const int64_t q = it / chunks, s = (it % chunks) * kChunk;
      span_grad_sums<T, kRelu>(g + q * L + s, x + q * L + s, std::min(kChunk, L - s), plane(q),
                               pa[it], pb[it]);
    }
  });
  std::vector<double> A(planes, 0.0), B(planes, 0.0);
  for (int64_t q = 0; q < planes; ++q) {
    for (int64_t k = 0; k < chunks; ++k) {
      A[q] += pa[q * chunks + k];
      B[q] += pb[q * chunks + k];
    }
    sum_dy[q] = static_cast<acc_t>(A[q]);
    sum_dy_xhat[q] = static_cast<acc_t>(B[q]);
  }
  if (!dx) return;
  at::parallel_for(0, planes * chunks, task_grain(kChunk), [&](int64_t begin, int64_t end) {
    for (int64_t it = begin; it < end; ++it) {
      const int64_t q = it / chunks, s = (it % chunks) * kChunk;
      const auto pl = plane(q);
      acc_t k, c0, c1;
      grad_input_coefficients(pl, A[q], B[q], L, k, c0, c1);
      span_grad_input<T, kRelu>(g + q * L + s, x + q * L + s, dx + q * L + s,
                                std::min(kChunk, L - s), pl, k, c0, c1, stream);
    }
  });
}

template <typename T, bool kRelu>
void backward_nhwc(const InstanceNormBackwardParams& p) {
  using acc_t = at::opmath_type<T>;
  using aVec = Vectorized<acc_t>;
  constexpr int64_t w = aVec::size();
  const T* g = static_cast<const T*>(p.grad_out);
  const T* x = static_cast<const T*>(p.x);
  T* dx = static_cast<T*>(p.grad_x);
  const auto* mean = static_cast<const acc_t*>(p.mean);
  const auto* rstd = static_cast<const acc_t*>(p.rstd);
  const auto* weight = static_cast<const acc_t*>(p.weight);
  const auto* bias = static_cast<const acc_t*>(p.bias);
  auto* sum_dy = static_cast<acc_t*>(p.sum_dy);
  auto* sum_dy_xhat = static_cast<acc_t*>(p.sum_dy_xhat);
  const int64_t N = p.N, C = p.C, L = p.HW;
  const RowBlocks rb(N, L, C);

  std::vector<acc_t> wv(C), bv(C);
  for (int64_t c = 0; c < C; ++c) {
    const auto aff = plane_affine(weight, bias, c);
    wv[c] = aff.w;
    bv[c] = aff.b;
  }
  auto for_rows = [&](int64_t it, auto&& vec_fn, auto&& scalar_fn) {
    const int64_t n = rb.image(it), off = (n * L + rb.row_begin(it)) * C;
    const acc_t* mn = mean + n * C;
    const acc_t* rs = rstd + n * C;
    using IO = Io<T>;
    for (int64_t r = 0, rows = rb.row_count(it, L); r < rows; ++r) {
      const T* gr = g + off + r * C;
      const T* xr = x + off + r * C;
      aVec g0, g1, x0, x1, gm0, gm1, xh0, xh1;
      int64_t c = 0;
      for (; c + IO::kBlock <= C; c += IO::kBlock) {
        IO::load(gr + c, g0, g1);
        IO::load(xr + c, x0, x1);
        grad_terms<acc_t, kRelu>(g0, x0, aVec::loadu(mn + c), aVec::loadu(rs + c),
                                 aVec::loadu(&wv[c]), aVec::loadu(&bv[c]), gm0, xh0);
        grad_terms<acc_t, kRelu>(g1, x1, aVec::loadu(mn + c + w), aVec::loadu(rs + c + w),
                                 aVec::loadu(&wv[c + w]), aVec::loadu(&bv[c + w]), gm1, xh1);
        vec_fn(off + r * C, n, c, gm0, gm1, xh0, xh1);
      }
      for (; c < C; ++c) {
        acc_t gms, xhs;
        grad_terms_scalar<acc_t, kRelu>(static_cast<acc_t>(gr[c]), static_cast<acc_t>(xr[c]), mn[c],
                                        rs[c], wv[c], bv[c], gms, xhs);
        scalar_fn(off + r * C, n, c, gms, xhs);
      }
    }
  };

  std::vector<double> pa(rb.items * C), pb(rb.items * C);
  at::parallel_for(0, rb.items, task_grain(rb.rows_per_item * C), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf(2 * C);
    for (int64_t it = begin; it < end; ++it) {
      std::fill(buf.begin(), buf.end(), acc_t(0));
      acc_t* A = buf.data();
      acc_t* B = buf.data() + C;
      for_rows(
          it,
          [&](int64_t, int64_t, int64_t c, const aVec& gm0, const aVec& gm1, const aVec& xh0,
              const aVec& xh1) {
            vec_accumulate(A, c, gm0, gm1);
            vec_accumulate(B, c, gm0 * xh0, gm1 * xh1);
          },
          [&](int64_t, int64_t, int64_t c, acc_t gms, acc_t xhs) {
            A[c] += gms;
            B[c] += gms * xhs;
          });
      for (int64_t c = 0; c < C; ++c) {
        pa[it * C + c] = static_cast<double>(A[c]);
        pb[it * C + c] = static_cast<double>(B[c]);
      }
    }
  });
  // Per (n, c) sums and the dx coefficients, as channel vectors per image.
  std::vector<acc_t> kv(N * C), c0v(N * C), c1v(N * C);
  for (int64_t q = 0; q < N * C; ++q) {
    const int64_t n = q / C, c = q % C;
    double A = 0, B = 0;
    for (int64_t k = 0; k < rb.items_per_image; ++k) {
      const int64_t it = n * rb.items_per_image + k;
      A += pa[it * C + c];
      B += pb[it * C + c];
    }
    sum_dy[q] = static_cast<acc_t>(A);
    sum_dy_xhat[q] = static_cast<acc_t>(B);
    grad_input_coefficients(BackwardPlane<acc_t>{mean[q], rstd[q], wv[c], bv[c]}, A, B, L, kv[q],
                            c0v[q], c1v[q]);
  }
  if (!dx) return;
  at::parallel_for(0, rb.items, task_grain(rb.rows_per_item * C), [&](int64_t begin, int64_t end) {
    for (int64_t it = begin; it < end; ++it) {
      for_rows(
          it,
          [&](int64_t row_off, int64_t n, int64_t c, const aVec& gm0, const aVec& gm1,
              const aVec& xh0, const aVec& xh1) {
            const int64_t q = n * C + c;
            const aVec d0 =
                at::vec::fmadd(aVec::loadu(&kv[q]), gm0,
                               at::vec::fmadd(aVec::loadu(&c1v[q]), xh0, aVec::loadu(&c0v[q])));
            const aVec d1 = at::vec::fmadd(
                aVec::loadu(&kv[q + w]), gm1,
                at::vec::fmadd(aVec::loadu(&c1v[q + w]), xh1, aVec::loadu(&c0v[q + w])));
            Io<T>::store(dx + row_off + c, d0, d1);
          },
          [&](int64_t row_off, int64_t n, int64_t c, acc_t gms, acc_t xhs) {
            const int64_t q = n * C + c;
            dx[row_off + c] = static_cast<T>(kv[q] * gms + c0v[q] + c1v[q] * xhs);
          });
    }
  });
}

template <typename F>
void dispatch_dtype(c10::ScalarType t, const char* name, F&& f) {
  switch (t) {
    case c10::ScalarType::Float: return f(float{});
    case c10::ScalarType::Double: return f(double{});
    case c10::ScalarType::Half: return f(c10::Half{});
    case c10::ScalarType::BFloat16: return f(c10::BFloat16{});
    default: TORCH_CHECK(false, name, ": unsupported dtype ", t);
  }
}

}  // namespace

void instance_norm_relu_forward(const InstanceNormForwardParams& p) {
  dispatch_dtype(p.dtype, "instance_norm_relu", [&](auto tag) {
    using T = decltype(tag);
    if (p.channels_last) {
      p.relu ? forward_nhwc<T, true>(p) : forward_nhwc<T, false>(p);
    } else {
      p.relu ? forward_nchw<T, true>(p) : forward_nchw<T, false>(p);
    }
  });
}

void instance_norm_relu_backward(const InstanceNormBackwardParams& p) {
  dispatch_dtype(p.dtype, "instance_norm_relu_backward", [&](auto tag) {
    using T = decltype(tag);
    if (p.channels_last) {
      p.relu ? backward_nhwc<T, true>(p) : backward_nhwc<T, false>(p);
    } else {
      p.relu ? backward_nchw<T, true>(p) : backward_nchw<T, false>(p);
    }
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace pyganx::cpu

#ifdef PYGANX_CPU_DISPATCHER
#include <ATen/Version.h>

#include <string>

namespace pyganx::cpu {
namespace {

enum class Cap { Default, Avx2, Avx512 };

Cap pick_capability() {
  // ATen decides what this CPU supports (and honours ATEN_CPU_CAPABILITY).
  const std::string aten = at::get_cpu_capability();
#ifdef PYGANX_CPU_AVX512
  if (aten == "AVX512") return Cap::Avx512;
#endif
#ifdef PYGANX_CPU_AVX2
  if (aten == "AVX512" || aten == "AVX2") return Cap::Avx2;
#endif
  return Cap::Default;
}

Cap capability() {
  static const Cap cap = pick_capability();
  return cap;
}

}  // namespace

void instance_norm_relu_forward(const InstanceNormForwardParams& p) {
  switch (capability()) {
#ifdef PYGANX_CPU_AVX512
    case Cap::Avx512: return AVX512::instance_norm_relu_forward(p);
#endif
#ifdef PYGANX_CPU_AVX2
    case Cap::Avx2: return AVX2::instance_norm_relu_forward(p);
#endif
    default: return DEFAULT::instance_norm_relu_forward(p);
  }
}

void instance_norm_relu_backward(const InstanceNormBackwardParams& p) {
  switch (capability()) {
#ifdef PYGANX_CPU_AVX512
    case Cap::Avx512: return AVX512::instance_norm_relu_backward(p);
#endif
#ifdef PYGANX_CPU_AVX2
    case Cap::Avx2: return AVX2::instance_norm_relu_backward(p);
#endif
    default: return DEFAULT::instance_norm_relu_backward(p);
  }
}

const char* selected_capability() {
  switch (capability()) {
    case Cap::Avx512: return "AVX512";
    case Cap::Avx2: return "AVX2";
    default: return "DEFAULT";
  }
}

const char* compiled_capabilities() {
  return "DEFAULT"
#ifdef PYGANX_CPU_AVX2
         ";AVX2"
#endif
#ifdef PYGANX_CPU_AVX512
         ";AVX512"
#endif
      ;
}

}  // namespace pyganx::cpu
#endif  // PYGANX_CPU_DISPATCHER
