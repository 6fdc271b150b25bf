// The streaming update kernel of the causal depthwise conv1d (causal_conv1d_update): one new
// time step per call against a rolling state.
#pragma once

#include <ATen/ATen.h>

#include "causal_conv1d_tiles.cuh"

namespace fusedgru {
namespace cuda {
namespace conv {

// One thread per (n, c) row: y = act(conv_update_row).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) update_kernel(CausalConvUpdateParams p) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= p.N * p.C) return;
  static_cast<scalar_t*>(p.y)[idx] =
      scalar_t(activate(conv_update_row<scalar_t>(p, idx / p.C, idx % p.C), p.activation));
}

}  // namespace conv
}  // namespace cuda
}  // namespace fusedgru
