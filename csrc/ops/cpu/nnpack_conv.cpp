// NNPACK's Winograd 3x3 convolution run on OpenMP's threads (docs/ops.md, "CPU
// convolutions").
//
// ATen's at::_nnpack_spatial_convolution hands the work to NNPACK's own thread pool.
// The rest of a training step (oneDNN convolutions, the norm kernels) runs on OpenMP,
// whose idle threads keep spinning for a while after each parallel region (libgomp:
// 300,000 rounds, several ms): during that time they and NNPACK's pool threads fight
// for the same cores. Here the output channels are split into one range per OpenMP
// thread and each thread runs NNPACK single-threaded (no pool) on its range: the
// input is shared, each range reads its own slice of the kernel, bias and output.
// With no second pool there is nothing to fight with, whatever GOMP_SPINCOUNT says.
#include "../residual_block.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <atomic>
#include <cstdlib>

// NNPACK's C interface (nnpack.h), as libtorch_cpu exports it. The symbol is weak: a
// torch built without NNPACK leaves it null and the caller keeps ATen's path.
extern "C" {
struct pyganx_nnp_size {
  size_t width;
  size_t height;
};
struct pyganx_nnp_padding {
  size_t top;
  size_t right;
  size_t bottom;
  size_t left;
};
int nnp_convolution_inference(int algorithm, int transform_strategy, size_t input_channels,
                              size_t output_channels, pyganx_nnp_size input_size,
                              pyganx_nnp_padding input_padding, pyganx_nnp_size kernel_size,
                              pyganx_nnp_size output_subsampling, const float* input,
                              const float* kernel, const float* bias, float* output,
                              void* workspace_buffer, size_t* workspace_size, int activation,
                              const void* activation_parameters, void* threadpool, void* profile)
    __attribute__((weak));
}

namespace pyganx::ops {
namespace {

constexpr int kWinograd8x8 = 3;        // nnp_convolution_algorithm_wt8x8: F(6x6, 3x3)
constexpr int kComputeTransforms = 1;  // nnp_convolution_transform_strategy_compute
constexpr int kIdentity = 0;           // nnp_activation_identity

// One scratch buffer per thread, kept between calls (NNPACK wants 64-byte alignment);
// allocating it per call would cost a page fault per 4 KiB with glibc's defaults.
struct Scratch {
  void* ptr = nullptr;
  size_t size = 0;
  ~Scratch() { std::free(ptr); }
  void* get(size_t n) {
    if (n <= size) return ptr;
    std::free(ptr);
    ptr = nullptr;
    size = 0;
    if (posix_memalign(&ptr, 64, n) != 0) {
      ptr = nullptr;
      return nullptr;
    }
    size = n;
    return ptr;
  }
};

}  // namespace

bool nnpack_conv3x3_openmp_available() { return nnp_convolution_inference != nullptr; }

std::optional<at::Tensor> nnpack_conv3x3_openmp(const at::Tensor& x, const at::Tensor& w,
                                                const OptTensor& b, int64_t pad) {
  if (!nnpack_conv3x3_openmp_available()) return std::nullopt;
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), O = w.size(0);
  const int64_t Ho = H + 2 * pad - 2, Wo = W + 2 * pad - 2;
  const at::Tensor xc = x.contiguous(), wc = w.contiguous();
  const at::Tensor bc =
      b.has_value() && b->defined() ? b->contiguous() : at::zeros({O}, x.options());
  at::Tensor y = at::empty({N, O, Ho, Wo}, x.options());
  const float* xp = xc.data_ptr<float>();
  const float* wp = wc.data_ptr<float>();
  const float* bp = bc.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const pyganx_nnp_size in_size{static_cast<size_t>(W), static_cast<size_t>(H)};
  const pyganx_nnp_size kernel{3, 3}, stride{1, 1};
  const auto p = static_cast<size_t>(pad);
  const pyganx_nnp_padding padding{p, p, p, p};
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t grain = (O + threads - 1) / threads;
  std::atomic<bool> ok{true};
  for (int64_t n = 0; n < N && ok; ++n) {
    const float* xn = xp + n * C * H * W;
    float* yn = yp + n * O * Ho * Wo;
    at::parallel_for(0, O, grain, [&](int64_t o0, int64_t o1) {
      thread_local Scratch scratch;
      const auto count = static_cast<size_t>(o1 - o0);
      size_t need = 0;
      auto run = [&](void* buffer, size_t* size) {
        return nnp_convolution_inference(kWinograd8x8, kComputeTransforms, static_cast<size_t>(C),
                                         count, in_size, padding, kernel, stride, xn,
                                         wp + o0 * C * 9, bp + o0, yn + o0 * Ho * Wo, buffer, size,
                                         kIdentity, nullptr, nullptr, nullptr);
      };
      if (run(nullptr, &need) != 0) {
        ok = false;
        return;
      }
      void* buffer = scratch.get(need);
      size_t size = scratch.size;
      if (buffer == nullptr || run(buffer, &size) != 0) ok = false;
    });
  }
  if (!ok) return std::nullopt;
  return y;
}

}  // namespace pyganx::ops
