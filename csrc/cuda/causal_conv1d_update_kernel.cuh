// The streaming update kernel of the causal depthwise conv1d (causal_conv1d_update): one new
// time step per call against a rolling state.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include "causal_conv1d_tiles.cuh"

namespace fusedgru {
namespace cuda {
namespace conv {

// One thread per (n, c): y = act(b + taps over [state, x]); state shifted left, x appended.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    update_kernel(const scalar_t* x, int64_t x_sn, int64_t x_sc, scalar_t* state, int64_t s_sn,
                  int64_t s_sc, int64_t s_ss, const scalar_t* w, const scalar_t* bias, scalar_t* y,
                  int64_t N, int64_t C, int64_t W, int64_t dilation, int64_t activation) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= N * C) return;
  const int64_t n = idx / C, c = idx % C, S = (W - 1) * dilation;
  scalar_t* st = state + n * s_sn + c * s_sc;
  const scalar_t xv = x[n * x_sn + c * x_sc];
  acc_t acc = bias != nullptr ? acc_t(bias[c]) : acc_t(0);
  for (int64_t k = 0; k < W; ++k) {
    const int64_t off = (W - 1 - k) * dilation;
    acc += acc_t(w[c * W + k]) * acc_t(off == 0 ? xv : st[(S - off) * s_ss]);
  }
  y[idx] = scalar_t(activate(acc, activation));
  for (int64_t s = 0; s + 1 < S; ++s) st[s * s_ss] = st[(s + 1) * s_ss];
  if (S > 0) st[(S - 1) * s_ss] = xv;
}

}  // namespace conv
}  // namespace cuda
}  // namespace fusedgru
