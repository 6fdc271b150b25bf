// CUDA kernels of the fused GRU ops (per-step path) and the host code that launches them,
// written over a launcher (launch.cuh) so the tests also run them under the host emulator.
//
// Forward, per layer and direction: the input projection of all steps as one cuBLAS GEMM, then
// per step one recurrent GEMM (h_{t-1} W_hh^T) and ONE fused pointwise kernel computing r, z, n,
// h_t, the output and the saved activations. Backward: per step (in reverse) one fused pointwise
// kernel for the gate gradients and one GEMM carrying dL/dh to the previous step, then the input
// and weight gradients as GEMMs over all steps and the bias gradients reduced in fp32.
// gru_forward.cu / gru_backward.cu run it all on the current stream under a device guard; nothing synchronizes the host.
// GEMMs: matmul.cuh (cuBLAS; fp32 in TF32 exactly when nn.GRU would use it, decided per call;
// bf16/fp16 accumulate in fp32); pointwise math is fp32 (fp64 for double). Lengths are read on
// the device and clamped into [0, T] (gru_common.cuh). Shape legend and equations: ../fusedgru.h.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <cstdlib>
#include <optional>
#include <string>
#include <tuple>

#include "../fusedgru.h"
#include "matmul.cuh"
#include "gru_common.cuh"
#include "launch.cuh"

namespace fusedgru {
namespace cuda {
namespace gru {

using at::Tensor;

constexpr int kThreads = 256;

// Forward pointwise: one thread per (row i, unit j), all N x H of step t.
template <typename scalar_t, bool kSave>
__global__ void __launch_bounds__(kThreads) gru_forward_pointwise_kernel(GruForwardPointwise p) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t H = p.H;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= p.N * H) return;
  const int64_t i = idx / H, j = idx % H;
  const auto* gi = static_cast<const scalar_t*>(p.gi) + i * p.gi_sn;
  const auto* gh = static_cast<const scalar_t*>(p.gh) + i * p.gh_sn;
  const auto* b = static_cast<const scalar_t*>(p.b_hh);
  const acc_t h0 = static_cast<const scalar_t*>(p.h_in)[i * H + j];
  scalar_t* out = static_cast<scalar_t*>(p.out) + i * p.out_sn + j;
  scalar_t* ws = kSave ? static_cast<scalar_t*>(p.ws) + i * p.ws_sn + j : nullptr;
  scalar_t* h_out = static_cast<scalar_t*>(p.h_out) + i * H + j;
  if (p.lengths != nullptr && p.t >= p.lengths[i]) {  // t in [0, T): as clamped_length's rule
    *h_out = scalar_t(h0);
    *out = scalar_t(0);
    if (kSave) {
#pragma unroll
      for (int g = 0; g < kSavedGates; ++g) ws[g * H] = scalar_t(0);
    }
    return;
  }
  const acc_t r = sigmoid_(acc_t(gi[j]) + acc_t(gh[j]) + acc_t(b[j]));
  const acc_t z = sigmoid_(acc_t(gi[H + j]) + acc_t(gh[p.gh_sg + j]) + acc_t(b[H + j]));
  const acc_t hn = acc_t(gh[2 * p.gh_sg + j]) + acc_t(b[2 * H + j]);
  const acc_t n = tanh(acc_t(gi[2 * H + j]) + r * hn);
  const scalar_t h1 = scalar_t(n + z * (h0 - n));
  *h_out = h1;
  *out = h1;
  if (kSave) {
    ws[0] = scalar_t(r);
    ws[H] = scalar_t(z);
    ws[2 * H] = scalar_t(n);
    ws[3 * H] = scalar_t(hn);
  }
}

// Backward pointwise for the forward step t, row i, unit j.
template <typename scalar_t, bool kHprev, bool kGradWs>
__device__ __forceinline__ void gru_backward_unit(const GruBackwardPointwise& p, int64_t i,
                                                  int64_t j) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t H = p.H;
  const int64_t len = clamped_length(p.lengths, i, p.T);
  scalar_t* dgh = static_cast<scalar_t*>(p.dgh) + i * p.dg_sn + j;
  scalar_t* dgin = static_cast<scalar_t*>(p.dgin) + i * p.dgin_sn + j;
  scalar_t* hp = kHprev ? static_cast<scalar_t*>(p.hprev) + i * p.hp_sn + j : nullptr;
  if (p.t >= len) {
    dgh[0] = dgh[H] = dgh[2 * H] = scalar_t(0);
    *dgin = scalar_t(0);
    if (kHprev) *hp = scalar_t(0);
    return;
  }
  const int64_t tp = p.reverse ? p.t + 1 : p.t - 1;  // the step the forward ran before t
  const bool from_out = tp >= 0 && tp < len;
  const acc_t h0 = from_out
      ? acc_t(static_cast<const scalar_t*>(p.out)[tp * p.out_st + i * p.out_sn + j])
      : acc_t(static_cast<const scalar_t*>(p.hx)[i * H + j]);
  const auto* ws = static_cast<const scalar_t*>(p.ws) + i * p.ws_sn + j;
  scalar_t* dh = static_cast<scalar_t*>(p.dh) + i * H + j;
  const acc_t g = acc_t(*dh) + acc_t(static_cast<const scalar_t*>(p.grad_out)[i * p.go_sn + j]);
  const acc_t r = ws[0], z = ws[H], n = ws[2 * H], hn = ws[3 * H];
  acc_t dn = g * (acc_t(1) - z), dz = g * (h0 - n), dr = 0, dhn = 0;
  if (kGradWs) {
    const auto* gws = static_cast<const scalar_t*>(p.grad_ws) + i * p.gws_sn + j;
    dr = gws[0];
    dz += acc_t(gws[H]);
    dn += acc_t(gws[2 * H]);
    dhn = gws[3 * H];
  }
  const acc_t da_n = dn * (acc_t(1) - n * n);
  const acc_t da_z = dz * z * (acc_t(1) - z);
  const acc_t da_r = (da_n * hn + dr) * r * (acc_t(1) - r);
  dgh[0] = scalar_t(da_r);
  dgh[H] = scalar_t(da_z);
  dgh[2 * H] = scalar_t(da_n * r + dhn);
  *dgin = scalar_t(da_n);
  *dh = scalar_t(g * z);
  if (kHprev) *hp = scalar_t(h0);
}

// One thread per (row i, unit j).
template <typename scalar_t, bool kHprev, bool kGradWs>
__global__ void __launch_bounds__(kThreads) gru_backward_pointwise_kernel(GruBackwardPointwise p) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= p.N * p.H) return;
  gru_backward_unit<scalar_t, kHprev, kGradWs>(p, idx / p.H, idx % p.H);
}

// One GRU step for small batches in a single launch: warp w of block b owns hidden unit
// j = b * kCellWarps + w; for each row it forms the six dot products (gates r, z, n of W_ih x and
// W_hh h) with its lanes striding over the reduction dim (coalesced weight rows), reduces them
// with shuffles, and lane 0 applies the gates. Weights are read from DRAM once (later rows hit
// L1/L2). x: [N, C] row stride x_sn; h, out: [N, H] contiguous; w_ih [3H, C], w_hh [3H, H].
constexpr int kCellWarps = 8;
constexpr int64_t kCellMaxBatch = 32;

template <typename scalar_t>
__global__ void __launch_bounds__(kCellWarps * 32) gru_cell_kernel(
    const scalar_t* __restrict__ x, int64_t x_sn, const scalar_t* __restrict__ h,
    const scalar_t* __restrict__ w_ih, const scalar_t* __restrict__ w_hh,
    const scalar_t* __restrict__ b_ih, const scalar_t* __restrict__ b_hh,
    scalar_t* __restrict__ out, int64_t N, int64_t C, int64_t H) {
  using acc_t = at::opmath_type<scalar_t>;
  const int lane = threadIdx.x % 32;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kCellWarps + threadIdx.x / 32;
  if (j >= H) return;
  for (int64_t n = 0; n < N; ++n) {
    acc_t acc[6] = {0, 0, 0, 0, 0, 0};  // (W_ih x)_{r,z,n}, (W_hh h)_{r,z,n}
    for (int64_t k = lane; k < C; k += 32) {
      const acc_t xv = x[n * x_sn + k];
#pragma unroll
      for (int g = 0; g < 3; ++g) acc[g] += acc_t(w_ih[(g * H + j) * C + k]) * xv;
    }
    for (int64_t k = lane; k < H; k += 32) {
      const acc_t hv = h[n * H + k];
#pragma unroll
      for (int g = 0; g < 3; ++g) acc[3 + g] += acc_t(w_hh[(g * H + j) * H + k]) * hv;
    }
#pragma unroll
    for (int i = 0; i < 6; ++i) {
#pragma unroll
      for (int offset = 16; offset > 0; offset /= 2) {
        acc[i] += __shfl_xor_sync(0xffffffffu, acc[i], offset);
      }
    }
    if (lane == 0) {
      acc_t bi[3] = {0, 0, 0}, bh[3] = {0, 0, 0};
#pragma unroll
      for (int g = 0; g < 3; ++g) {
        if (b_ih != nullptr) bi[g] = b_ih[g * H + j];
        if (b_hh != nullptr) bh[g] = b_hh[g * H + j];
      }
      const acc_t r = sigmoid_(acc[0] + bi[0] + acc[3] + bh[0]);
      const acc_t z = sigmoid_(acc[1] + bi[1] + acc[4] + bh[1]);
      const acc_t nn = tanh(acc[2] + bi[2] + r * (acc[5] + bh[2]));
      const acc_t h0 = h[n * H + j];
      out[n * H + j] = scalar_t(nn + z * (h0 - nn));
    }
  }
}

inline dim3 blocks_for(int64_t n) {
  return dim3(static_cast<unsigned int>((n + kThreads - 1) / kThreads));
}

template <typename Launch>
void forward_pointwise(const GruForwardPointwise& p, const Launch& launch) {
  if (p.N * p.H == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.dtype, "gru_forward_cuda", [&] {
    launch(p.ws != nullptr ? gru_forward_pointwise_kernel<scalar_t, true>
                           : gru_forward_pointwise_kernel<scalar_t, false>,
           blocks_for(p.N * p.H), dim3(kThreads), 0, p);
  });
}

template <typename Launch>
void backward_pointwise(const GruBackwardPointwise& p, const Launch& launch) {
  if (p.N * p.H == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.dtype, "gru_backward_cuda", [&] {
    auto* kernel = p.grad_ws != nullptr ? gru_backward_pointwise_kernel<scalar_t, true, true>
                   : p.hprev != nullptr ? gru_backward_pointwise_kernel<scalar_t, true, false>
                                        : gru_backward_pointwise_kernel<scalar_t, false, false>;
    launch(kernel, blocks_for(p.N * p.H), dim3(kThreads), 0, p);
  });
}

// ---------------------------------------------------------------------------------------------
// Persistent forward: ONE cooperative launch runs all T steps of a layer. Block b owns hidden
// units [b J, b J + J); thread (j, s) = (tid % J, tid / J) keeps W_hh rows (r, z, n) of unit
// b J + j over the k-slice [s KS, s KS + KS) in registers for the whole sequence (W_hh is read
// from DRAM once). Per step: the block stages h_{t-1} [N, H] in shared memory (loads that bypass
// L1), each thread forms its slice's partial dot products for kPBatch rows at a time, the
// partials are summed over the slices (warp shuffles, then over warps in a fixed order:
// deterministic), threads (row, unit) apply the gates and write h_t to the other half of a
// ping-pong buffer, and a grid-wide barrier ends the step. The input projection x W_ih^T + b_ih
// of all steps is one GEMM before the launch.
constexpr int kPThreads = 256;
constexpr int kPWarps = kPThreads / 32;
constexpr int kPBatch = 8;

template <typename acc_t>
constexpr int persistent_max_slice() {
  return sizeof(acc_t) == 8 ? 16 : 32;  // 3 * this many acc_t registers hold the W_hh slice
}

struct GruPersistentParams {
  const void* gi;    // [T, N, 3H] strides (gi_st, gi_sn): x W_ih^T + b_ih
  const void* w_hh;  // [3H, H] contiguous
  const void* b_hh;  // [3H]
  void* hbuf;        // [2, N, H] contiguous: h_{t-1} / h_t ping-pong; [0] = hx on entry
  void* out;         // [T, N, H] strides (out_st, out_sn)
  void* ws;          // [T, N, 4H] strides (ws_st, ws_sn): (r, z, n, W_hn h + b_hn), or nullptr
  const int64_t* lengths;  // [N] or nullptr
  int64_t gi_st, gi_sn, out_st, out_sn, ws_st, ws_sn;
  int64_t T;
  int N, H, J, KS;  // batch, hidden, units per block, slice width (kPThreads / J slices)
  bool reverse;
};

// grid: ceil(H / J) blocks, cooperative. smem: N * H scalar_t (rounded up to 16 bytes), then
// kPWarps * 3 * kPBatch * J acc_t.
template <typename scalar_t>
__global__ void __launch_bounds__(kPThreads, 1) gru_persistent_forward_kernel(GruPersistentParams p) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kMaxSlice = persistent_max_slice<acc_t>();
  const int N = p.N, H = p.H, J = p.J, KS = p.KS;
  const int j = threadIdx.x % J, k0 = (threadIdx.x / J) * KS;
  const int unit = blockIdx.x * J + j;
  acc_t w[3][kMaxSlice];
  const auto* w_hh = static_cast<const scalar_t*>(p.w_hh);
#pragma unroll
  for (int g = 0; g < 3; ++g) {
#pragma unroll
    for (int i = 0; i < kMaxSlice; ++i) {
      const bool in = i < KS && unit < H && k0 + i < H;
      w[g][i] = in ? acc_t(w_hh[(static_cast<int64_t>(g) * H + unit) * H + k0 + i]) : acc_t(0);
    }
  }
  scalar_t* hs = dynamic_smem<scalar_t>();
  acc_t* red = reinterpret_cast<acc_t*>(
      hs + (static_cast<int64_t>(N) * H * sizeof(scalar_t) + 15) / 16 * 16 / sizeof(scalar_t));
  auto* hbuf = static_cast<scalar_t*>(p.hbuf);
  const auto* b_hh = static_cast<const scalar_t*>(p.b_hh);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int64_t step = 0; step < p.T; ++step) {
    const int64_t t = p.reverse ? p.T - 1 - step : step;
    const scalar_t* h_in = hbuf + (step % 2) * N * H;
    scalar_t* h_out = hbuf + ((step + 1) % 2) * N * H;
    for (int e = threadIdx.x; e < N * H; e += kPThreads) hs[e] = load_cg(h_in + e);
    __syncthreads();
    for (int nb = 0; nb < N; nb += kPBatch) {
      acc_t acc[3][kPBatch];
#pragma unroll
      for (int b = 0; b < kPBatch; ++b) {
        acc[0][b] = acc[1][b] = acc[2][b] = acc_t(0);
        if (nb + b < N) {
          const scalar_t* hr = hs + (nb + b) * H + k0;
#pragma unroll
          for (int i = 0; i < kMaxSlice; ++i) {
            if (i < KS && k0 + i < H) {
              const acc_t hv = hr[i];
              acc[0][b] += w[0][i] * hv;
              acc[1][b] += w[1][i] * hv;
              acc[2][b] += w[2][i] * hv;
            }
          }
        }
      }
      // Lanes l and l ^ (J m) hold the same unit's other slices: sum them, then over warps.
      for (int off = J; off < 32; off *= 2) {
#pragma unroll
        for (int b = 0; b < kPBatch; ++b) {
#pragma unroll
          for (int g = 0; g < 3; ++g) acc[g][b] += __shfl_xor_sync(0xffffffffu, acc[g][b], off);
        }
      }
      if (lane < J) {
#pragma unroll
        for (int b = 0; b < kPBatch; ++b) {
#pragma unroll
          for (int g = 0; g < 3; ++g) red[((warp * 3 + g) * kPBatch + b) * J + lane] = acc[g][b];
        }
      }
      __syncthreads();
      if (threadIdx.x < kPBatch * J) {
        const int b = threadIdx.x / J, jj = threadIdx.x % J;
        const int n = nb + b, u = blockIdx.x * J + jj;
        if (n < N && u < H) {
          acc_t gh[3] = {acc_t(0), acc_t(0), acc_t(0)};
          for (int v = 0; v < kPWarps; ++v) {
#pragma unroll
            for (int g = 0; g < 3; ++g) gh[g] += red[((v * 3 + g) * kPBatch + b) * J + jj];
          }
          const acc_t h0 = hs[n * H + u];
          auto* out = static_cast<scalar_t*>(p.out) + t * p.out_st + n * p.out_sn + u;
          auto* ws = p.ws != nullptr
                         ? static_cast<scalar_t*>(p.ws) + t * p.ws_st + n * p.ws_sn + u
                         : nullptr;
          if (p.lengths != nullptr && t >= p.lengths[n]) {
            h_out[n * H + u] = scalar_t(h0);
            *out = scalar_t(0);
            if (ws != nullptr) {
#pragma unroll
              for (int g = 0; g < kSavedGates; ++g) ws[g * H] = scalar_t(0);
            }
          } else {
            const auto* gi = static_cast<const scalar_t*>(p.gi) + t * p.gi_st + n * p.gi_sn;
            const acc_t r = sigmoid_(acc_t(gi[u]) + gh[0] + acc_t(b_hh[u]));
            const acc_t z = sigmoid_(acc_t(gi[H + u]) + gh[1] + acc_t(b_hh[H + u]));
            const acc_t hn = gh[2] + acc_t(b_hh[2 * H + u]);
            const acc_t nn = tanh(acc_t(gi[2 * H + u]) + r * hn);
            const scalar_t h1 = scalar_t(nn + z * (h0 - nn));
            h_out[n * H + u] = h1;
            *out = h1;
            if (ws != nullptr) {
              ws[0] = scalar_t(r);
              ws[H] = scalar_t(z);
              ws[2 * H] = scalar_t(nn);
              ws[3 * H] = scalar_t(hn);
            }
          }
        }
      }
      __syncthreads();  // red is rewritten by the next batch chunk
    }
    grid_sync();
  }
}

struct PersistentPlan {
  int J = 0, KS = 0;
  unsigned int blocks = 0;
  int64_t smem = 0;
};

// The persistent kernel's grid for this layer, or J = 0 when it does not apply: fp64/fp32/
// half/bf16 with W_hh fitting the grid's registers (slice width <= persistent_max_slice), h_{t-1}
// fitting shared memory, every block resident at once, and FUSEDGRU_PERSISTENT not "0".
template <typename scalar_t, typename Launch>
PersistentPlan persistent_plan(int64_t T, int64_t N, int64_t H, const Launch& launch) {
  using acc_t = at::opmath_type<scalar_t>;
  const char* env = std::getenv("FUSEDGRU_PERSISTENT");
  if ((env != nullptr && std::string(env) == "0") || T < 1 || N < 1 || N * H > (1 << 24)) {
    return {};
  }
  const int64_t h_bytes = (N * H * static_cast<int64_t>(sizeof(scalar_t)) + 15) / 16 * 16;
  for (int J = 1; J <= 32; J *= 2) {
    const int64_t KS = (H + kPThreads / J - 1) / (kPThreads / J);
    const int64_t blocks = (H + J - 1) / J;
    if (KS > persistent_max_slice<acc_t>()) continue;
    const int64_t smem = h_bytes + kPWarps * 3 * kPBatch * J * static_cast<int64_t>(sizeof(acc_t));
    if (smem > static_cast<int64_t>(launch.max_smem())) return {};
    if (blocks <= launch.coresident_blocks(gru_persistent_forward_kernel<scalar_t>,
                                           dim3(kPThreads), static_cast<size_t>(smem))) {
      return {J, static_cast<int>(KS), static_cast<unsigned int>(blocks), smem};
    }
  }
  return {};
}

// Persistent backward: ONE cooperative launch runs the reverse-time loop. Block b owns units
// [b J, b J + J); thread (j, s) keeps the column W_hh[:, b J + j] over the slice [s KS, s KS + KS)
// of the 3H gate rows in registers. Per step t (in reverse): the block's gate gradients for its
// units and all rows (the per-step path's pointwise, gru_backward_unit) go to dgh[t]; a grid
// barrier; then the block stages dgh[t] [N, 3H] in shared memory and adds dgh[t] W_hh to dL/dh
// of its own units (slice partials summed as in the forward: deterministic). dL/dh stays in
// global memory, each unit touched by its own block only.
struct GruPersistentBackwardParams {
  GruBackwardPointwise base;  // the pointers of step 0; everything else as in the per-step path
  int64_t go_st, gws_st, ws_st, dgh_st, dgin_st, hp_st;  // step strides (elements)
  const void* w_hh;                                      // [3H, H] contiguous
  int N, H, J, KS;
};

// grid: ceil(H / J) blocks, cooperative. smem: N * 3H scalar_t (rounded up to 16 bytes), then
// kPWarps * kPBatch * J acc_t.
template <typename scalar_t, bool kHprev, bool kGradWs>
__global__ void __launch_bounds__(kPThreads, 1) gru_persistent_backward_kernel(
    GruPersistentBackwardParams p) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kMaxSlice = 3 * persistent_max_slice<acc_t>();
  const int N = p.N, H = p.H, J = p.J, KS = p.KS, G = 3 * H;
  const int j = threadIdx.x % J, k0 = (threadIdx.x / J) * KS;
  const int unit = blockIdx.x * J + j;
  acc_t w[kMaxSlice];
  const auto* w_hh = static_cast<const scalar_t*>(p.w_hh);
#pragma unroll
  for (int i = 0; i < kMaxSlice; ++i) {
    const bool in = i < KS && unit < H && k0 + i < G;
    w[i] = in ? acc_t(w_hh[static_cast<int64_t>(k0 + i) * H + unit]) : acc_t(0);
  }
  scalar_t* gs = dynamic_smem<scalar_t>();
  acc_t* red = reinterpret_cast<acc_t*>(
      gs + (static_cast<int64_t>(N) * G * sizeof(scalar_t) + 15) / 16 * 16 / sizeof(scalar_t));
  auto* dh = static_cast<scalar_t*>(p.base.dh);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int64_t step = 0; step < p.base.T; ++step) {
    const int64_t t = p.base.reverse ? step : p.base.T - 1 - step;
    GruBackwardPointwise q = p.base;
    q.t = t;
    q.grad_out = static_cast<const scalar_t*>(p.base.grad_out) + t * p.go_st;
    q.grad_ws = kGradWs ? static_cast<const scalar_t*>(p.base.grad_ws) + t * p.gws_st : nullptr;
    q.ws = static_cast<const scalar_t*>(p.base.ws) + t * p.ws_st;
    q.dgh = static_cast<scalar_t*>(p.base.dgh) + t * p.dgh_st;
    q.dgin = static_cast<scalar_t*>(p.base.dgin) + t * p.dgin_st;
    q.hprev = kHprev ? static_cast<scalar_t*>(p.base.hprev) + t * p.hp_st : nullptr;
    for (int e = threadIdx.x; e < N * J; e += kPThreads) {
      const int u = blockIdx.x * J + e % J;
      if (u < H) gru_backward_unit<scalar_t, kHprev, kGradWs>(q, e / J, u);
    }
    grid_sync();
    const auto* dg = static_cast<const scalar_t*>(q.dgh);
    for (int e = threadIdx.x; e < N * G; e += kPThreads) {
      gs[e] = load_cg(dg + static_cast<int64_t>(e / G) * q.dg_sn + e % G);
    }
    __syncthreads();
    for (int nb = 0; nb < N; nb += kPBatch) {
      acc_t acc[kPBatch];
#pragma unroll
      for (int b = 0; b < kPBatch; ++b) {
        acc[b] = acc_t(0);
        if (nb + b < N) {
          const scalar_t* gr = gs + (nb + b) * G + k0;
#pragma unroll
          for (int i = 0; i < kMaxSlice; ++i) {
            if (i < KS && k0 + i < G) acc[b] += w[i] * acc_t(gr[i]);
          }
        }
      }
      for (int off = J; off < 32; off *= 2) {
#pragma unroll
        for (int b = 0; b < kPBatch; ++b) acc[b] += __shfl_xor_sync(0xffffffffu, acc[b], off);
      }
      if (lane < J) {
#pragma unroll
        for (int b = 0; b < kPBatch; ++b) red[(warp * kPBatch + b) * J + lane] = acc[b];
      }
      __syncthreads();
      if (threadIdx.x < kPBatch * J) {
        const int b = threadIdx.x / J, jj = threadIdx.x % J;
        const int n = nb + b, u = blockIdx.x * J + jj;
        if (n < N && u < H) {
          acc_t sum = acc_t(dh[n * H + u]);
          for (int v = 0; v < kPWarps; ++v) sum += red[(v * kPBatch + b) * J + jj];
          dh[n * H + u] = scalar_t(sum);
        }
      }
      __syncthreads();
    }
  }
}

template <typename scalar_t>
void (*persistent_backward_kernel(bool hprev, bool grad_ws))(GruPersistentBackwardParams) {
  if (grad_ws) return gru_persistent_backward_kernel<scalar_t, true, true>;
  if (hprev) return gru_persistent_backward_kernel<scalar_t, true, false>;
  return gru_persistent_backward_kernel<scalar_t, false, false>;
}

// As persistent_plan, for the backward: W_hh columns over 3H-row slices, dgh[t] in shared memory.
template <typename scalar_t, typename Launch>
PersistentPlan persistent_backward_plan(int64_t T, int64_t N, int64_t H, bool hprev,
                                        bool grad_ws, const Launch& launch) {
  using acc_t = at::opmath_type<scalar_t>;
  const char* env = std::getenv("FUSEDGRU_PERSISTENT");
  if ((env != nullptr && std::string(env) == "0") || T < 1 || N < 1 || N * H > (1 << 24)) {
    return {};
  }
  const int64_t g_bytes = (N * 3 * H * static_cast<int64_t>(sizeof(scalar_t)) + 15) / 16 * 16;
  for (int J = 1; J <= 32; J *= 2) {
    const int64_t KS = (3 * H + kPThreads / J - 1) / (kPThreads / J);
    const int64_t blocks = (H + J - 1) / J;
    if (KS > 3 * persistent_max_slice<acc_t>()) continue;
    const int64_t smem = g_bytes + kPWarps * kPBatch * J * static_cast<int64_t>(sizeof(acc_t));
    if (smem > static_cast<int64_t>(launch.max_smem())) return {};
    if (blocks <= launch.coresident_blocks(persistent_backward_kernel<scalar_t>(hprev, grad_ws),
                                           dim3(kPThreads), static_cast<size_t>(smem))) {
      return {J, static_cast<int>(KS), static_cast<unsigned int>(blocks), smem};
    }
  }
  return {};
}

template <typename Launch>
std::tuple<Tensor, Tensor, Tensor> forward_impl(
    const Tensor& input, const Tensor& hx, const Tensor& weight_ih, const Tensor& weight_hh,
    const std::optional<Tensor>& bias_ih, const std::optional<Tensor>& bias_hh,
    const std::optional<Tensor>& lengths, bool reverse, bool need_workspace,
    const Launch& launch) {
  check_gru_forward_args(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, lengths);
  const Matmul mm = matmul_for(launch, input.scalar_type());
  const int64_t T = input.size(0), N = input.size(1), H = weight_hh.size(1), G = 3 * H;
  const auto opts = input.options();
  const Tensor x = steps_layout(input);
  const bool bm = is_batch_major(x);
  Tensor output = alloc_steps(bm, T, N, H, opts);
  Tensor workspace =
      need_workspace ? alloc_steps(bm, T, N, kSavedGates * H, opts) : at::empty({0}, opts);
  Tensor h = hx.clone(at::MemoryFormat::Contiguous);
  if (N == 0) return {output, h, workspace};

  const Tensor gi = gru_input_projection(x, bm, weight_ih, bias_ih, mm);
  const Tensor b_hh = bias_hh.has_value() ? bias_hh->contiguous() : at::zeros({G}, opts);
  const Tensor len = lengths.has_value() ? lengths->contiguous() : Tensor();
  const Tensor w_hh_t = weight_hh.t();
  bool persistent = false;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "gru_persistent_forward", [&] {
    const PersistentPlan plan = persistent_plan<scalar_t>(T, N, H, launch);
    if (plan.J == 0) return;
    persistent = true;
    const Tensor w_hh_c = weight_hh.contiguous();
    Tensor hbuf = at::empty({2, N, H}, opts);
    hbuf.select(0, 0).copy_(hx);
    GruPersistentParams q{};
    q.gi = gi.data_ptr();
    q.w_hh = w_hh_c.data_ptr();
    q.b_hh = b_hh.data_ptr();
    q.hbuf = hbuf.data_ptr();
    q.out = output.data_ptr();
    q.ws = need_workspace ? workspace.data_ptr() : nullptr;
    q.lengths = len.defined() ? len.data_ptr<int64_t>() : nullptr;
    q.gi_st = gi.stride(0);
    q.gi_sn = gi.stride(1);
    q.out_st = output.stride(0);
    q.out_sn = output.stride(1);
    q.ws_st = need_workspace ? workspace.stride(0) : 0;
    q.ws_sn = need_workspace ? workspace.stride(1) : 0;
    q.T = T;
    q.N = static_cast<int>(N);
    q.H = static_cast<int>(H);
    q.J = plan.J;
    q.KS = plan.KS;
    q.reverse = reverse;
    launch.cooperative(gru_persistent_forward_kernel<scalar_t>, dim3(plan.blocks),
                       dim3(kPThreads), static_cast<size_t>(plan.smem), q);
    h.copy_(hbuf.select(0, T % 2));
  });
  if (persistent) return {output, h, workspace};

  Tensor gh = at::empty({N, G}, opts);
  GruForwardPointwise p{};
  p.gh = gh.data_ptr();
  p.b_hh = b_hh.data_ptr();
  p.h_in = h.data_ptr();
  p.h_out = h.data_ptr();  // the GEMM has consumed h_{t-1} before the kernel overwrites it
  p.lengths = len.defined() ? len.data_ptr<int64_t>() : nullptr;
  p.N = N;
  p.H = H;
  p.j0 = 0;
  p.j1 = H;
  p.gi_sn = gi.stride(1);
  p.gh_sn = G;
  p.gh_sg = H;
  p.out_sn = output.stride(1);
  p.ws_sn = need_workspace ? workspace.stride(1) : 0;
  p.dtype = input.scalar_type();
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = reverse ? T - 1 - s : s;
    mm(gh, h, w_hh_t, 0.0);
    p.t = t;
    p.gi = step_ptr(gi, t);
    p.out = step_ptr(output, t);
    p.ws = need_workspace ? step_ptr(workspace, t) : nullptr;
    forward_pointwise(p, launch);
  }
  return {output, h, workspace};
}

template <typename Launch>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> backward_impl(
    const Tensor& grad_output, const Tensor& grad_h_n, const std::optional<Tensor>& grad_workspace,
    const Tensor& input, const Tensor& hx, const Tensor& weight_ih, const Tensor& weight_hh,
    const std::optional<Tensor>& lengths, const Tensor& output, const Tensor& workspace,
    bool reverse, bool has_bias, bool need_input_grad, bool need_weight_grad,
    const Launch& launch) {
  check_gru_backward_args(grad_output, grad_h_n, grad_workspace, input, hx, weight_ih,
                          weight_hh, lengths, output, workspace);
  const Matmul mm = matmul_for(launch, input.scalar_type());
  const int64_t T = input.size(0), N = input.size(1), H = weight_hh.size(1);
  const Tensor x = steps_layout(input);
  const bool bm = is_batch_major(x);
  GruBackwardState st = gru_backward_state(grad_output, grad_h_n, grad_workspace, x, bm, hx, H,
                                           lengths, output, workspace, reverse, need_weight_grad);
  bool persistent = false;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "gru_persistent_backward", [&] {
    const bool hprev = st.hprev.defined(), grad_ws = st.gws.defined();
    const PersistentPlan plan =
        N > 0 ? persistent_backward_plan<scalar_t>(T, N, H, hprev, grad_ws, launch)
              : PersistentPlan{};
    if (plan.J == 0) return;
    persistent = true;
    const Tensor w_hh_c = weight_hh.contiguous();
    GruPersistentBackwardParams q{};
    q.base = st.at_step(0);
    q.go_st = st.go.stride(0);
    q.gws_st = grad_ws ? st.gws.stride(0) : 0;
    q.ws_st = st.ws.stride(0);
    q.dgh_st = st.dgh.stride(0);
    q.dgin_st = st.dgin.stride(0);
    q.hp_st = hprev ? st.hprev.stride(0) : 0;
    q.w_hh = w_hh_c.data_ptr();
    q.N = static_cast<int>(N);
    q.H = static_cast<int>(H);
    q.J = plan.J;
    q.KS = plan.KS;
    launch.cooperative(persistent_backward_kernel<scalar_t>(hprev, grad_ws), dim3(plan.blocks),
                       dim3(kPThreads), static_cast<size_t>(plan.smem), q);
  });
  for (int64_t s = 0; s < T && N > 0 && !persistent; ++s) {
    const int64_t t = reverse ? s : T - 1 - s;
    backward_pointwise(st.at_step(t), launch);
    // dL/dh_{t-1} = z * dL/dh_t (left in dh by the kernel) + dgh_t W_hh
    mm(st.dh, st.dgh.select(0, t), weight_hh, 1.0);
  }
  auto [grad_input, gw_ih, gw_hh, gb_ih, gb_hh] =
      gru_backward_gemms(x, bm, weight_ih, st.dgh, st.dgin, st.hprev, has_bias, need_input_grad,
                         need_weight_grad, mm);
  return {grad_input, st.dh, gw_ih, gw_hh, gb_ih, gb_hh};
}

template <typename Launch>
Tensor cell_impl(const Tensor& input, const Tensor& hx, const Tensor& weight_ih,
                 const Tensor& weight_hh, const std::optional<Tensor>& bias_ih,
                 const std::optional<Tensor>& bias_hh, const Launch& launch) {
  TORCH_CHECK(input.dim() == 2, "input must have shape (N, C), got ", input.sizes());
  check_gru_forward_args(input.unsqueeze(0), hx, weight_ih, weight_hh, bias_ih, bias_hh,
                         std::nullopt);
  const int64_t N = input.size(0), C = input.size(1), H = weight_hh.size(1);
  if (N > kCellMaxBatch) {  // large batches: the GEMM path (cuBLAS) wins
    return std::get<1>(forward_impl(input.unsqueeze(0), hx, weight_ih, weight_hh, bias_ih,
                                    bias_hh, std::nullopt, false, false, launch));
  }
  const Tensor x = input.stride(1) == 1 ? input : input.contiguous();
  const Tensor h = hx.contiguous(), w_ih = weight_ih.contiguous(), w_hh = weight_hh.contiguous();
  const Tensor b_ih = bias_ih.has_value() ? bias_ih->contiguous() : Tensor();
  const Tensor b_hh = bias_hh.has_value() ? bias_hh->contiguous() : Tensor();
  Tensor out = at::empty({N, H}, input.options());
  if (N == 0) return out;
  const dim3 grid(static_cast<unsigned int>((H + kCellWarps - 1) / kCellWarps));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "gru_cell_cuda",
                                  [&] {
    launch(gru_cell_kernel<scalar_t>, grid, dim3(kCellWarps * 32), 0,
        x.const_data_ptr<scalar_t>(), x.stride(0), h.const_data_ptr<scalar_t>(),
        w_ih.const_data_ptr<scalar_t>(), w_hh.const_data_ptr<scalar_t>(),
        b_ih.defined() ? b_ih.const_data_ptr<scalar_t>() : nullptr,
        b_hh.defined() ? b_hh.const_data_ptr<scalar_t>() : nullptr,
        out.mutable_data_ptr<scalar_t>(), N, C, H);
  });
  return out;
}

}  // namespace gru
}  // namespace cuda
}  // namespace fusedgru
