// AVX2 + FMA compile of ../instance_norm_relu_kernel.cpp (x86-64, GCC or Clang).
// The target is set by pragma rather than per-file compiler flags so that setup.py
// and CMake need no per-source options; the dispatcher only calls into this code
// when ATen reports that the CPU supports AVX2.
#include "../kernel_prelude.h"  // before the pragma: see that file
#pragma GCC target("avx2,fma,f16c,bmi,bmi2,popcnt,lzcnt")
// GCC enables the instructions with the pragma, but headers that test the ISA macros
// (sleef.h) may be read before it takes effect in the preprocessor; state them.
#ifndef __AVX__
#define __AVX__ 1
#endif
#ifndef __AVX2__
#define __AVX2__ 1
#endif
#ifndef __FMA__
#define __FMA__ 1
#endif
#ifndef __F16C__
#define __F16C__ 1
#endif
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#include "../instance_norm_relu_kernel.cpp"
