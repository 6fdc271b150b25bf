// Forward kernels of the causal depthwise conv1d: tiled (N, C, L) and channel-last, and the
// direct fallback. Tiling: causal_conv1d_host.cuh.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include "causal_conv1d_tiles.cuh"

namespace fusedgru {
namespace cuda {
namespace conv {

// ---------------------------------------------------------------------------------------------
// Forward, (N, C, L). grid (ceil(L / kTile), C, N); smem padded_size(kTile + S) acc_t.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) fwd_ncl_kernel(CausalConvParams p, bool vec) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kN = kVecElems<scalar_t>;
  constexpr int kTile = kThreads * kN;
  acc_t* s = dynamic_smem<acc_t>();
  const int64_t n = blockIdx.z, c = blockIdx.y, t0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int W = static_cast<int>(p.W), d = static_cast<int>(p.dilation), S = (W - 1) * d;
  const int e0 = threadIdx.x * kN;
  const auto* x = static_cast<const scalar_t*>(p.x) + n * p.x_sn + c * p.x_sc;
  load_span<kN>(x, p.L, t0 + e0, vec, s, S + e0);
  for (int i = threadIdx.x; i < S; i += kThreads) {
    s[pad<kN>(i)] = input_at<scalar_t>(p, n, c, t0 - S + i);
  }
  __syncthreads();
  const auto* w = static_cast<const scalar_t*>(p.weight) + c * W;
  acc_t acc[kN];
  const acc_t b = p.bias != nullptr ? acc_t(static_cast<const scalar_t*>(p.bias)[c]) : acc_t(0);
#pragma unroll
  for (int m = 0; m < kN; ++m) acc[m] = b;
  accumulate_taps<kN>(acc, s, e0, W, d, [&](int j) { return acc_t(w[j]); });
#pragma unroll
  for (int m = 0; m < kN; ++m) acc[m] = activate(acc[m], p.activation);
  store_span<kN>(static_cast<scalar_t*>(p.y) + n * p.y_sn + c * p.y_sc, p.L, t0 + e0, vec, acc);
}

// Forward, channel-last. grid (ceil(L / kLt), ceil(C / kC), N); smem (kLt + S) * kC scalar_t
// (rounded up to 16 bytes) + W * kC acc_t. kW > 0: W == kW and d == 1, the thread keeps its
// weights and a window of kW inputs in registers (one shared-memory load per output); kW == 0:
// any W and d, taps and weights read from shared memory.
template <typename scalar_t, int kW>
__global__ void __launch_bounds__(kThreads) fwd_cl_kernel(CausalConvParams p, bool vec) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = blockIdx.z, c0 = static_cast<int64_t>(blockIdx.y) * kC;
  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * kLt;
  const int W = static_cast<int>(p.W), d = static_cast<int>(p.dilation), S = (W - 1) * d;
  auto* xs = dynamic_smem<scalar_t>();
  auto* ws = reinterpret_cast<acc_t*>(xs + round_up((kLt + S) * kC * sizeof(scalar_t), kVecBytes) /
                                               sizeof(scalar_t));
  load_rows_cl(p, static_cast<const scalar_t*>(p.x), p.x_sn, p.x_sl, n, c0, t0 - S, kLt + S, vec,
               true, xs);
  load_weights_cl<scalar_t>(p, c0, ws);
  __syncthreads();
  const int cc = threadIdx.x;
  const int64_t c = c0 + cc;
  if (c >= p.C) return;
  const acc_t b = p.bias != nullptr ? acc_t(static_cast<const scalar_t*>(p.bias)[c]) : acc_t(0);
  auto* y = static_cast<scalar_t*>(p.y) + n * p.y_sn + c;
  const scalar_t* col = xs + cc;  // this channel's inputs, row r at col[r * kC]
  const int rows = static_cast<int>(min(static_cast<int64_t>(kLt), p.L - t0));
  if constexpr (kW > 0) {
    acc_t w[kW], win[kW];  // win[k]: input row r + k
#pragma unroll
    for (int k = 0; k < kW; ++k) w[k] = ws[k * kC + cc];
#pragma unroll
    for (int k = 1; k < kW; ++k) win[k] = acc_t(col[(k - 1) * kC]);
    for (int r = 0; r < rows; ++r) {
#pragma unroll
      for (int k = 0; k + 1 < kW; ++k) win[k] = win[k + 1];
      win[kW - 1] = acc_t(col[(r + kW - 1) * kC]);
      acc_t acc = b;
#pragma unroll
      for (int k = 0; k < kW; ++k) acc += w[k] * win[k];
      y[(t0 + r) * p.y_sl] = scalar_t(activate(acc, p.activation));
    }
  } else {
    for (int r = 0; r < rows; ++r) {
      acc_t acc = b;
      for (int k = 0; k < W; ++k) acc += ws[k * kC + cc] * acc_t(col[(r + k * d) * kC]);
      y[(t0 + r) * p.y_sl] = scalar_t(activate(acc, p.activation));
    }
  }
}

// Direct forward: one thread per output, any layout and history. grid ceil(N*C*L / kThreads).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) fwd_direct_kernel(CausalConvParams p) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= p.N * p.C * p.L) return;
  int64_t n, c, t;
  native_coords(p, idx, n, c, t);
  const auto* w = static_cast<const scalar_t*>(p.weight) + c * p.W;
  acc_t acc = p.bias != nullptr ? acc_t(static_cast<const scalar_t*>(p.bias)[c]) : acc_t(0);
  for (int64_t k = 0; k < p.W; ++k) {
    acc += acc_t(w[k]) * input_at<scalar_t>(p, n, c, t - (p.W - 1 - k) * p.dilation);
  }
  static_cast<scalar_t*>(p.y)[n * p.y_sn + c * p.y_sc + t * p.y_sl] =
      scalar_t(activate(acc, p.activation));
}

// The channel-last kernel for (W, d): registers for W <= 4 at d = 1, else the general one.
template <typename scalar_t>
void (*fwd_cl_for(int64_t W, int64_t d))(CausalConvParams, bool) {
  if (d == 1 && W == 1) return fwd_cl_kernel<scalar_t, 1>;
  if (d == 1 && W == 2) return fwd_cl_kernel<scalar_t, 2>;
  if (d == 1 && W == 3) return fwd_cl_kernel<scalar_t, 3>;
  if (d == 1 && W == 4) return fwd_cl_kernel<scalar_t, 4>;
  return fwd_cl_kernel<scalar_t, 0>;
}

}  // namespace conv
}  // namespace cuda
}  // namespace fusedgru
