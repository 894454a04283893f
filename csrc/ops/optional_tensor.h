// Optional tensor arguments as the op schemas pass them (Tensor? in the schema), and the
// two helpers every registration needs for them.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace pyganx::ops {

using OptTensor = std::optional<at::Tensor>;

// Present and defined (autograd also passes undefined tensors for absent ones).
inline bool defined(const OptTensor& t) { return t.has_value() && t->defined(); }

// An undefined tensor as an absent argument.
inline OptTensor as_optional(const at::Tensor& t) {
  return t.defined() ? OptTensor(t) : std::nullopt;
}

}  // namespace pyganx::ops
