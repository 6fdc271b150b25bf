// Device functions every GRU kernel uses (plain GRU and LayerNormGRU, per-step, persistent and
// cell): the sigmoid in the math type and the clamped sequence length.
#pragma once

#include <cstdint>

namespace fusedgru {
namespace cuda {

template <typename T>
__device__ __forceinline__ T sigmoid_(T x) {
  return T(1) / (T(1) + exp(-x));
}

// Row i's length clamped into [0, T] (T when there are no lengths). The kernels read lengths on
// the device, where the host cannot check them without a synchronization: an entry outside
// [0, T] acts as its nearest bound (the CPU ops reject it), so no kernel reads or writes past a
// sequence's buffers. A row is active at step t iff t < clamped length.
__device__ __forceinline__ int64_t clamped_length(const int64_t* lengths, int64_t i, int64_t T) {
  if (lengths == nullptr) return T;
  const int64_t len = lengths[i];
  return len < 0 ? 0 : (len > T ? T : len);
}

}  // namespace cuda
}  // namespace fusedgru
