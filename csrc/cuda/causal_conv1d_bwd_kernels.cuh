// Backward kernels of the causal depthwise conv1d: tiled (N, C, L) and channel-last with
// per-block weight/bias partials and their fixed-order reduction, and the direct fallbacks
// (gz, grad_x, grad_w). Tiling: causal_conv1d_host.cuh.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include "causal_conv1d_tiles.cuh"

namespace fusedgru {
namespace cuda {
namespace conv {

// ---------------------------------------------------------------------------------------------
// Backward, (N, C, L). grid (ceil(L / kTile), C, N). smem, acc_t: xs padded_size(kTile + S + F)
// (times [t0 - S, t0 + kTile + F), F = S with an activation else 0), gs padded_size(kTile + S)
// (times [t0, t0 + kTile + S)), red kWarps * (W + 1). partial: [P, W + 1, C] with
// P = n * gridDim.x + blockIdx.x; entry W is the bias.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    bwd_ncl_kernel(CausalConvBackwardParams q, bool vec, at::opmath_type<scalar_t>* partial) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kN = kVecElems<scalar_t>;
  constexpr int kTile = kThreads * kN;
  const CausalConvParams& p = q.fwd;
  const int64_t n = blockIdx.z, c = blockIdx.y, t0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int W = static_cast<int>(p.W), d = static_cast<int>(p.dilation), S = (W - 1) * d;
  const bool act = p.activation != kActNone;
  const int F = act ? S : 0;
  acc_t* xs = dynamic_smem<acc_t>();
  acc_t* gs = xs + padded_size<kN>(kTile + S + F);
  acc_t* red = gs + padded_size<kN>(kTile + S);
  const int e0 = threadIdx.x * kN;
  const auto* x = static_cast<const scalar_t*>(p.x) + n * p.x_sn + c * p.x_sc;
  const auto* gy = static_cast<const scalar_t*>(q.grad_y) + n * q.gy_sn + c * q.gy_sc;
  load_span<kN>(x, p.L, t0 + e0, vec, xs, S + e0);
  load_span<kN>(gy, p.L, t0 + e0, vec, gs, e0);
  for (int i = threadIdx.x; i < S; i += kThreads) {
    xs[pad<kN>(i)] = input_at<scalar_t>(p, n, c, t0 - S + i);
    const int64_t t = t0 + kTile + i;
    gs[pad<kN>(kTile + i)] = t < p.L ? acc_t(gy[t]) : acc_t(0);
    if (act) xs[pad<kN>(S + kTile + i)] = t < p.L ? acc_t(x[t]) : acc_t(0);
  }
  __syncthreads();
  const auto* w = static_cast<const scalar_t*>(p.weight) + c * W;
  if (act) {
    const acc_t b = p.bias != nullptr ? acc_t(static_cast<const scalar_t*>(p.bias)[c]) : acc_t(0);
    for (int i = threadIdx.x; i < kTile + S && t0 + i < p.L; i += kThreads) {
      acc_t z = b;
      for (int k = 0; k < W; ++k) z += acc_t(w[k]) * xs[pad<kN>(i + k * d)];
      gs[pad<kN>(i)] *= activate_grad(z, p.activation);
    }
    __syncthreads();
  }
  // grad_x[t0 + e0 + m] = sum_k w[k] gz[t0 + e0 + m + (W-1-k) d]
  acc_t gx[kN];
#pragma unroll
  for (int m = 0; m < kN; ++m) gx[m] = acc_t(0);
  accumulate_taps<kN>(gx, gs, e0, W, d, [&](int j) { return acc_t(w[W - 1 - j]); });
  store_span<kN>(static_cast<scalar_t*>(q.grad_x) + n * q.gx_sn + c * q.gx_sc, p.L, t0 + e0, vec,
                 gx);
  if (q.grad_init != nullptr && blockIdx.x == 0) {
    auto* gi = static_cast<scalar_t*>(q.grad_init) + (n * p.C + c) * S;
    for (int i = threadIdx.x; i < S; i += kThreads) {  // time i - S
      acc_t a = acc_t(0);
      for (int k = 0; k < W; ++k) {
        const int g = i - S + (W - 1 - k) * d;
        if (g >= 0) a += acc_t(w[k]) * gs[pad<kN>(g)];
      }
      gi[i] = scalar_t(a);
    }
  }
  // Weight and bias partial sums over this thread's outputs, then over the block.
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int valid = static_cast<int>(max(int64_t(0), min(static_cast<int64_t>(kN), p.L - t0 - e0)));
  for (int j = 0; j <= W; ++j) {
    acc_t sum = acc_t(0);
    for (int m = 0; m < valid; ++m) {
      sum += gs[pad<kN>(e0 + m)] * (j < W ? xs[pad<kN>(e0 + m + j * d)] : acc_t(1));
    }
    sum = warp_sum(sum);
    if (lane == 0) red[warp * (W + 1) + j] = sum;
  }
  __syncthreads();
  const int64_t P = n * gridDim.x + blockIdx.x;
  for (int j = threadIdx.x; j <= W; j += kThreads) {
    acc_t sum = acc_t(0);
    for (int v = 0; v < kWarps; ++v) sum += red[v * (W + 1) + j];
    partial[(P * (W + 1) + j) * p.C + c] = sum;
  }
}

// Backward, channel-last. grid (ceil(L / kLt), ceil(C / kC), N). smem: xs (kLt + S + F) * kC
// scalar_t (times [t0 - S, t0 + kLt + F)) rounded up to 16 bytes, gs (kLt + S) * kC acc_t
// (times [t0, t0 + kLt + S)), ws W * kC acc_t. partial as in bwd_ncl_kernel, P = n * gridDim.x +
// blockIdx.x. kW as in fwd_cl_kernel: with kW > 0 the weights, windows of kW inputs and kW
// gradients and the W + 1 partial sums live in registers.
template <typename scalar_t, int kW>
__global__ void __launch_bounds__(kThreads)
    bwd_cl_kernel(CausalConvBackwardParams q, bool vec, at::opmath_type<scalar_t>* partial) {
  using acc_t = at::opmath_type<scalar_t>;
  const CausalConvParams& p = q.fwd;
  const int64_t n = blockIdx.z, c0 = static_cast<int64_t>(blockIdx.y) * kC;
  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * kLt;
  const int W = static_cast<int>(p.W), d = static_cast<int>(p.dilation), S = (W - 1) * d;
  const bool act = p.activation != kActNone;
  const int F = act ? S : 0;
  auto* xs = dynamic_smem<scalar_t>();
  auto* gs = reinterpret_cast<acc_t*>(
      xs + round_up((kLt + S + F) * kC * sizeof(scalar_t), kVecBytes) / sizeof(scalar_t));
  acc_t* ws = gs + (kLt + S) * kC;
  load_rows_cl(p, static_cast<const scalar_t*>(p.x), p.x_sn, p.x_sl, n, c0, t0 - S, kLt + S + F,
               vec, true, xs);
  load_rows_cl(p, static_cast<const scalar_t*>(q.grad_y), q.gy_sn, q.gy_sl, n, c0, t0, kLt + S, vec,
               false, gs);
  load_weights_cl<scalar_t>(p, c0, ws);
  __syncthreads();
  // From here on, thread cc works on channel c0 + cc alone: no more barriers.
  const int cc = threadIdx.x;
  const int64_t c = c0 + cc;
  if (c >= p.C) return;
  const scalar_t* xcol = xs + cc;  // row r at xcol[r * kC]
  acc_t* gcol = gs + cc;
  const int grows = static_cast<int>(min(static_cast<int64_t>(kLt + S), p.L - t0));
  const int rows = static_cast<int>(min(static_cast<int64_t>(kLt), p.L - t0));
  const acc_t b = p.bias != nullptr ? acc_t(static_cast<const scalar_t*>(p.bias)[c]) : acc_t(0);
  acc_t w[kW > 0 ? kW : 1];
#pragma unroll
  for (int k = 0; k < kW; ++k) w[k] = ws[k * kC + cc];
  if (act) {  // gz = dL/dy * act'(z) over the rows that are real times
    if constexpr (kW > 0) {
      acc_t win[kW];
#pragma unroll
      for (int k = 1; k < kW; ++k) win[k] = acc_t(xcol[(k - 1) * kC]);
      for (int r = 0; r < grows; ++r) {
#pragma unroll
        for (int k = 0; k + 1 < kW; ++k) win[k] = win[k + 1];
        win[kW - 1] = acc_t(xcol[(r + kW - 1) * kC]);
        acc_t z = b;
#pragma unroll
        for (int k = 0; k < kW; ++k) z += w[k] * win[k];
        gcol[r * kC] *= activate_grad(z, p.activation);
      }
    } else {
      for (int r = 0; r < grows; ++r) {
        acc_t z = b;
        for (int k = 0; k < W; ++k) z += ws[k * kC + cc] * acc_t(xcol[(r + k * d) * kC]);
        gcol[r * kC] *= activate_grad(z, p.activation);
      }
    }
  }
  if (q.grad_init != nullptr && blockIdx.x == 0) {
    auto* gi = static_cast<scalar_t*>(q.grad_init) + (n * p.C + c) * S;
    for (int i = 0; i < S; ++i) {  // time i - S
      acc_t a = acc_t(0);
      for (int k = 0; k < W; ++k) {
        const int g = i - S + (W - 1 - k) * d;
        if (g >= 0) a += ws[k * kC + cc] * gcol[g * kC];
      }
      gi[i] = scalar_t(a);
    }
  }
  auto* gx = static_cast<scalar_t*>(q.grad_x) + n * q.gx_sn + c;
  const int64_t P = n * gridDim.x + blockIdx.x;
  acc_t* part = partial + P * (W + 1) * p.C + c;  // [W + 1] entries, stride C
  if constexpr (kW > 0) {
    acc_t gwin[kW], xwin[kW], sw[kW], sb = acc_t(0);  // windows: rows r .. r + kW - 1
#pragma unroll
    for (int k = 0; k < kW; ++k) sw[k] = acc_t(0);
#pragma unroll
    for (int k = 1; k < kW; ++k) {
      gwin[k] = gcol[(k - 1) * kC];
      xwin[k] = acc_t(xcol[(k - 1) * kC]);
    }
    for (int r = 0; r < rows; ++r) {
#pragma unroll
      for (int k = 0; k + 1 < kW; ++k) {
        gwin[k] = gwin[k + 1];
        xwin[k] = xwin[k + 1];
      }
      gwin[kW - 1] = gcol[(r + kW - 1) * kC];
      xwin[kW - 1] = acc_t(xcol[(r + kW - 1) * kC]);
      acc_t a = acc_t(0);  // grad_x at t0 + r: sum_k w[k] gz[t0 + r + (W-1-k)]
#pragma unroll
      for (int k = 0; k < kW; ++k) a += w[k] * gwin[kW - 1 - k];
      gx[(t0 + r) * q.gx_sl] = scalar_t(a);
      sb += gwin[0];  // gz at t0 + r; tap k meets x at t0 + r - (W-1-k): xwin[k]
#pragma unroll
      for (int k = 0; k < kW; ++k) sw[k] += gwin[0] * xwin[k];
    }
#pragma unroll
    for (int k = 0; k < kW; ++k) part[k * p.C] = sw[k];
    part[kW * p.C] = sb;
  } else {
    for (int r = 0; r < rows; ++r) {
      acc_t a = acc_t(0);
      for (int k = 0; k < W; ++k) a += ws[k * kC + cc] * gcol[(r + (W - 1 - k) * d) * kC];
      gx[(t0 + r) * q.gx_sl] = scalar_t(a);
    }
    for (int j = 0; j <= W; ++j) {
      acc_t sum = acc_t(0);
      for (int r = 0; r < rows; ++r) {
        sum += gcol[r * kC] * (j < W ? acc_t(xcol[(r + j * d) * kC]) : acc_t(1));
      }
      part[j * p.C] = sum;
    }
  }
}

template <typename scalar_t>
void (*bwd_cl_for(int64_t W, int64_t d))(CausalConvBackwardParams, bool,
                                         at::opmath_type<scalar_t>*) {
  if (d == 1 && W == 1) return bwd_cl_kernel<scalar_t, 1>;
  if (d == 1 && W == 2) return bwd_cl_kernel<scalar_t, 2>;
  if (d == 1 && W == 3) return bwd_cl_kernel<scalar_t, 3>;
  if (d == 1 && W == 4) return bwd_cl_kernel<scalar_t, 4>;
  return bwd_cl_kernel<scalar_t, 0>;
}

// grad_weight[c, k] = sum_P partial[P, k, c]; grad_bias[c] = sum_P partial[P, W, c]; fixed order.
template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    reduce_partials_kernel(const acc_t* partial, int64_t P, int64_t C, int64_t W,
                           acc_t* grad_weight, acc_t* grad_bias) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= (W + 1) * C) return;
  acc_t sum = acc_t(0);
  for (int64_t i = 0; i < P; ++i) sum += partial[i * (W + 1) * C + idx];
  const int64_t k = idx / C, c = idx % C;
  if (k < W) {
    grad_weight[c * W + k] = sum;
  } else if (grad_bias != nullptr) {
    grad_bias[c] = sum;
  }
}

// Direct backward (1): gz = dL/dy * act'(z), stored in x's native order (contiguous dim fastest).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    gz_direct_kernel(CausalConvBackwardParams q, at::opmath_type<scalar_t>* gz) {
  using acc_t = at::opmath_type<scalar_t>;
  const CausalConvParams& p = q.fwd;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= p.N * p.C * p.L) return;
  int64_t n, c, t;
  native_coords(p, idx, n, c, t);
  const acc_t g =
      acc_t(static_cast<const scalar_t*>(q.grad_y)[n * q.gy_sn + c * q.gy_sc + t * q.gy_sl]);
  if (p.activation == kActNone) {
    gz[idx] = g;
    return;
  }
  const auto* w = static_cast<const scalar_t*>(p.weight) + c * p.W;
  acc_t z = p.bias != nullptr ? acc_t(static_cast<const scalar_t*>(p.bias)[c]) : acc_t(0);
  for (int64_t k = 0; k < p.W; ++k) {
    z += acc_t(w[k]) * input_at<scalar_t>(p, n, c, t - (p.W - 1 - k) * p.dilation);
  }
  gz[idx] = g * activate_grad(z, p.activation);
}

__device__ __forceinline__ int64_t gz_index(const CausalConvParams& p, int64_t n, int64_t c,
                                            int64_t t) {
  return p.channels_last ? (n * p.L + t) * p.C + c : (n * p.C + c) * p.L + t;
}

// Direct backward (2): grad_x[n, c, u] (u >= 0) and grad_init[n, c, S + u] (u < 0)
// = sum_k w[c, k] gz[n, c, u + (W-1-k) d]. grid ceil(N*C*(L+S) / kThreads).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    grad_x_direct_kernel(CausalConvBackwardParams q, const at::opmath_type<scalar_t>* gz) {
  using acc_t = at::opmath_type<scalar_t>;
  const CausalConvParams& p = q.fwd;
  const int64_t S = (p.W - 1) * p.dilation, Lx = p.L + S;  // extended time axis [-S, L)
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= p.N * p.C * Lx) return;
  int64_t n, c, u;
  if (p.channels_last) {
    c = idx % p.C;
    u = (idx / p.C) % Lx - S;
  } else {
    u = idx % Lx - S;
    c = (idx / Lx) % p.C;
  }
  n = idx / (p.C * Lx);
  if (u < 0 && q.grad_init == nullptr) return;
  const auto* w = static_cast<const scalar_t*>(p.weight) + c * p.W;
  acc_t acc = 0;
  for (int64_t k = 0; k < p.W; ++k) {
    const int64_t t = u + (p.W - 1 - k) * p.dilation;
    if (t >= 0 && t < p.L) acc += acc_t(w[k]) * gz[gz_index(p, n, c, t)];
  }
  if (u >= 0) {
    static_cast<scalar_t*>(q.grad_x)[n * q.gx_sn + c * q.gx_sc + u * q.gx_sl] = scalar_t(acc);
  } else {
    static_cast<scalar_t*>(q.grad_init)[(n * p.C + c) * S + S + u] = scalar_t(acc);
  }
}

// Direct backward (3): weight and bias gradients of kGroup taps (tap W is the bias) for kLanes
// channels per block; block (kLanes, 256 / kLanes), grid (ceil(C / kLanes), ceil((W+1) / kGroup)).
template <typename scalar_t, int kLanes>
__global__ void grad_w_direct_kernel(CausalConvBackwardParams q,
                                     const at::opmath_type<scalar_t>* gz) {
  using acc_t = at::opmath_type<scalar_t>;
  const CausalConvParams& p = q.fwd;
  constexpr int kRows = 256 / kLanes;
  __shared__ acc_t partial[kGroup][kRows][kLanes];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kLanes + threadIdx.x;
  const int64_t k0 = static_cast<int64_t>(blockIdx.y) * kGroup;
  acc_t acc[kGroup];
#pragma unroll
  for (int g = 0; g < kGroup; ++g) acc[g] = 0;
  if (c < p.C) {
    for (int64_t j = threadIdx.y; j < p.N * p.L; j += kRows) {
      const int64_t n = j / p.L, t = j % p.L;
      const acc_t g_val = gz[gz_index(p, n, c, t)];
#pragma unroll
      for (int g = 0; g < kGroup; ++g) {
        const int64_t k = k0 + g;
        if (k < p.W) {
          acc[g] += g_val * input_at<scalar_t>(p, n, c, t - (p.W - 1 - k) * p.dilation);
        } else if (k == p.W) {
          acc[g] += g_val;
        }
      }
    }
  }
#pragma unroll
  for (int g = 0; g < kGroup; ++g) partial[g][threadIdx.y][threadIdx.x] = acc[g];
  __syncthreads();
  for (int stride = kRows / 2; stride > 0; stride /= 2) {
    if (threadIdx.y < stride) {
#pragma unroll
      for (int g = 0; g < kGroup; ++g) {
        partial[g][threadIdx.y][threadIdx.x] += partial[g][threadIdx.y + stride][threadIdx.x];
      }
    }
    __syncthreads();
  }
  if (threadIdx.y == 0 && c < p.C) {
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      const int64_t k = k0 + g;
      if (k < p.W) {
        static_cast<acc_t*>(q.grad_weight)[c * p.W + k] = partial[g][0][threadIdx.x];
      } else if (k == p.W && q.grad_bias != nullptr) {
        static_cast<acc_t*>(q.grad_bias)[c] = partial[g][0][threadIdx.x];
      }
    }
  }
}

}  // namespace conv
}  // namespace cuda
}  // namespace fusedgru
