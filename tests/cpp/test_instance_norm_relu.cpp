// C++ test of pyganx::instance_norm_relu as a LibTorch user sees it: the op is called
// through the dispatcher (the library registers it when loaded) and compared with
// ATen's instance norm (+ ReLU), computed in float64 from the same input. Gradients go
// through the C++ autograd kernel and are compared with ATen's instance-norm backward.
//
// Runs on the CPU, and also on CUDA when the library has CUDA kernels and a GPU is
// visible. Exit status 0 when every check passes; prints each failure and a summary.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/autograd.h>

#include <algorithm>
#include <cstdio>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace {

using OptTensor = std::optional<at::Tensor>;

at::Tensor instance_norm_relu(const at::Tensor& x, const OptTensor& w, const OptTensor& b,
                              double eps, bool relu) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("pyganx::instance_norm_relu", "")
          .typed<at::Tensor(const at::Tensor&, const OptTensor&, const OptTensor&, double, bool)>();
  return op.call(x, w, b, eps, relu);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> instance_norm_relu_forward(const at::Tensor& x,
                                                                         double eps) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("pyganx::_instance_norm_relu_forward", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
              const at::Tensor&, const OptTensor&, const OptTensor&, double, bool)>();
  return op.call(x, std::nullopt, std::nullopt, eps, false);
}

// ATen's instance norm without running statistics (training-mode statistics).
at::Tensor aten_instance_norm(const at::Tensor& x, const OptTensor& w, const OptTensor& b,
                              double eps) {
  return at::instance_norm(x, w, b, /*running_mean=*/{}, /*running_var=*/{},
                           /*use_input_stats=*/true, /*momentum=*/0.1, eps,
                           /*cudnn_enabled=*/false);
}

OptTensor to_double(const OptTensor& t) {
  if (!t) return std::nullopt;
  return t->detach().to(at::kCPU, at::kDouble);
}

struct Results {
  int passed = 0;
  int failed = 0;

  void check(bool ok, const std::string& name, const std::string& detail = "") {
    if (ok) {
      ++passed;
    } else {
      ++failed;
      std::printf("FAIL %s%s%s\n", name.c_str(), detail.empty() ? "" : ": ", detail.c_str());
    }
  }

  // Largest |ours - ref| relative to max(1, max |ref|) must not exceed tol.
  void compare(const at::Tensor& ours, const at::Tensor& ref, double tol,
               const std::string& name) {
    if (!ours.defined() || ours.sizes() != ref.sizes()) {
      std::ostringstream s;
      s << "shape " << (ours.defined() ? ours.sizes() : at::IntArrayRef{}) << " != "
        << ref.sizes();
      return check(false, name, s.str());
    }
    const at::Tensor o = ours.detach().to(at::kCPU, at::kDouble);
    if (!at::isfinite(o).all().item<bool>()) return check(false, name, "non-finite values");
    const double scale = std::max(1.0, ref.abs().max().item<double>());
    const double err = (o - ref).abs().max().item<double>() / scale;
    std::ostringstream s;
    s << "max error " << err << " (relative to " << scale << ") exceeds " << tol;
    check(err <= tol, name, s.str());
  }
};

struct Case {
  std::vector<int64_t> shape;
  at::ScalarType dtype;
  at::Device device;
  bool channels_last;
  bool affine;
  bool relu;

  std::string name() const {
    std::ostringstream s;
    s << (dtype == at::kDouble ? "f64 " : "f32 ") << device << " ";
    for (size_t i = 0; i < shape.size(); ++i) s << (i ? "x" : "") << shape[i];
    s << (channels_last ? " channels_last" : " contiguous") << (affine ? " affine" : " plain")
      << (relu ? " relu" : " norm");
    return s.str();
  }
};

// Tolerances as in tests/conftest.py; weight/bias gradients are sums over N*H*W terms.
double tolerance(at::ScalarType dtype) { return dtype == at::kDouble ? 1e-10 : 2e-5; }
double param_grad_tolerance(at::ScalarType dtype) { return dtype == at::kDouble ? 1e-10 : 1e-4; }

void run_case(const Case& c, Results& r) {
  const std::string name = c.name();
  const double eps = 1e-5;
  const int64_t C = c.shape[1];
  // Inputs are drawn in float64 on the CPU, then rounded to the test dtype; the
  // reference starts from the rounded values, so both see the same input.
  at::Tensor x = (at::randn(c.shape, at::kDouble) * 2.0 + 0.3).to(c.device, c.dtype);
  at::Tensor g = at::randn(c.shape, at::kDouble).to(c.device, c.dtype);
  if (c.channels_last) {
    x = x.contiguous(at::MemoryFormat::ChannelsLast);
    g = g.contiguous(at::MemoryFormat::ChannelsLast);
  }
  OptTensor w, b;
  if (c.affine) {
    w = (at::rand({C}, at::kDouble) + 0.5).to(c.device, c.dtype);
    b = (at::randn({C}, at::kDouble) * 0.5).to(c.device, c.dtype);
  }
  const at::Tensor x64 = x.to(at::kCPU, at::kDouble).contiguous();
  const at::Tensor g64 = g.to(at::kCPU, at::kDouble).contiguous();
  const OptTensor w64 = to_double(w), b64 = to_double(b);

  // Forward, without autograd.
  at::Tensor out = instance_norm_relu(x, w, b, eps, c.relu);
  at::Tensor ref = aten_instance_norm(x64, w64, b64, eps);
  if (c.relu) ref = at::relu(ref);
  r.check(out.scalar_type() == c.dtype && out.device() == c.device, name + ": output dtype/device");
  r.compare(out, ref, tolerance(c.dtype), name + ": forward");
  const bool expect_cl = c.channels_last && !x.is_contiguous();
  r.check(out.is_contiguous(expect_cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous),
          name + ": output layout", expect_cl ? "expected channels_last" : "expected contiguous");

  // Backward through the op's autograd kernel.
  at::Tensor xg = x.detach().clone(at::MemoryFormat::Preserve).requires_grad_();
  OptTensor wg, bg;
  std::vector<at::Tensor> inputs = {xg};
  if (c.affine) {
    wg = w->detach().clone().requires_grad_();
    bg = b->detach().clone().requires_grad_();
    inputs.push_back(*wg);
    inputs.push_back(*bg);
  }
  at::Tensor y = instance_norm_relu(xg, wg, bg, eps, c.relu);
  r.check(y.grad_fn() != nullptr, name + ": autograd records a node");
  const auto grads = torch::autograd::grad({y}, inputs, {g});
  r.compare(y, ref, tolerance(c.dtype), name + ": forward with autograd");

  // Reference: ATen's instance-norm backward in float64. The ReLU mask is taken from
  // our own forward output: a float32 forward may put an element within rounding of 0
  // on the other side of the ReLU than float64 does, which is not an error of the
  // backward. (ATen's CPU instance-norm backward is wrong for channels_last input with
  // a channels_last gradient in torch 2.14, hence the contiguous float64 copies.)
  const at::Tensor x64g = x64.clone().requires_grad_();
  OptTensor w64g, b64g;
  std::vector<at::Tensor> inputs64 = {x64g};
  if (c.affine) {
    w64g = w64->clone().requires_grad_();
    b64g = b64->clone().requires_grad_();
    inputs64.push_back(*w64g);
    inputs64.push_back(*b64g);
  }
  at::Tensor dy64 = g64;
  if (c.relu) dy64 = g64 * y.detach().to(at::kCPU, at::kDouble).gt(0).to(at::kDouble);
  const auto ref_grads =
      torch::autograd::grad({aten_instance_norm(x64g, w64g, b64g, eps)}, inputs64, {dy64});

  r.compare(grads[0], ref_grads[0], tolerance(c.dtype), name + ": grad_x");
  if (expect_cl) {
    r.check(grads[0].is_contiguous(at::MemoryFormat::ChannelsLast), name + ": grad_x layout",
            "expected channels_last");
  }
  if (c.affine) {
    r.compare(grads[1], ref_grads[1], param_grad_tolerance(c.dtype), name + ": grad_weight");
    r.compare(grads[2], ref_grads[2], param_grad_tolerance(c.dtype), name + ": grad_bias");
  }
}

void check_statistics(at::Device device, Results& r) {
  // _instance_norm_relu_forward also returns the per-plane mean and 1/sqrt(var + eps).
  const double eps = 1e-3;
  const at::Tensor x = at::randn({2, 3, 5, 7}, at::kDouble);
  auto [out, mean, rstd] = instance_norm_relu_forward(x.to(device), eps);
  const at::Tensor ref_mean = x.mean({2, 3});
  const at::Tensor ref_rstd = (x.var({2, 3}, /*unbiased=*/false) + eps).rsqrt();
  const std::string name = std::string("f64 ") + device.str() + " _instance_norm_relu_forward";
  r.compare(mean, ref_mean, 1e-12, name + ": mean");
  r.compare(rstd, ref_rstd, 1e-12, name + ": rstd");
}

void check_unbatched(at::Device device, Results& r) {
  // (C, H, W) input: normalised as one batch of C planes, returned as (C, H, W).
  const at::Tensor x = at::randn({3, 6, 5}, at::kDouble);
  const at::Tensor w = at::rand({3}, at::kDouble) + 0.5, b = at::randn({3}, at::kDouble);
  const at::Tensor out = instance_norm_relu(x.to(device), w.to(device), b.to(device), 1e-5, true);
  const at::Tensor ref = at::relu(aten_instance_norm(x.unsqueeze(0), w, b, 1e-5)).squeeze(0);
  r.compare(out, ref, 1e-10, std::string("f64 ") + device.str() + " unbatched 3x6x5");
}

void check_rank_error(at::Device device, Results& r) {
  const std::string name = std::string(device.str()) + " 2-D input is rejected";
  try {
    instance_norm_relu(at::randn({3, 64}, at::TensorOptions(device)), std::nullopt, std::nullopt,
                       1e-5, true);
    r.check(false, name, "no exception");
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    r.check(msg.find("4-D") != std::string::npos, name, "message does not mention 4-D: " + msg);
  } catch (const std::exception& e) {
    r.check(false, name, std::string("not a c10::Error: ") + e.what());
  }
}

bool has_kernel(const char* op, c10::DispatchKey key) {
  const auto handle = c10::Dispatcher::singleton().findSchema({op, ""});
  return handle.has_value() && handle->hasKernelForDispatchKey(key);
}

}  // namespace

int main() {
  if (!has_kernel("pyganx::instance_norm_relu", c10::DispatchKey::CPU)) {
    std::printf("FAIL pyganx::instance_norm_relu has no CPU kernel: is libpyganx_ops loaded?\n");
    return 1;
  }
  std::vector<at::Device> devices = {at::kCPU};
  if (has_kernel("pyganx::instance_norm_relu", c10::DispatchKey::CUDA) && at::hasCUDA()) {
    devices.emplace_back(at::kCUDA);
  }

  const std::vector<std::vector<int64_t>> shapes = {
      {2, 3, 5, 7},      // odd plane
      {1, 70, 9, 9},     // channels not a multiple of any vector width
      {1, 2, 300, 300},  // large planes: several chunks per plane
      {1, 1, 257, 301},  // one large plane: fewer planes than threads
  };
  at::manual_seed(0);
  Results r;
  for (const auto& device : devices) {
    for (const auto& shape : shapes) {
      for (const auto dtype : {at::kFloat, at::kDouble}) {
        for (const bool channels_last : {false, true}) {
          for (const bool affine : {false, true}) {
            for (const bool relu : {true, false}) {
              try {
                run_case({shape, dtype, device, channels_last, affine, relu}, r);
              } catch (const std::exception& e) {
                const Case c{shape, dtype, device, channels_last, affine, relu};
                r.check(false, c.name(), std::string("exception: ") + e.what());
              }
            }
          }
        }
      }
    }
    try {
      check_statistics(device, r);
      check_unbatched(device, r);
    } catch (const std::exception& e) {
      r.check(false, device.str() + " statistics/unbatched", std::string("exception: ") + e.what());
    }
    check_rank_error(device, r);
  }

  std::printf("%d passed, %d failed\n", r.passed, r.failed);
  return r.failed == 0 ? 0 : 1;
}
