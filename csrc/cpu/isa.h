// Instruction-set helpers of the CPU kernels, one home for them: function multiversioning for
// the auto-vectorized loops (FUSEDGRU_CLONES), and the target attributes plus run-time checks of
// the kernels written with intrinsics: the packed GEMM (AVX-512F, or AVX2 + FMA; AVX512-BF16 for
// bf16 weights) and the causal
// conv's sliding windows (AVX-512F).
#pragma once

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#endif

// On x86, clone a hot loop for AVX-512, AVX2 and the baseline; the loader picks one. The AVX2
// clone targets x86-64-v3 (AVX2 with FMA, GCC >= 12): a plain "avx2" clone has no FMA, so its
// multiply-adds stay separate multiplies and adds.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#define FUSEDGRU_CLONES __attribute__((target_clones("avx512f", "arch=x86-64-v3", "default")))
#elif defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FUSEDGRU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FUSEDGRU_CLONES
#endif
#define FUSEDGRU_INLINE inline __attribute__((always_inline))

// Kernels with intrinsics (AVX-512F; AVX2 + FMA): compiled for x86-64 with GCC or Clang, each
// run only after its check below says the CPU has the instructions.
#if defined(__x86_64__) && defined(__GNUC__)
#define FUSEDGRU_X86 1
#define FUSEDGRU_AVX512 __attribute__((target("avx512f")))
#define FUSEDGRU_AVX2 __attribute__((target("avx2,fma")))
#define FUSEDGRU_AVX512BF16 __attribute__((target("avx512f,avx512bf16")))
#endif

namespace fusedgru {
namespace cpu {

// Whether this CPU runs AVX-512F (false where the intrinsic kernels are not compiled).
inline bool cpu_has_avx512f() {
#ifdef FUSEDGRU_X86
  static const bool has = __builtin_cpu_supports("avx512f");
  return has;
#else
  return false;
#endif
}

// Whether this CPU runs AVX-512F and AVX512-BF16's dot products (vdpbf16ps).
inline bool cpu_has_avx512bf16() {
#ifdef FUSEDGRU_X86
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16");
  return has;
#else
  return false;
#endif
}

// Whether this CPU runs AVX-512F and AVX512-FP16's arithmetic (CPUID leaf 7, EDX bit 23; read
// directly: GCC before 12 has no name for it in __builtin_cpu_supports).
inline bool cpu_has_avx512fp16() {
#ifdef FUSEDGRU_X86
  static const bool has = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    return cpu_has_avx512f() && __get_cpuid_count(7, 0, &a, &b, &c, &d) != 0 && ((d >> 23) & 1u);
  }();
  return has;
#else
  return false;
#endif
}

// Whether this CPU runs AVX2 and FMA (false where the intrinsic kernels are not compiled).
inline bool cpu_has_avx2_fma() {
#ifdef FUSEDGRU_X86
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
#else
  return false;
#endif
}

}  // namespace cpu
}  // namespace fusedgru
