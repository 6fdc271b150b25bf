// The causal depthwise conv1d kernels' common ground: tile sizes, the padded shared-memory
// layout, and the device helpers that stage inputs and weights and apply the taps. Tiling and
// shape legend: causal_conv1d_host.cuh, ../causal_conv1d.h.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

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
      const Vec<scalar_t, kN> x =
          *reinterpret_cast<const Vec<scalar_t, kN>*>(base + n * s_n + t * s_l + c);
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

// (n, c, t) of flat index idx in x's native order (its contiguous dim fastest): the direct
// kernels' one thread per element.
__device__ __forceinline__ void native_coords(const CausalConvParams& p, int64_t idx, int64_t& n,
                                              int64_t& c, int64_t& t) {
  if (p.channels_last) {
    c = idx % p.C;
    t = (idx / p.C) % p.L;
  } else {
    t = idx % p.L;
    c = (idx / p.L) % p.C;
  }
  n = idx / (p.C * p.L);
}

}  // namespace conv
}  // namespace cuda
}  // namespace fusedgru
