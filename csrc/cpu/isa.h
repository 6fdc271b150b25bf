// Instruction-set helpers of the CPU kernels, one home for them: function multiversioning for
// the auto-vectorized loops (FUSEDGRU_CLONES), and the target attribute plus run-time check of
// the kernels written with AVX-512F intrinsics (the packed GEMM, the causal conv's sliding
// window), which run only where cpu_has_avx512f() says so.
#pragma once

// On x86, clone a hot loop for AVX-512, AVX2 and the baseline; the loader picks one.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FUSEDGRU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FUSEDGRU_CLONES
#endif
#define FUSEDGRU_INLINE inline __attribute__((always_inline))

// Kernels with AVX-512F intrinsics: compiled for x86-64 with GCC or Clang, run after
// cpu_has_avx512f().
#if defined(__x86_64__) && defined(__GNUC__)
#define FUSEDGRU_X86_AVX512 1
#define FUSEDGRU_AVX512 __attribute__((target("avx512f")))
#endif

namespace fusedgru {
namespace cpu {

// Whether this CPU runs AVX-512F (false where the intrinsic kernels are not compiled).
inline bool cpu_has_avx512f() {
#ifdef FUSEDGRU_X86_AVX512
  static const bool has = __builtin_cpu_supports("avx512f");
  return has;
#else
  return false;
#endif
}

}  // namespace cpu
}  // namespace fusedgru
