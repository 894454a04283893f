// Index arithmetic of the reflection ring term as matrix products, shared by the CPU
// (cpu/reflect_ring_kernel.cpp) and CUDA (cuda/reflect_ring_kernel.cu) implementations,
// so the CPU tests check the same mapping the GPU runs.
//
// conv3x3(reflect_pad(x)) = conv3x3 with zero padding + R. The taps of R (those that land
// outside the image) split into four disjoint groups g:
//   0 top     padded row -1 (x row 1),       kernel row 0,    outputs on row 0
//   1 bottom  padded row H (x row H-2),      kernel row 2,    outputs on row H-1
//   2 left    padded column -1 (x column 1), kernel column 0, outputs on column 0, for
//             input rows 0..H-1 only (the corners belong to the rows)
//   3 right   padded column W (x column W-2), kernel column 2, outputs on column W-1
// Group g is R_g = K_g U_g: K_g (O, 3C) holds its three taps per input channel, U_g
// (3C, N L) the unfolded source line, L columns per image (at least the group's length:
// W for rows, H for columns; zero beyond it).
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>

namespace pyganx::ops::ring {

// Columns per image in U, R and G: at least 16, because at::bmm on CPU took 2.8x as
// long with 8 columns as with 16 ((4, 256, 768) x (4, 768, L), one thread).
inline int64_t columns(int64_t H, int64_t W) {
  const int64_t m = H > W ? H : W;
  return m > 16 ? m : 16;
}

C10_HOST_DEVICE inline int64_t length(int g, int64_t H, int64_t W) { return g < 2 ? W : H; }

C10_HOST_DEVICE inline int64_t reflect(int64_t a, int64_t size) {
  return a < 0 ? 1 : (a >= size ? size - 2 : a);
}

// Offset in a 3x3 kernel (ky * 3 + kx) of tap t (0..2) of group g.
C10_HOST_DEVICE inline int64_t tap_offset(int g, int64_t t) {
  switch (g) {
    case 0: return t;           // ky 0, kx t
    case 1: return 6 + t;       // ky 2, kx t
    case 2: return 3 * t;       // ky t, kx 0
    default: return 3 * t + 2;  // ky t, kx 2
  }
}

// The element (a, b) of x that tap t of group g reads for output position p (a column
// index for the row groups, a row index for the column groups); false where it reads a
// zero (a column group's tap above or below the image).
C10_HOST_DEVICE inline bool source(int g, int64_t t, int64_t p, int64_t H, int64_t W, int64_t& a,
                                   int64_t& b) {
  if (g < 2) {
    a = g == 0 ? 1 : H - 2;
    b = reflect(p + t - 1, W);
    return true;
  }
  a = p + t - 1;
  b = g == 2 ? 1 : W - 2;
  return a >= 0 && a < H;
}

// The output element (i, j) of group g at position p.
C10_HOST_DEVICE inline void border(int g, int64_t p, int64_t H, int64_t W, int64_t& i, int64_t& j) {
  if (g < 2) {
    i = g == 0 ? 0 : H - 1;
    j = p;
  } else {
    i = p;
    j = g == 2 ? 0 : W - 1;
  }
}

}  // namespace pyganx::ops::ring
