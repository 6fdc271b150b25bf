// The persistent GRU kernels: ONE cooperative launch per layer direction (or per bidirectional
// layer, both directions' blocks in one grid: DirectionsLaunch) runs all T steps, with
// W_hh resident in registers and one grid barrier per step, and the planner that decides when
// they apply (W_hh fits the grid's registers, the staged state fits shared memory, every block
// is resident at once). Shape legend: ../fusedgru.h.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include "../fusedgru.h"
#include "device_helpers.cuh"
#include "gru_pointwise.cuh"
#include "launch.cuh"

namespace fusedgru {
namespace cuda {
namespace gru {

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

// What the persistent forward kernels (FMA here, tensor cores in gru_persistent_tc.cuh) read
// and write.
struct PersistentForwardIO {
  const void* gi;    // [T, N, 3H] strides (gi_st, gi_sn): x W_ih^T + b_ih
  const void* w_hh;  // [3H, H] contiguous
  const void* b_hh;  // [3H]
  void* hbuf;        // [2, N, H (or padded)] contiguous: h_{t-1} / h_t; [0] = hx on entry
  void* out;         // [T, N, H] strides (out_st, out_sn)
  void* ws;          // [T, N, 4H] strides (ws_st, ws_sn): (r, z, n, W_hn h + b_hn), or nullptr
  const int64_t* lengths;  // [N] or nullptr
  int64_t gi_st, gi_sn, out_st, out_sn, ws_st, ws_sn;
  int64_t T;
  int N, H;  // batch, hidden
  bool reverse;
};

// Both directions of a bidirectional layer can share one launch: blocks [0, B) run direction 0
// and blocks [B, 2 B) direction 1 (B = dir_blocks), in lockstep, one grid barrier per step
// serving both (same T, N, H; different weights, outputs and time order). A launch of one
// direction has B = its grid. The kernels read io[direction()] in place (__grid_constant__
// parameters: indexed loads from the constant bank, no copy). IO: what one direction's kernel
// reads and writes (PersistentForwardIO, PersistentBackwardIO).
constexpr int kMaxDirections = 2;  // nn.GRU's D

template <typename IO>
struct DirectionsLaunch {
  IO io[kMaxDirections];
  unsigned int dir_blocks;
  __device__ __forceinline__ int direction() const { return blockIdx.x < dir_blocks ? 0 : 1; }
  // This block's index in its direction's grid.
  __device__ __forceinline__ int block() const {
    return static_cast<int>(blockIdx.x < dir_blocks ? blockIdx.x : blockIdx.x - dir_blocks);
  }
};

// The launch of `directions` directions (io[d]: direction d's), blocks_per_direction each.
template <typename IO>
DirectionsLaunch<IO> directions_launch(const IO* io, int directions,
                                       unsigned int blocks_per_direction) {
  DirectionsLaunch<IO> q{};
  for (int d = 0; d < directions; ++d) q.io[d] = io[d];
  q.dir_blocks = blocks_per_direction;
  return q;
}

using PersistentForwardLaunch = DirectionsLaunch<PersistentForwardIO>;

struct GruPersistentParams : PersistentForwardLaunch {
  int J, KS;  // units per block, slice width (kPThreads / J slices)
};

// grid: ceil(H / J) blocks per direction, cooperative. smem: N * H scalar_t (rounded up to 16
// bytes), then kPWarps * 3 * kPBatch * J acc_t.
template <typename scalar_t>
__global__ void __launch_bounds__(kPThreads, 1)
    gru_persistent_forward_kernel(const __grid_constant__ GruPersistentParams prm) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kMaxSlice = persistent_max_slice<acc_t>();
  const PersistentForwardIO& p = prm.io[prm.direction()];
  const int block = prm.block();
  const int N = p.N, H = p.H, J = prm.J, KS = prm.KS;
  const int j = threadIdx.x % J, k0 = (threadIdx.x / J) * KS;
  const int unit = block * J + j;
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
      hs + round_up(static_cast<int64_t>(N) * H * sizeof(scalar_t), kVecBytes) / sizeof(scalar_t));
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
        const int n = nb + b, u = block * J + jj;
        if (n < N && u < H) {
          acc_t gh[3] = {acc_t(0), acc_t(0), acc_t(0)};
          for (int v = 0; v < kPWarps; ++v) {
#pragma unroll
            for (int g = 0; g < 3; ++g) gh[g] += red[((v * 3 + g) * kPBatch + b) * J + jj];
          }
          const acc_t h0 = hs[n * H + u];
          auto* out = static_cast<scalar_t*>(p.out) + t * p.out_st + n * p.out_sn + u;
          auto* ws = p.ws != nullptr ? static_cast<scalar_t*>(p.ws) + t * p.ws_st + n * p.ws_sn + u
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

// Persistent backward: ONE cooperative launch runs the reverse-time loop. Block b owns units
// [b J, b J + J); thread (j, s) keeps the column W_hh[:, b J + j] over the slice [s KS, s KS + KS)
// of the 3H gate rows in registers. Per step t (in reverse): the block's gate gradients for its
// units and all rows (the per-step path's pointwise, gru_backward_unit) go to dgh[t]; a grid
// barrier; then the block stages dgh[t] [N, 3H] in shared memory and adds dgh[t] W_hh to dL/dh
// of its own units (slice partials summed as in the forward: deterministic). dL/dh stays in
// global memory, each unit touched by its own block only.
// What the persistent backward kernels (FMA here, tensor cores in gru_persistent_tc.cuh) read.
struct PersistentBackwardIO {
  GruBackwardPointwise base;  // the pointers of step 0; everything else as in the per-step path
  int64_t go_st, gws_st, ws_st, dgh_st, dgin_st, hp_st;  // step strides (elements)
  const void* w_hh;                                      // [3H, H] contiguous
  int N, H;
};

using PersistentBackwardLaunch = DirectionsLaunch<PersistentBackwardIO>;

struct GruPersistentBackwardParams : PersistentBackwardLaunch {
  int J, KS;
};

// grid: ceil(H / J) blocks per direction, cooperative. smem: N * 3H scalar_t (rounded up to 16
// bytes), then kPWarps * kPBatch * J acc_t.
template <typename scalar_t, bool kHprev, bool kGradWs>
__global__ void __launch_bounds__(kPThreads, 1)
    gru_persistent_backward_kernel(const __grid_constant__ GruPersistentBackwardParams prm) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kMaxSlice = 3 * persistent_max_slice<acc_t>();
  const PersistentBackwardIO& p = prm.io[prm.direction()];
  const int block = prm.block();
  const int N = p.N, H = p.H, J = prm.J, KS = prm.KS, G = 3 * H;
  const int j = threadIdx.x % J, k0 = (threadIdx.x / J) * KS;
  const int unit = block * J + j;
  acc_t w[kMaxSlice];
  const auto* w_hh = static_cast<const scalar_t*>(p.w_hh);
#pragma unroll
  for (int i = 0; i < kMaxSlice; ++i) {
    const bool in = i < KS && unit < H && k0 + i < G;
    w[i] = in ? acc_t(w_hh[static_cast<int64_t>(k0 + i) * H + unit]) : acc_t(0);
  }
  scalar_t* gs = dynamic_smem<scalar_t>();
  acc_t* red = reinterpret_cast<acc_t*>(
      gs + round_up(static_cast<int64_t>(N) * G * sizeof(scalar_t), kVecBytes) / sizeof(scalar_t));
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
      const int u = block * J + e % J;
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
        const int n = nb + b, u = block * J + jj;
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

// ---------------------------------------------------------------------------------------------
// The planner, one algorithm for both directions. A thread keeps a KS-wide slice of the
// reduction in registers: per unit the W_hh rows (r, z, n) over H columns in the forward, the
// W_hh column over 3H gate rows in the backward. Per step the block stages the vector it reduces
// against ([N, H] h_{t-1} forward, [N, 3H] dgh[t] backward) in shared memory, followed by the
// partial sums of kPWarps warps x kPBatch rows x J units (3 gates forward, 1 backward). The
// smallest J (units per block) whose slices fit the registers and whose grid is co-resident wins.
struct PersistentPlan {
  int J = 0, KS = 0;  // 0: the persistent kernel does not apply (per-step path)
  unsigned int blocks = 0;
  int64_t smem = 0;
};

// N * H above this takes the per-step path: the kernels index rows and units in int, and
// N * 3H * sizeof(double) bytes of staged gradients must stay far below 2^31.
constexpr int64_t kMaxPersistentStates = int64_t{1} << 24;

template <typename scalar_t, typename Launch, typename... KernelArgs>
PersistentPlan persistent_plan(int64_t T, int64_t N, int64_t H, bool backward, int directions,
                               void (*kernel)(KernelArgs...), const Launch& launch) {
  using acc_t = at::opmath_type<scalar_t>;
  if (T < 1 || N < 1 || N * H > kMaxPersistentStates) return {};
  const int64_t reduced = backward ? 3 * H : H;  // the sliced reduction length
  const int64_t max_slice = (backward ? 3 : 1) * persistent_max_slice<acc_t>();
  const int64_t partials = backward ? 1 : 3;  // partial sums per (warp, row, unit)
  const int64_t staged = round_up(N * reduced * static_cast<int64_t>(sizeof(scalar_t)), kVecBytes);
  for (int J = 1; J <= 32; J *= 2) {
    const int64_t KS = (reduced + kPThreads / J - 1) / (kPThreads / J);
    const int64_t blocks = (H + J - 1) / J;
    if (KS > max_slice) continue;
    const int64_t smem =
        staged + kPWarps * partials * kPBatch * J * static_cast<int64_t>(sizeof(acc_t));
    if (smem > static_cast<int64_t>(launch.max_smem())) return {};
    if (directions * blocks <=
        launch.coresident_blocks(kernel, dim3(kPThreads), static_cast<size_t>(smem))) {
      return {J, static_cast<int>(KS), static_cast<unsigned int>(blocks), smem};
    }
  }
  return {};
}

// directions: 2 plans both directions of a bidirectional layer in one grid (blocks stays the
// count per direction).
template <typename scalar_t, typename Launch>
PersistentPlan persistent_forward_plan(int64_t T, int64_t N, int64_t H, const Launch& launch,
                                       int directions = 1) {
  return persistent_plan<scalar_t>(T, N, H, false, directions,
                                   gru_persistent_forward_kernel<scalar_t>, launch);
}

template <typename scalar_t, typename Launch>
PersistentPlan persistent_backward_plan(int64_t T, int64_t N, int64_t H, bool hprev, bool grad_ws,
                                        const Launch& launch, int directions = 1) {
  return persistent_plan<scalar_t>(T, N, H, true, directions,
                                   persistent_backward_kernel<scalar_t>(hprev, grad_ws), launch);
}

// The persistent forward kernels' inputs and outputs from the forward state (gi, b_hh,
// outputs, lengths), W_hh contiguous and the ping-pong buffer.
inline PersistentForwardIO persistent_forward_io(const GruForwardState& st, const at::Tensor& w_hh,
                                                 at::Tensor& hbuf, bool reverse) {
  PersistentForwardIO q{};
  q.gi = st.gi.data_ptr();
  q.w_hh = w_hh.data_ptr();
  q.b_hh = st.b_hh.data_ptr();
  q.hbuf = hbuf.data_ptr();
  q.out = st.output.data_ptr();
  q.ws = st.saves() ? st.workspace.data_ptr() : nullptr;
  q.lengths = st.base.lengths;
  q.gi_st = st.gi.stride(0);
  q.gi_sn = st.gi.stride(1);
  q.out_st = st.output.stride(0);
  q.out_sn = st.output.stride(1);
  q.ws_st = st.saves() ? st.workspace.stride(0) : 0;
  q.ws_sn = st.saves() ? st.workspace.stride(1) : 0;
  q.T = st.T;
  q.N = static_cast<int>(st.N);
  q.H = static_cast<int>(st.H);
  q.reverse = reverse;
  return q;
}

inline GruPersistentParams persistent_forward_params(const PersistentForwardIO* io, int directions,
                                                     const PersistentPlan& plan) {
  GruPersistentParams q{};
  static_cast<PersistentForwardLaunch&>(q) = directions_launch(io, directions, plan.blocks);
  q.J = plan.J;
  q.KS = plan.KS;
  return q;
}

// The persistent backward kernels' inputs from the backward state (step 0's pointers, step
// strides) and W_hh contiguous.
inline PersistentBackwardIO persistent_backward_io(const GruBackwardState& st,
                                                   const at::Tensor& w_hh) {
  PersistentBackwardIO q{};
  q.base = st.at_step(0);
  q.go_st = st.go.stride(0);
  q.gws_st = st.gws.defined() ? st.gws.stride(0) : 0;
  q.ws_st = st.ws.stride(0);
  q.dgh_st = st.dgh.stride(0);
  q.dgin_st = st.dgin.stride(0);
  q.hp_st = st.hprev.defined() ? st.hprev.stride(0) : 0;
  q.w_hh = w_hh.data_ptr();
  q.N = static_cast<int>(st.base.N);
  q.H = static_cast<int>(st.base.H);
  return q;
}

inline GruPersistentBackwardParams persistent_backward_params(const PersistentBackwardIO* io,
                                                              int directions,
                                                              const PersistentPlan& plan) {
  GruPersistentBackwardParams q{};
  static_cast<PersistentBackwardLaunch&>(q) = directions_launch(io, directions, plan.blocks);
  q.J = plan.J;
  q.KS = plan.KS;
  return q;
}

}  // namespace gru
}  // namespace cuda
}  // namespace fusedgru
