// AVX-512 (F, BW, VL, DQ) compile of ../instance_norm_relu_kernel.cpp (x86-64, GCC or
// Clang); see ../avx2/instance_norm_relu_kernel.cpp for why a pragma sets the target.
#include "../kernel_prelude.h"  // before the pragma: see that file
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi,bmi2,popcnt,lzcnt")
// See ../avx2/instance_norm_relu_kernel.cpp for why the ISA macros are stated here.
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
#ifndef __AVX512F__
#define __AVX512F__ 1
#endif
#ifndef __AVX512BW__
#define __AVX512BW__ 1
#endif
#ifndef __AVX512VL__
#define __AVX512VL__ 1
#endif
#ifndef __AVX512DQ__
#define __AVX512DQ__ 1
#endif
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#include "../instance_norm_relu_kernel.cpp"
