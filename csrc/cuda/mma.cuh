// Warp-level tensor-core products (mma.sync, sm_80 and later) for the persistent GRU kernels,
// and the per-dtype facts they need. One warp computes D (16 x 8) = A (16 x K) B (K x 8) + C in
// fp32, with A and B in 32-bit registers laid out as the PTX ISA documents ("Matrix Fragments for
// mma.m16n8k16 / mma.m16n8k8"; groupID g = lane / 4, threadID_in_group q = lane % 4):
//   bf16 / fp16, K = 16: a[0] = A[g][2q, 2q+1], a[1] = A[g+8][2q, 2q+1], a[2] = A[g][2q+8, 2q+9],
//     a[3] = A[g+8][2q+8, 2q+9] (two elements per register, the lower index in the low half);
//     b[0] = B[2q, 2q+1][g], b[1] = B[2q+8, 2q+9][g].
//   tf32, K = 8: a[0] = A[g][q], a[1] = A[g+8][q], a[2] = A[g][q+4], a[3] = A[g+8][q+4];
//     b[0] = B[q][g], b[1] = B[q+4][g].
//   C, D: c[0], c[1] = C[g][2q, 2q+1], c[2], c[3] = C[g+8][2q, 2q+1].
// Under FUSEDGRU_CUDA_EMU the host emulator computes the same product from the same layouts
// (tests/cuda_emu/cuda_emu.h, emu::mma_sync), as a warp collective with a shuffle's rules.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace fusedgru {
namespace cuda {

// cvt.rna.tf32.f32: x rounded to TF32 (10 mantissa bits, ties away from zero), as its bits.
__device__ __forceinline__ uint32_t tf32_bits(float x) {
#ifdef FUSEDGRU_CUDA_EMU
  return emu::float_to_tf32_bits(x);
#else
  uint32_t u;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(u) : "f"(x));
  return u;
#endif
}

// The bits of one 16-bit element, zero-extended.
template <typename T>
__device__ __forceinline__ uint32_t bits16(T x) {
  static_assert(sizeof(T) == 2, "bits16: a 16-bit type");
  uint16_t u;
  memcpy(&u, &x, sizeof(u));
  return u;
}

// What the tensor-core kernels need of a dtype: the MMA's K, and an A or B register from two
// (16-bit types) or one (tf32) element(s). h (or dgh) is staged in the dtype itself.
template <typename scalar_t>
struct MmaOf {  // bf16, fp16
  static_assert(sizeof(scalar_t) == 2, "MmaOf: bf16, fp16 or float");
  static constexpr int kK = 16;
  static constexpr int kPerReg = 2;  // elements per 32-bit register
  __device__ static uint32_t reg(scalar_t lo, scalar_t hi) {
    return bits16(lo) | (bits16(hi) << 16);
  }
};

template <>
struct MmaOf<float> {  // TF32: only when the RNN's fp32 precision allows it (matmul.cuh)
  static constexpr int kK = 8;
  static constexpr int kPerReg = 1;
  __device__ static uint32_t reg(float x, float /*unused*/) { return tf32_bits(x); }
};

// Whether scalar_t has a tensor-core path.
template <typename scalar_t>
constexpr bool kHasMma = std::is_same_v<scalar_t, at::BFloat16> ||
                         std::is_same_v<scalar_t, at::Half> || std::is_same_v<scalar_t, float>;

// d = A B + c over the warp; every lane of the warp calls it at once (mma.sync.aligned).
template <typename scalar_t>
__device__ __forceinline__ void mma_16x8(float (&d)[4], const uint32_t (&a)[4],
                                         const uint32_t (&b)[2], const float (&c)[4]) {
#ifdef FUSEDGRU_CUDA_EMU
  constexpr emu::MmaType kType = std::is_same_v<scalar_t, at::BFloat16> ? emu::MmaType::kBf16
                                 : std::is_same_v<scalar_t, at::Half>   ? emu::MmaType::kF16
                                                                        : emu::MmaType::kTf32;
  emu::mma_sync<kType>(d, a, b, c);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define FUSEDGRU_MMA(SHAPE_TYPES)                                                             \
  asm volatile("mma.sync.aligned." SHAPE_TYPES                                                \
               " {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};"         \
               : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])                               \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), \
                 "f"(c[1]), "f"(c[2]), "f"(c[3]))
  if constexpr (std::is_same_v<scalar_t, at::BFloat16>) {
    FUSEDGRU_MMA("m16n8k16.row.col.f32.bf16.bf16.f32");
  } else if constexpr (std::is_same_v<scalar_t, at::Half>) {
    FUSEDGRU_MMA("m16n8k16.row.col.f32.f16.f16.f32");
  } else {
    FUSEDGRU_MMA("m16n8k8.row.col.f32.tf32.tf32.f32");
  }
#undef FUSEDGRU_MMA
#else
  __trap();  // the planner never picks a tensor-core kernel below compute capability 8.0
#endif
}

}  // namespace cuda
}  // namespace fusedgru
