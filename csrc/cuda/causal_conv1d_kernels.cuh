// CUDA kernels of the causal depthwise conv1d ops and the host code that launches them, written
// over a launcher (launch.cuh) so the tests also run them under the host emulator.
// Shape legend: ../causal_conv1d.h (N batch, C channels, L length, W width, d dilation,
// S = (W-1)*d history). kN = 16 / sizeof(scalar_t) elements make one 16-byte vector.
//
// Forward, (N, C, L): a block of kThreads owns kTile = kThreads * kN consecutive outputs of one
//   (n, c) row. It stages inputs [t0 - S, t0 + kTile) in shared memory in the math type (the
//   body with one 16-byte load per thread, the history from x, the initial state or zeros),
//   then each thread computes its kN consecutive outputs and stores them as one vector. Shared
//   memory is padded by one slot every kN (thread stride kN + 1: no bank conflicts). With d = 1
//   a thread slides a register window over the taps (2kN - 1 loads per kN taps, not kN * kN).
// Forward, channel-last ([N, L, C] storage): a block owns kLt time steps x kC channels; it
//   stages the kLt + S input rows (16-byte loads along channels) and the block's weights, then
//   thread i computes channel i for all kLt steps (coalesced stores across the block).
// Backward: the same two tilings in one kernel each. A block stages x (with the future halo
//   when an activation needs z recomputed) and dL/dy over [t0, t0 + tile + S), turns the latter
//   into gz = dL/dy * act'(z) in fp32, writes grad_x (taps mirrored in time), grad_initial_state
//   (first tile) and per-block weight/bias partial sums; a second kernel adds the partials over
//   blocks in a fixed order (deterministic, fp32; fp64 for double).
// Shapes or histories that do not fit a tile in shared memory take the direct kernels: one
//   thread per output reading taps through L1; backward gz, grad_x and a per-channel grad_w
//   kernel with a fixed-order tree reduction.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <optional>
#include <tuple>

#include "../causal_conv1d.h"
#include "launch.cuh"

namespace fusedgru {
namespace cuda {
namespace conv {

using at::Tensor;

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kLt = 64;                // channel-last tile: time steps
constexpr int kC = kThreads;           // channel-last tile: channels (one per thread)
constexpr int kGroup = 8;              // direct grad_w kernel: taps per block
constexpr int64_t kMaxGridYZ = 65535;  // gridDim.y and gridDim.z limit

template <typename T>
__device__ __forceinline__ T activate(T v, int64_t act) {
  if (act == kActSilu) return v / (T(1) + exp(-v));
  if (act == kActRelu) return v < T(0) ? T(0) : v;
  return v;
}

template <typename T>
__device__ __forceinline__ T activate_grad(T v, int64_t act) {
  if (act == kActSilu) {
    const T s = T(1) / (T(1) + exp(-v));
    return s * (T(1) + v * (T(1) - s));
  }
  if (act == kActRelu) return v > T(0) ? T(1) : T(0);
  return T(1);
}

// Padded shared-memory slot of tile position i (one spare slot every kN).
template <int kN>
__device__ __forceinline__ int pad(int i) {
  return i + i / kN;
}

template <int kN>
constexpr int64_t padded_size(int64_t n) {
  return n + n / kN + 1;
}

// Input of row (n, c) at time t (t < 0: initial state or zero; t >= L: zero).
template <typename scalar_t>
__device__ __forceinline__ at::opmath_type<scalar_t> input_at(const CausalConvParams& p, int64_t n,
                                                              int64_t c, int64_t t) {
  using acc_t = at::opmath_type<scalar_t>;
  if (t >= p.L) return acc_t(0);
  if (t >= 0) return acc_t(static_cast<const scalar_t*>(p.x)[n * p.x_sn + c * p.x_sc + t * p.x_sl]);
  if (p.init == nullptr) return acc_t(0);
  const int64_t S = (p.W - 1) * p.dilation;
  return acc_t(static_cast<const scalar_t*>(p.init)[n * p.i_sn + c * p.i_sc + (S + t) * p.i_ss]);
}

// kN elements row[t .. t+kN) (zero at t >= L) into s[pad(pos + m)]; row is time-contiguous.
template <int kN, typename scalar_t, typename acc_t>
__device__ __forceinline__ void load_span(const scalar_t* row, int64_t L, int64_t t, bool vec,
                                          acc_t* s, int pos) {
  if (vec && t + kN <= L) {
    const Vec<scalar_t, kN> v = *reinterpret_cast<const Vec<scalar_t, kN>*>(row + t);
#pragma unroll
    for (int m = 0; m < kN; ++m) s[pad<kN>(pos + m)] = acc_t(v.v[m]);
  } else {
#pragma unroll
    for (int m = 0; m < kN; ++m) s[pad<kN>(pos + m)] = t + m < L ? acc_t(row[t + m]) : acc_t(0);
  }
}

// kN outputs row[t .. t+kN) (those below L) from acc; row is time-contiguous.
template <int kN, typename scalar_t, typename acc_t>
__device__ __forceinline__ void store_span(scalar_t* row, int64_t L, int64_t t, bool vec,
                                           const acc_t (&acc)[kN]) {
  if (vec && t + kN <= L) {
    Vec<scalar_t, kN> v;
#pragma unroll
    for (int m = 0; m < kN; ++m) v.v[m] = scalar_t(acc[m]);
    *reinterpret_cast<Vec<scalar_t, kN>*>(row + t) = v;
  } else {
#pragma unroll
    for (int m = 0; m < kN; ++m) {
      if (t + m < L) row[t + m] = scalar_t(acc[m]);
    }
  }
}

// acc[m] += sum_j weight_at(j) * s[pad(e0 + m + j * d)], j in [0, W). With d == 1 the taps go
// in chunks of kN through a register window of 2kN - 1 values. Reads stay below
// e0 + kN - 1 + (W - 1) * d + 1.
template <int kN, typename acc_t, typename WeightAt>
__device__ __forceinline__ void accumulate_taps(acc_t (&acc)[kN], const acc_t* s, int e0, int W,
                                                int d, WeightAt weight_at) {
  if (d == 1) {
    for (int jb = 0; jb < W; jb += kN) {
      const int used = kN - 1 + min(kN, W - jb);  // window slots the chunk's taps reach
      acc_t win[2 * kN - 1];
#pragma unroll
      for (int i = 0; i < 2 * kN - 1; ++i) win[i] = i < used ? s[pad<kN>(e0 + jb + i)] : acc_t(0);
#pragma unroll
      for (int j = 0; j < kN; ++j) {
        if (jb + j < W) {
          const acc_t w = weight_at(jb + j);
#pragma unroll
          for (int m = 0; m < kN; ++m) acc[m] += w * win[m + j];
        }
      }
    }
  } else {
    for (int j = 0; j < W; ++j) {
      const acc_t w = weight_at(j);
      const int base = e0 + j * d;
#pragma unroll
      for (int m = 0; m < kN; ++m) acc[m] += w * s[pad<kN>(base + m)];
    }
  }
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int mask = 16; mask > 0; mask /= 2) v += __shfl_xor_sync(0xffffffffu, v, mask);
  return v;
}

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

// Rows [t_begin, t_begin + rows) x channels [c0, c0 + kC) of a channel-last tensor into
// s[row * kC + channel] (zero outside [0, L) x [0, C) unless from_input: then times below 0
// come from the initial state). One 16-byte vector per thread per step.
template <typename scalar_t, typename sm_t>
__device__ __forceinline__ void load_rows_cl(const CausalConvParams& p, const scalar_t* base,
                                             int64_t s_n, int64_t s_l, int64_t n, int64_t c0,
                                             int64_t t_begin, int rows, bool vec, bool from_input,
                                             sm_t* s) {
  constexpr int kN = kVecElems<scalar_t>;
  constexpr int kPerRow = kC / kN;
  for (int v = threadIdx.x; v < rows * kPerRow; v += kThreads) {
    const int row = v / kPerRow, cc = (v % kPerRow) * kN;
    const int64_t t = t_begin + row, c = c0 + cc;
    sm_t* dst = s + row * kC + cc;
    if (vec && t >= 0 && t < p.L && c + kN <= p.C) {
      const Vec<scalar_t, kN> x = *reinterpret_cast<const Vec<scalar_t, kN>*>(base + n * s_n +
                                                                              t * s_l + c);
#pragma unroll
      for (int m = 0; m < kN; ++m) dst[m] = sm_t(x.v[m]);
    } else {
#pragma unroll
      for (int m = 0; m < kN; ++m) {
        sm_t val = sm_t(0);
        if (c + m < p.C) {
          if (t >= 0 && t < p.L) {
            val = sm_t(base[n * s_n + t * s_l + c + m]);
          } else if (from_input) {
            val = sm_t(input_at<scalar_t>(p, n, c + m, t));
          }
        }
        dst[m] = val;
      }
    }
  }
}

// The block's weights transposed: ws[k * kC + cc] = weight[c0 + cc, k] (zero past C).
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void load_weights_cl(const CausalConvParams& p, int64_t c0, acc_t* ws) {
  const auto* w = static_cast<const scalar_t*>(p.weight);
  for (int i = threadIdx.x; i < p.W * kC; i += kThreads) {
    const int k = i / kC, cc = i % kC;
    ws[i] = c0 + cc < p.C ? acc_t(w[(c0 + cc) * p.W + k]) : acc_t(0);
  }
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
  auto* ws = reinterpret_cast<acc_t*>(xs + ((kLt + S) * kC * sizeof(scalar_t) + 15) / 16 * 16 /
                                               sizeof(scalar_t));
  load_rows_cl(p, static_cast<const scalar_t*>(p.x), p.x_sn, p.x_sl, n, c0, t0 - S, kLt + S,
               vec, true, xs);
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
  if (p.channels_last) {
    c = idx % p.C;
    t = (idx / p.C) % p.L;
  } else {
    t = idx % p.L;
    c = (idx / p.L) % p.C;
  }
  n = idx / (p.C * p.L);
  const auto* w = static_cast<const scalar_t*>(p.weight) + c * p.W;
  acc_t acc = p.bias != nullptr ? acc_t(static_cast<const scalar_t*>(p.bias)[c]) : acc_t(0);
  for (int64_t k = 0; k < p.W; ++k) {
    acc += acc_t(w[k]) * input_at<scalar_t>(p, n, c, t - (p.W - 1 - k) * p.dilation);
  }
  static_cast<scalar_t*>(p.y)[n * p.y_sn + c * p.y_sc + t * p.y_sl] =
      scalar_t(activate(acc, p.activation));
}

// ---------------------------------------------------------------------------------------------
// Backward, (N, C, L). grid (ceil(L / kTile), C, N). smem, acc_t: xs padded_size(kTile + S + F)
// (times [t0 - S, t0 + kTile + F), F = S with an activation else 0), gs padded_size(kTile + S)
// (times [t0, t0 + kTile + S)), red kWarps * (W + 1). partial: [P, W + 1, C] with
// P = n * gridDim.x + blockIdx.x; entry W is the bias.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) bwd_ncl_kernel(CausalConvBackwardParams q, bool vec,
                                                           at::opmath_type<scalar_t>* partial) {
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
__global__ void __launch_bounds__(kThreads) bwd_cl_kernel(CausalConvBackwardParams q, bool vec,
                                                          at::opmath_type<scalar_t>* partial) {
  using acc_t = at::opmath_type<scalar_t>;
  const CausalConvParams& p = q.fwd;
  const int64_t n = blockIdx.z, c0 = static_cast<int64_t>(blockIdx.y) * kC;
  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * kLt;
  const int W = static_cast<int>(p.W), d = static_cast<int>(p.dilation), S = (W - 1) * d;
  const bool act = p.activation != kActNone;
  const int F = act ? S : 0;
  auto* xs = dynamic_smem<scalar_t>();
  auto* gs = reinterpret_cast<acc_t*>(
      xs + ((kLt + S + F) * kC * sizeof(scalar_t) + 15) / 16 * 16 / sizeof(scalar_t));
  acc_t* ws = gs + (kLt + S) * kC;
  load_rows_cl(p, static_cast<const scalar_t*>(p.x), p.x_sn, p.x_sl, n, c0, t0 - S,
               kLt + S + F, vec, true, xs);
  load_rows_cl(p, static_cast<const scalar_t*>(q.grad_y), q.gy_sn, q.gy_sl, n, c0, t0, kLt + S,
               vec, false, gs);
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

// The channel-last kernel for (W, d): registers for W <= 4 at d = 1, else the general one.
template <typename scalar_t>
void (*fwd_cl_for(int64_t W, int64_t d))(CausalConvParams, bool) {
  if (d == 1 && W == 1) return fwd_cl_kernel<scalar_t, 1>;
  if (d == 1 && W == 2) return fwd_cl_kernel<scalar_t, 2>;
  if (d == 1 && W == 3) return fwd_cl_kernel<scalar_t, 3>;
  if (d == 1 && W == 4) return fwd_cl_kernel<scalar_t, 4>;
  return fwd_cl_kernel<scalar_t, 0>;
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
__global__ void __launch_bounds__(kThreads) reduce_partials_kernel(const acc_t* partial,
                                                                   int64_t P, int64_t C,
                                                                   int64_t W, acc_t* grad_weight,
                                                                   acc_t* grad_bias) {
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
__global__ void __launch_bounds__(kThreads) gz_direct_kernel(CausalConvBackwardParams q,
                                                             at::opmath_type<scalar_t>* gz) {
  using acc_t = at::opmath_type<scalar_t>;
  const CausalConvParams& p = q.fwd;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= p.N * p.C * p.L) return;
  int64_t n, c, t;
  if (p.channels_last) {
    c = idx % p.C;
    t = (idx / p.C) % p.L;
  } else {
    t = idx % p.L;
    c = (idx / p.L) % p.C;
  }
  n = idx / (p.C * p.L);
  const acc_t g = acc_t(static_cast<const scalar_t*>(q.grad_y)[n * q.gy_sn + c * q.gy_sc +
                                                               t * q.gy_sl]);
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
__global__ void __launch_bounds__(kThreads) grad_x_direct_kernel(
    CausalConvBackwardParams q, const at::opmath_type<scalar_t>* gz) {
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

// One thread per (n, c): y = act(b + taps over [state, x]); state shifted left, x appended.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) update_kernel(
    const scalar_t* x, int64_t x_sn, int64_t x_sc, scalar_t* state, int64_t s_sn, int64_t s_sc,
    int64_t s_ss, const scalar_t* w, const scalar_t* bias, scalar_t* y, int64_t N, int64_t C,
    int64_t W, int64_t dilation, int64_t activation) {
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

// ---------------------------------------------------------------------------------------------
// Host side.

inline unsigned int blocks_for(int64_t n) {
  return static_cast<unsigned int>((n + kThreads - 1) / kThreads);
}

inline int64_t round16(int64_t bytes) { return (bytes + 15) / 16 * 16; }

// Whether every row start of t (along its two non-contiguous dims) is 16-byte aligned.
inline bool rows_aligned(const Tensor& t, int64_t kN, bool channels_last) {
  const int64_t a = t.stride(0), b = channels_last ? t.stride(2) : t.stride(1);
  return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0 && a % kN == 0 && b % kN == 0;
}

struct TilePlan {
  bool tiled;
  dim3 grid;
  int64_t smem;
};

// The tiled kernels' grid and dynamic shared memory, or tiled = false when they do not fit.
template <typename scalar_t, typename Launch>
TilePlan tile_plan(const CausalConvParams& p, bool backward, const Launch& launch) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kN = kVecElems<scalar_t>;
  constexpr int64_t kTile = kThreads * kN;
  const int64_t S = (p.W - 1) * p.dilation;
  const int64_t F = backward && p.activation != kActNone ? S : 0;
  const int64_t el = sizeof(scalar_t), acc = sizeof(acc_t);
  int64_t smem, tiles, cblocks;
  if (p.channels_last) {
    smem = round16((kLt + S + F) * kC * el) + (backward ? (kLt + S) * kC * acc : 0) +
           p.W * kC * acc;
    tiles = (p.L + kLt - 1) / kLt;
    cblocks = (p.C + kC - 1) / kC;
  } else {
    smem = (padded_size<kN>(kTile + S + F) +
            (backward ? padded_size<kN>(kTile + S) + kWarps * (p.W + 1) : 0)) * acc;
    tiles = (p.L + kTile - 1) / kTile;
    cblocks = p.C;
  }
  const bool fits = S < (int64_t(1) << 24) && smem <= static_cast<int64_t>(launch.max_smem()) &&
                    tiles <= INT32_MAX && cblocks <= kMaxGridYZ && p.N <= kMaxGridYZ;
  return {fits,
          dim3(static_cast<unsigned int>(tiles), static_cast<unsigned int>(cblocks),
               static_cast<unsigned int>(p.N)),
          smem};
}

template <typename Launch>
Tensor fwd_impl(const Tensor& x_in, const Tensor& weight, const std::optional<Tensor>& bias,
                const std::optional<Tensor>& initial_state, int64_t dilation, int64_t activation,
                const Launch& launch) {
  check_causal_conv_args(x_in, weight, bias, initial_state, dilation, activation);
  const Tensor x = conv_input_layout(x_in);
  const Tensor w = weight.contiguous();
  const std::optional<Tensor> b =
      bias.has_value() ? std::optional<Tensor>(bias->contiguous()) : std::nullopt;
  Tensor y = conv_empty_like(x);
  if (y.numel() == 0) return y;
  CausalConvParams p = conv_params(x, w, b, initial_state, dilation, activation);
  p.y = y.data_ptr();
  p.y_sn = y.stride(0);
  p.y_sc = y.stride(1);
  p.y_sl = y.stride(2);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                  "causal_conv1d_fwd_cuda", [&] {
    const TilePlan plan = tile_plan<scalar_t>(p, false, launch);
    if (plan.tiled) {
      constexpr int kN = kVecElems<scalar_t>;
      const bool cl = p.channels_last;
      const bool vec = rows_aligned(x, kN, cl) && rows_aligned(y, kN, cl);
      launch(cl ? fwd_cl_for<scalar_t>(p.W, p.dilation) : fwd_ncl_kernel<scalar_t>, plan.grid,
             dim3(kThreads), plan.smem, p, vec);
    } else {
      launch(fwd_direct_kernel<scalar_t>, dim3(blocks_for(y.numel())), dim3(kThreads), 0, p);
    }
  });
  return y;
}

template <typename Launch>
std::tuple<Tensor, Tensor, Tensor, Tensor> bwd_impl(
    const Tensor& grad_y, const Tensor& x_in, const Tensor& weight,
    const std::optional<Tensor>& bias, const std::optional<Tensor>& initial_state,
    int64_t dilation, int64_t activation, const Launch& launch) {
  check_causal_conv_bwd_args(grad_y, x_in, weight, bias, initial_state, dilation, activation);
  const Tensor x = conv_input_layout(x_in);
  const bool cl = conv_channels_last(x);
  const Tensor gy = conv_like_layout(grad_y, cl);
  const Tensor w = weight.contiguous();
  const std::optional<Tensor> b =
      bias.has_value() ? std::optional<Tensor>(bias->contiguous()) : std::nullopt;
  const int64_t N = x.size(0), C = x.size(1), W = w.size(1);
  const int64_t S = (W - 1) * dilation;
  const auto acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  Tensor gx = conv_empty_like(x);
  Tensor g_init = initial_state.has_value() ? at::zeros({N, C, S}, x.options())
                                            : at::empty({0}, x.options());
  Tensor gw = at::zeros({C, W}, x.options().dtype(acc_type));
  Tensor gb = at::zeros({bias.has_value() ? C : 0}, x.options().dtype(acc_type));
  if (x.numel() > 0) {
    const CausalConvBackwardParams q = conv_backward_params(gy, x, w, b, initial_state, dilation,
                                                            activation, gx, g_init, gw, gb);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                    "causal_conv1d_bwd_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const TilePlan plan = tile_plan<scalar_t>(q.fwd, true, launch);
      if (plan.tiled) {
        constexpr int kN = kVecElems<scalar_t>;
        const bool vec = rows_aligned(x, kN, cl) && rows_aligned(gy, kN, cl) &&
                         rows_aligned(gx, kN, cl);
        const int64_t P = N * plan.grid.x;
        Tensor partial = at::empty({P * (W + 1) * C}, x.options().dtype(acc_type));
        launch(cl ? bwd_cl_for<scalar_t>(W, dilation) : bwd_ncl_kernel<scalar_t>, plan.grid,
               dim3(kThreads), plan.smem, q, vec, partial.mutable_data_ptr<acc_t>());
        launch(reduce_partials_kernel<acc_t>, dim3(blocks_for((W + 1) * C)), dim3(kThreads), 0,
               partial.const_data_ptr<acc_t>(), P, C, W, gw.mutable_data_ptr<acc_t>(),
               bias.has_value() ? gb.mutable_data_ptr<acc_t>() : nullptr);
      } else {
        Tensor gz = at::empty({x.numel()}, x.options().dtype(acc_type));
        acc_t* gzp = gz.mutable_data_ptr<acc_t>();
        launch(gz_direct_kernel<scalar_t>, dim3(blocks_for(x.numel())), dim3(kThreads), 0, q,
               gzp);
        launch(grad_x_direct_kernel<scalar_t>, dim3(blocks_for(N * C * (x.size(2) + S))),
               dim3(kThreads), 0, q, static_cast<const acc_t*>(gzp));
        const unsigned int groups = static_cast<unsigned int>((W + 1 + kGroup - 1) / kGroup);
        if (cl) {
          launch(grad_w_direct_kernel<scalar_t, 32>,
                 dim3(static_cast<unsigned int>((C + 31) / 32), groups), dim3(32, 8), 0, q,
                 static_cast<const acc_t*>(gzp));
        } else {
          launch(grad_w_direct_kernel<scalar_t, 1>, dim3(static_cast<unsigned int>(C), groups),
                 dim3(1, 256), 0, q, static_cast<const acc_t*>(gzp));
        }
      }
    });
  }
  return {gx, gw.to(weight.scalar_type()), gb.to(weight.scalar_type()), g_init};
}

template <typename Launch>
Tensor update_impl(const Tensor& x, Tensor& conv_state, const Tensor& weight,
                   const std::optional<Tensor>& bias, int64_t dilation, int64_t activation,
                   const Launch& launch) {
  check_causal_conv_update_args(x, conv_state, weight, bias, dilation, activation);
  const int64_t N = x.size(0), C = x.size(1), W = weight.size(1);
  const Tensor w = weight.contiguous();
  const std::optional<Tensor> b =
      bias.has_value() ? std::optional<Tensor>(bias->contiguous()) : std::nullopt;
  Tensor y = at::empty({N, C}, x.options());
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                  "causal_conv1d_update_cuda", [&] {
    launch(update_kernel<scalar_t>, dim3(blocks_for(N * C)), dim3(kThreads), 0,
           x.const_data_ptr<scalar_t>(), x.stride(0), x.stride(1),
           conv_state.mutable_data_ptr<scalar_t>(), conv_state.stride(0), conv_state.stride(1),
           conv_state.stride(2), w.const_data_ptr<scalar_t>(),
           b.has_value() ? b->const_data_ptr<scalar_t>() : nullptr,
           y.mutable_data_ptr<scalar_t>(), N, C, W, dilation, activation);
  });
  return y;
}

}  // namespace conv
}  // namespace cuda
}  // namespace fusedgru
