// The layer-normalized GRU's per-step kernels, one block per batch row: the forward's row
// statistics over the 3H recurrent pre-activations (block reduction), the normalization and the
// gates; the backward's gate gradients and the gradient through the normalization. Equations,
// shape legend and params structs: ../fusedgru.h.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include "../fusedgru.h"
#include "device_helpers.cuh"
#include "launch.cuh"

namespace fusedgru {
namespace cuda {
namespace ln_gru {

constexpr int kThreads = 256;

// Sum of (a, b) over the block; every thread gets the totals. `scratch` holds 2 * 32 values.
template <typename T>
__device__ __forceinline__ void block_sum2(T& a, T& b, T* scratch) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) {
    a += __shfl_xor_sync(0xffffffffu, a, off);
    b += __shfl_xor_sync(0xffffffffu, b, off);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  if (lane == 0) {
    scratch[warp] = a;
    scratch[32 + warp] = b;
  }
  __syncthreads();
  a = lane < warps ? scratch[lane] : T(0);
  b = lane < warps ? scratch[32 + lane] : T(0);
#pragma unroll
  for (int off = 16; off > 0; off /= 2) {
    a += __shfl_xor_sync(0xffffffffu, a, off);
    b += __shfl_xor_sync(0xffffffffu, b, off);
  }
  __syncthreads();  // scratch may be reused right after
}

// grid: N blocks (one per batch row).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) ln_gru_forward_kernel(LnGruForwardPointwise p) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t scratch[64];
  const int64_t i = blockIdx.x, H = p.H, G = 3 * H;
  const auto* h_in = static_cast<const scalar_t*>(p.h_in) + i * H;
  auto* h_out = static_cast<scalar_t*>(p.h_out) + i * H;
  auto* out = static_cast<scalar_t*>(p.out) + i * p.out_sn;
  auto* ws = p.ws != nullptr ? static_cast<scalar_t*>(p.ws) + i * p.ws_sn : nullptr;
  if (p.lengths != nullptr && p.t >= p.lengths[i]) {  // inactive: keep h, zero the rest
    for (int64_t j = threadIdx.x; j < H; j += blockDim.x) out[j] = scalar_t(0);
    if (ws != nullptr) {
      for (int64_t k = threadIdx.x; k < ln_gru_saved_width(H); k += blockDim.x) {
        ws[k] = scalar_t(0);
      }
    }
    return;
  }
  const auto* gh = static_cast<const scalar_t*>(p.gh) + i * G;
  // The row's mean, then its variance from the deviations (a second pass over the row, which
  // L1 holds): accurate when |mean| >> std, where E[v^2] - mean^2 would cancel. The deviations'
  // own sum corrects the rounding of the mean (corrected two-pass algorithm, as the CPU op).
  acc_t s1 = 0, unused = 0;
  for (int64_t k = threadIdx.x; k < G; k += blockDim.x) s1 += acc_t(gh[k]);
  block_sum2(s1, unused, scratch);
  const acc_t mean0 = s1 / acc_t(G);
  acc_t c = 0, q = 0;
  for (int64_t k = threadIdx.x; k < G; k += blockDim.x) {
    const acc_t d = acc_t(gh[k]) - mean0;
    c += d;
    q += d * d;
  }
  block_sum2(c, q, scratch);
  const acc_t mean = mean0 + c / acc_t(G);
  const acc_t m2 = q - c * c / acc_t(G);
  const acc_t rstd = acc_t(1) / sqrt((m2 > acc_t(0) ? m2 : acc_t(0)) / acc_t(G) + acc_t(p.eps));
  const auto* ai = static_cast<const scalar_t*>(p.ai) + i * p.ai_sn;
  const auto* gamma = static_cast<const scalar_t*>(p.g_h);
  const auto* beta = static_cast<const scalar_t*>(p.b_h);
  for (int64_t j = threadIdx.x; j < H; j += blockDim.x) {
    acc_t xh[3], ah[3];
#pragma unroll
    for (int g = 0; g < 3; ++g) {
      xh[g] = (acc_t(gh[g * H + j]) - mean) * rstd;
      ah[g] = xh[g] * acc_t(gamma[g * H + j]) + acc_t(beta[g * H + j]);
    }
    const acc_t r = sigmoid_(acc_t(ai[j]) + ah[0]);
    const acc_t z = sigmoid_(acc_t(ai[H + j]) + ah[1]);
    const acc_t n = tanh(acc_t(ai[2 * H + j]) + r * ah[2]);
    const scalar_t h1 = scalar_t(n + z * (acc_t(h_in[j]) - n));
    h_out[j] = h1;
    out[j] = h1;
    if (ws != nullptr) {
      ws[j] = scalar_t(r);
      ws[H + j] = scalar_t(z);
      ws[2 * H + j] = scalar_t(n);
#pragma unroll
      for (int g = 0; g < 3; ++g) ws[3 * H + g * H + j] = scalar_t(xh[g]);
    }
  }
  if (ws != nullptr && threadIdx.x == 0) ws[9 * H] = scalar_t(rstd);
}

// grid: N blocks (one per batch row).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) ln_gru_backward_kernel(LnGruBackwardPointwise p) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t scratch[64];
  const int64_t i = blockIdx.x, H = p.H, G = 3 * H;
  const int64_t len = clamped_length(p.lengths, i, p.T);
  auto* da_i = static_cast<scalar_t*>(p.da_i) + i * p.dg_sn;
  auto* da_h = static_cast<scalar_t*>(p.da_h) + i * p.dg_sn;
  auto* dg = static_cast<scalar_t*>(p.dg_raw) + i * p.dg_sn;
  auto* hp = static_cast<scalar_t*>(p.hprev) + i * p.hp_sn;
  if (p.t >= len) {
    for (int64_t k = threadIdx.x; k < G; k += blockDim.x) {
      da_i[k] = da_h[k] = dg[k] = scalar_t(0);
    }
    for (int64_t j = threadIdx.x; j < H; j += blockDim.x) hp[j] = scalar_t(0);
    return;
  }
  const int64_t tp = p.reverse ? p.t + 1 : p.t - 1;
  const bool from_out = tp >= 0 && tp < len;
  const auto* h0p = from_out ? static_cast<const scalar_t*>(p.out) + tp * p.out_st + i * p.out_sn
                             : static_cast<const scalar_t*>(p.hx) + i * H;
  const auto* go = static_cast<const scalar_t*>(p.grad_out) + i * p.go_sn;
  const auto* ws = static_cast<const scalar_t*>(p.ws) + i * p.ws_sn;
  const auto* gamma = static_cast<const scalar_t*>(p.g_h);
  const auto* beta = static_cast<const scalar_t*>(p.b_h);
  auto* dh = static_cast<scalar_t*>(p.dh) + i * H;
  acc_t s1 = 0, s2 = 0;
  for (int64_t j = threadIdx.x; j < H; j += blockDim.x) {
    const acc_t g = acc_t(dh[j]) + acc_t(go[j]);
    const acc_t r = ws[j], z = ws[H + j], n = ws[2 * H + j], h0 = h0p[j];
    const acc_t ah_n = acc_t(ws[5 * H + j]) * acc_t(gamma[2 * H + j]) + acc_t(beta[2 * H + j]);
    const auto [d_r, d_z, d_n] = ln_gru_gate_grads(g, r, z, n, h0, ah_n);
    const acc_t dah[3] = {d_r, d_z, d_n * r};
    da_i[j] = scalar_t(d_r);
    da_i[H + j] = scalar_t(d_z);
    da_i[2 * H + j] = scalar_t(d_n);
#pragma unroll
    for (int k = 0; k < 3; ++k) {
      da_h[k * H + j] = scalar_t(dah[k]);
      const acc_t dxh = dah[k] * acc_t(gamma[k * H + j]);
      s1 += dxh;
      s2 += dxh * acc_t(ws[3 * H + k * H + j]);
    }
    dh[j] = scalar_t(g * z);
    hp[j] = scalar_t(h0);
  }
  block_sum2(s1, s2, scratch);  // also orders the da_h writes above before the reads below
  const acc_t m1 = s1 / acc_t(G), m2 = s2 / acc_t(G), rstd = ws[9 * H];
  for (int64_t k = threadIdx.x; k < G; k += blockDim.x) {
    const acc_t dxh = acc_t(da_h[k]) * acc_t(gamma[k]);
    dg[k] = scalar_t(rstd * (dxh - m1 - acc_t(ws[3 * H + k]) * m2));
  }
}

}  // namespace ln_gru
}  // namespace cuda
}  // namespace fusedgru
