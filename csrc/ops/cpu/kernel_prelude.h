// Headers of the CPU kernel that carry no ISA-specific code, for the AVX2/AVX-512
// variant files to include BEFORE their `#pragma GCC target`. Functions defined after
// that pragma get its target; with GCC 13 that includes libstdc++'s always_inline
// members (std::allocator, std::string), which then fail to inline into the default-
// target code that also uses them ("target specific option mismatch"). Read first,
// they keep the default target; at::vec is read after the pragma, where it must be.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <ostream>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>
