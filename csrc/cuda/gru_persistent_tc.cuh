// The persistent GRU forward on tensor cores (bf16, fp16; fp32 in TF32 when the RNN's fp32
// precision allows it, as nn.GRU): ONE cooperative launch runs all T steps of a layer direction
// (or of both directions of a bidirectional layer, DirectionsLaunch in gru_persistent.cuh),
// with W_hh resident in registers as mma.sync A fragments (mma.cuh) and one grid barrier per
// step; and its planner. Shape legend: ../fusedgru.h. The FMA kernel (gru_persistent.cuh) keeps
// fp64 and strict fp32, and any shape this one does not plan.
//
// Per step gh^T [3H, N] = W_hh [3H, H] h_{t-1}^T [H, N]: the MMA's M is gate rows (W_hh, 16 per
// tile), its N the batch (8 rows per tile: a batch of 1 pads to 8, not 16), its K hidden units.
//   - Block b owns units [b J, b J + J): its local gate rows rho = g J + j (gate g of unit
//     b J + j) form RT = ceil(3 J / 16) row tiles. Warp w = (ks, rt) = (w / RT, w % RT) keeps row
//     tile rt over k-tiles [ks KTW, ks KTW + KTW) of the KT = Kp / K k-tiles in registers (KTW <=
//     kTcMaxKTiles), for the whole sequence: W_hh is read from DRAM once.
//   - Per step the block stages h_{t-1} [N, Kp] (Kp = H padded to K, zero columns) into shared
//     memory with 16-byte loads that bypass L1, rows hs_ld apart: hs_ld * sizeof / 4 = 4 (mod 32)
//     words, so the B fragments' 32-bit loads (8 rows x 4 words per warp) hit 32 banks.
//   - The batch runs in chunks of 8 kNT rows (kNT: a compile-time bucket of N): each warp
//     accumulates its k-range for kNT batch tiles, then writes the partial D to shared memory
//     as part[ks][batch row][gate row] (gate rows R16p = 16 RT + 4 apart: conflict-free), and
//     the gate pass, over all threads of the block, sums the KS partials in a fixed order
//     (deterministic), adds gi, b_hh and applies the gates as gru_pointwise.cuh does.
//   - gi of the next step's first chunk and the lengths do not depend on h_{t-1}: they are
//     loaded before the grid barrier (b_hh, read-only, stays in L1).
// Products of bf16/fp16 (or TF32) values are exact in fp32, so the contract is the FMA kernel's:
// fp32 accumulation of the 16-bit (or TF32-rounded) operands; the gate math in fp32.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <utility>

#include "../fusedgru.h"
#include "device_helpers.cuh"
#include "gru_persistent.cuh"
#include "gru_pointwise.cuh"
#include "launch.cuh"
#include "matmul.cuh"
#include "mma.cuh"

namespace fusedgru {
namespace cuda {
namespace gru {

constexpr int kTcTileRows = 16;    // gate rows per MMA tile (its M)
constexpr int kTcTileBatch = 8;    // batch rows per MMA tile (its N)
constexpr int kTcMaxWarps = 16;    // per block: row tiles x k splits
constexpr int kTcKTiles = 12;      // A fragments a warp keeps by preference: 4 registers each
constexpr int kTcItems = 2;        // gate-pass items (batch row, unit) per thread and chunk
constexpr int kTcRowPad = 4;       // words between the partials' batch rows, mod 32
constexpr int kTcStageWords = 32;  // staged rows: a multiple of this many words, plus 4
constexpr int kTcMaxThreads = kTcMaxWarps * 32;
// The most A fragments a warp can keep: kTcKTiles for 16-bit types; 16 for TF32, whose k-tiles
// hold half as many k (8): W_hh of H = 1024 in TF32 (3 M values) then fits 128 blocks of 16
// warps (J = 8: 2 row tiles x 8 k splits x 16 k-tiles), 64 of the 128 registers a thread has
// at 512 threads (__launch_bounds__ below; ptxas: no spills, tests/test_cuda_build.py).
template <typename scalar_t>
constexpr int kTcMaxKTiles = std::is_same_v<scalar_t, float> ? 16 : kTcKTiles;

// A tensor-core kernel's layout (the planner's choice below): the reduction length padded to the
// MMA's K, units per block, row tiles, k splits (warps = RT KS), k-tiles per warp (<=
// kTcMaxKTiles), the staged row stride (elements) and staged rows (N rounded up to the chunk).
struct TcLayout {
  int Kp, J, RT, KS, KTW, hs_ld, rows;
};

// One direction or both (PersistentForwardLaunch); each direction's hbuf: [2, N, Kp], zero padding.
struct GruTcForwardParams : PersistentForwardLaunch, TcLayout {};

// A 32-bit word of shared memory holding two 16-bit elements.
__device__ __forceinline__ uint32_t load_u32(const void* p) {
#ifdef FUSEDGRU_CUDA_EMU
  uint32_t u;
  memcpy(&u, p, sizeof(u));
  return u;
#else
  return *static_cast<const uint32_t*>(p);
#endif
}

// W_hh's row for block b's local gate row rho (gate rho / J of unit b J + rho % J), or -1 for
// a padding row.
__device__ __forceinline__ int64_t tc_weight_row(int b, int rho, int J, int H) {
  const int unit = b * J + rho % J;
  return rho < 3 * J && unit < H ? static_cast<int64_t>(rho / J) * H + unit : -1;
}

// This warp's A fragments: local rows rt 16 + g and rt 16 + g + 8 of its row tile, k-tiles
// kt0, kt0 + 1, ... (kTcMaxKTiles of them); at(row, k) gives the element (zero when padding).
template <typename scalar_t, typename At>
__device__ __forceinline__ void load_a_fragments(uint32_t (&a)[kTcMaxKTiles<scalar_t>][4], int rt,
                                                 int kt0, const At& at) {
  using M = MmaOf<scalar_t>;
  const int lane = threadIdx.x % 32, g = lane / 4, q = lane % 4;
  const int r0 = rt * kTcTileRows + g, r1 = r0 + 8;
#pragma unroll
  for (int kt = 0; kt < kTcMaxKTiles<scalar_t>; ++kt) {
    const int k0 = (kt0 + kt) * M::kK;
    if constexpr (M::kPerReg == 2) {  // k pairs (2q, 2q + 1) and (2q + 8, 2q + 9)
      a[kt][0] = M::reg(at(r0, k0 + 2 * q), at(r0, k0 + 2 * q + 1));
      a[kt][1] = M::reg(at(r1, k0 + 2 * q), at(r1, k0 + 2 * q + 1));
      a[kt][2] = M::reg(at(r0, k0 + 2 * q + 8), at(r0, k0 + 2 * q + 9));
      a[kt][3] = M::reg(at(r1, k0 + 2 * q + 8), at(r1, k0 + 2 * q + 9));
    } else {  // tf32: k = q and q + 4
      a[kt][0] = M::reg(at(r0, k0 + q), scalar_t(0));
      a[kt][1] = M::reg(at(r1, k0 + q), scalar_t(0));
      a[kt][2] = M::reg(at(r0, k0 + q + 4), scalar_t(0));
      a[kt][3] = M::reg(at(r1, k0 + q + 4), scalar_t(0));
    }
  }
}

// The warp's partial D for kNT batch tiles from staged row nb on: its ktiles A fragments times
// the staged vectors (B: staged row = batch column, k along the row), then written to
// part[ks][batch row][local row] (rows R16p apart).
template <typename scalar_t, int kNT>
__device__ __forceinline__ void tc_partials(const uint32_t (&a)[kTcMaxKTiles<scalar_t>][4],
                                            const scalar_t* hs, int hs_ld, int nb, int kt0,
                                            int ktiles, float* part, int ks, int rt, int R16p) {
  using M = MmaOf<scalar_t>;
  constexpr int kChunk = kNT * kTcTileBatch;
  const int lane = threadIdx.x % 32, g = lane / 4, q = lane % 4;
  float acc[kNT][4];
#pragma unroll
  for (int nt = 0; nt < kNT; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.f;
#pragma unroll
  for (int kt = 0; kt < kTcMaxKTiles<scalar_t>; ++kt) {
    if (kt < ktiles) {  // warp-uniform
      const int k0 = (kt0 + kt) * M::kK;
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) {
        const scalar_t* hr = hs + (nb + nt * kTcTileBatch + g) * hs_ld + k0;
        uint32_t b[2];
        if constexpr (M::kPerReg == 2) {
          b[0] = load_u32(hr + 2 * q);
          b[1] = load_u32(hr + 2 * q + 8);
        } else {
          b[0] = M::reg(hr[q], 0.f);
          b[1] = M::reg(hr[q + 4], 0.f);
        }
        mma_16x8<scalar_t>(acc[nt], a[kt], b, acc[nt]);
      }
    }
  }
#pragma unroll
  for (int nt = 0; nt < kNT; ++nt) {
    float* pc = part + (ks * kChunk + nt * kTcTileBatch + 2 * q) * R16p + rt * kTcTileRows + g;
    pc[0] = acc[nt][0];
    pc[R16p] = acc[nt][1];
    pc[8] = acc[nt][2];
    pc[R16p + 8] = acc[nt][3];
  }
}

// The staged rows' shared memory, then the partials after it (16-byte aligned).
template <typename scalar_t>
__device__ __forceinline__ float* partials_after(scalar_t* hs, int rows, int hs_ld) {
  return reinterpret_cast<float*>(
      hs + round_up(static_cast<int64_t>(rows) * hs_ld * sizeof(scalar_t), kVecBytes) /
               sizeof(scalar_t));
}

// grid: ceil(H / J) blocks of 32 RT KS threads, cooperative. smem: rows x hs_ld scalar_t
// (rounded up to 16 bytes), then KS x 8 kNT x (16 RT + 4) float partials.
template <typename scalar_t, int kNT>
__global__ void __launch_bounds__(kTcMaxThreads, 1)
    gru_persistent_tc_forward_kernel(const __grid_constant__ GruTcForwardParams p) {
  const PersistentForwardIO& io = p.io[p.direction()];
  const int block = p.block();
  using M = MmaOf<scalar_t>;
  constexpr int K = M::kK, kChunk = kNT * kTcTileBatch, kVec = kVecElems<scalar_t>;
  const int N = io.N, H = io.H, J = p.J, tid = threadIdx.x, threads = blockDim.x;
  const int warp = tid / 32, rt = warp % p.RT, ks = warp / p.RT;
  const int kt0 = ks * p.KTW, ktiles = min(p.KTW, p.Kp / K - kt0);

  // This warp's A fragments: local gate rows of W_hh, k = hidden units.
  uint32_t a[kTcMaxKTiles<scalar_t>][4];
  {
    const auto* w = static_cast<const scalar_t*>(io.w_hh);
    load_a_fragments<scalar_t>(a, rt, kt0, [&](int rho, int k) {
      const int64_t row = tc_weight_row(block, rho, J, H);
      return row >= 0 && k < H ? w[row * H + k] : scalar_t(0);
    });
  }

  scalar_t* hs = dynamic_smem<scalar_t>();
  const int R16p = p.RT * kTcTileRows + kTcRowPad;
  float* part = partials_after(hs, p.rows, p.hs_ld);
  // Staged rows [N, rows) are never loaded: zero once, so padding batch columns stay finite.
  for (int e = tid; e < (p.rows - N) * p.hs_ld; e += threads) hs[N * p.hs_ld + e] = scalar_t(0);

  // The gate pass: item i of this thread is e = tid + i threads of a chunk: batch row e / J of
  // the chunk, unit b J + e % J (the same units every chunk and step).
  const auto* b_hh = static_cast<const scalar_t*>(io.b_hh);  // read-only: L1 keeps it
  float gin[kTcItems][3];
  bool live[kTcItems];
  // gi of the chunk at batch row nb of step t for this thread's items, and which are active.
  const auto fetch = [&](int64_t t, int nb) {
#pragma unroll
    for (int i = 0; i < kTcItems; ++i) {
      const int e = tid + i * threads, n = nb + e / J, u = block * J + e % J;
      live[i] = e < kChunk * J && n < N && u < H && t < clamped_length(io.lengths, n, io.T);
      const auto* gi = static_cast<const scalar_t*>(io.gi) + t * io.gi_st + n * io.gi_sn + u;
#pragma unroll
      for (int gate = 0; gate < 3; ++gate) gin[i][gate] = live[i] ? float(gi[gate * H]) : 0.f;
    }
  };

  auto* hbuf = static_cast<scalar_t*>(io.hbuf);
  const int64_t plane = static_cast<int64_t>(N) * p.Kp;
  fetch(io.reverse ? io.T - 1 : 0, 0);
  for (int64_t step = 0; step < io.T; ++step) {
    const int64_t t = io.reverse ? io.T - 1 - step : step;
    const scalar_t* h_in = hbuf + (step % 2) * plane;
    scalar_t* h_out = hbuf + ((step + 1) % 2) * plane;
    const int vecs = p.Kp / kVec;
    for (int e = tid; e < N * vecs; e += threads) {
      const int n = e / vecs, c = (e % vecs) * kVec;
      const uint4 v =
          __ldcg(reinterpret_cast<const uint4*>(h_in + static_cast<int64_t>(n) * p.Kp + c));
      *reinterpret_cast<uint4*>(hs + n * p.hs_ld + c) = v;
    }
    __syncthreads();
    for (int nb = 0; nb < N; nb += kChunk) {
      if (nb > 0) fetch(t, nb);
      tc_partials<scalar_t, kNT>(a, hs, p.hs_ld, nb, kt0, ktiles, part, ks, rt, R16p);
      __syncthreads();
#pragma unroll
      for (int i = 0; i < kTcItems; ++i) {
        const int e = tid + i * threads, nl = e / J, j = e % J, n = nb + nl;
        const int u = block * J + j;
        if (e >= kChunk * J || n >= N || u >= H) continue;
        float gh[3] = {0.f, 0.f, 0.f};
        for (int s = 0; s < p.KS; ++s) {
#pragma unroll
          for (int gate = 0; gate < 3; ++gate)
            gh[gate] += part[(s * kChunk + nl) * R16p + gate * J + j];
        }
        const scalar_t h0 = hs[n * p.hs_ld + u];
        auto* out = static_cast<scalar_t*>(io.out) + t * io.out_st + n * io.out_sn + u;
        auto* ws = io.ws != nullptr
                       ? static_cast<scalar_t*>(io.ws) + t * io.ws_st + n * io.ws_sn + u
                       : nullptr;
        if (!live[i]) {
          h_out[n * p.Kp + u] = h0;
          *out = scalar_t(0);
          if (ws != nullptr) {
#pragma unroll
            for (int sg = 0; sg < kSavedGates; ++sg) ws[sg * H] = scalar_t(0);
          }
          continue;
        }
        const float r = sigmoid_(gin[i][0] + gh[0] + float(b_hh[u]));
        const float z = sigmoid_(gin[i][1] + gh[1] + float(b_hh[H + u]));
        const float hn = gh[2] + float(b_hh[2 * H + u]);
        const float nn = tanh(gin[i][2] + r * hn);
        const scalar_t h1 = scalar_t(nn + z * (float(h0) - nn));
        h_out[n * p.Kp + u] = h1;
        *out = h1;
        if (ws != nullptr) {
          ws[0] = scalar_t(r);
          ws[H] = scalar_t(z);
          ws[2 * H] = scalar_t(nn);
          ws[3 * H] = scalar_t(hn);
        }
      }
      if (nb + kChunk < N) __syncthreads();  // part is rewritten by the next chunk
    }
    if (step + 1 < io.T) fetch(io.reverse ? t - 1 : t + 1, 0);
    grid_sync();
  }
}

// The kernel for a batch bucket: chunks of 8, 16 or 32 rows.
template <typename scalar_t>
void (*tc_forward_kernel(int nt))(GruTcForwardParams) {
  if (nt == 1) return gru_persistent_tc_forward_kernel<scalar_t, 1>;
  if (nt == 2) return gru_persistent_tc_forward_kernel<scalar_t, 2>;
  return gru_persistent_tc_forward_kernel<scalar_t, 4>;
}

// ---------------------------------------------------------------------------------------------
// The persistent backward on tensor cores: per step t (in reverse) the block's gate gradients
// for its units and all rows (gru_backward_unit, as the FMA kernel), a grid barrier, then
// dL/dh_{t-1} += dgh_t W_hh for its units as D^T [H, N] = W_hh^T [H, 3H] dgh_t^T [3H, N]: the
// MMA's M is the block's units (RT = ceil(J / 16) row tiles of W_hh^T, k = the 3H gate rows, in
// registers), its N the batch; dgh_t [N, 3H] staged like the forward's h_{t-1} (16-byte loads
// when its rows are 16-byte aligned), the k splits' partials summed in a fixed order and added to
// dh, which only this block touches for its units. Double backward (grad of the saved
// activations) stays on the FMA kernel.
struct GruTcBackwardParams : PersistentBackwardLaunch, TcLayout {
  bool vec_stage;  // every direction's dgh rows 16-byte aligned: staged with 16-byte loads
};

// grid: ceil(H / J) blocks of 32 RT KS threads, cooperative. smem: rows x hs_ld scalar_t
// (rounded up to 16 bytes), then KS x 8 kNT x (16 RT + 4) float partials.
template <typename scalar_t, int kNT, bool kHprev>
__global__ void __launch_bounds__(kTcMaxThreads, 1)
    gru_persistent_tc_backward_kernel(const __grid_constant__ GruTcBackwardParams p) {
  const PersistentBackwardIO& io = p.io[p.direction()];
  using M = MmaOf<scalar_t>;
  constexpr int K = M::kK, kChunk = kNT * kTcTileBatch, kVec = kVecElems<scalar_t>;
  const int N = io.N, H = io.H, G = 3 * H, J = p.J, tid = threadIdx.x, threads = blockDim.x;
  const int warp = tid / 32, rt = warp % p.RT, ks = warp / p.RT;
  const int kt0 = ks * p.KTW, ktiles = min(p.KTW, p.Kp / K - kt0);
  const int u0 = p.block() * J;

  // A fragments of W_hh^T: local rows = the block's units, k = gate rows.
  uint32_t a[kTcMaxKTiles<scalar_t>][4];
  {
    const auto* w = static_cast<const scalar_t*>(io.w_hh);
    load_a_fragments<scalar_t>(a, rt, kt0, [&](int rho, int k) {
      const int u = u0 + rho;
      return rho < J && u < H && k < G ? w[static_cast<int64_t>(k) * H + u] : scalar_t(0);
    });
  }
  scalar_t* hs = dynamic_smem<scalar_t>();
  const int R16p = p.RT * kTcTileRows + kTcRowPad;
  float* part = partials_after(hs, p.rows, p.hs_ld);
  // Never staged: rows [N, rows), and columns [3H, Kp) of rows [0, N). Zero once.
  for (int e = tid; e < p.rows * p.hs_ld; e += threads) {
    if (e / p.hs_ld >= N || e % p.hs_ld >= G) hs[e] = scalar_t(0);
  }
  auto* dh = static_cast<scalar_t*>(io.base.dh);
  for (int64_t step = 0; step < io.base.T; ++step) {
    const int64_t t = io.base.reverse ? step : io.base.T - 1 - step;
    GruBackwardPointwise q = io.base;
    q.t = t;
    q.grad_out = static_cast<const scalar_t*>(io.base.grad_out) + t * io.go_st;
    q.grad_ws = nullptr;
    q.ws = static_cast<const scalar_t*>(io.base.ws) + t * io.ws_st;
    q.dgh = static_cast<scalar_t*>(io.base.dgh) + t * io.dgh_st;
    q.dgin = static_cast<scalar_t*>(io.base.dgin) + t * io.dgin_st;
    q.hprev = kHprev ? static_cast<scalar_t*>(io.base.hprev) + t * io.hp_st : nullptr;
    for (int e = tid; e < N * J; e += threads) {
      const int u = u0 + e % J;
      if (u < H) gru_backward_unit<scalar_t, kHprev, false>(q, e / J, u);
    }
    grid_sync();
    const auto* dg = static_cast<const scalar_t*>(q.dgh);
    if (p.vec_stage) {
      const int vecs = G / kVec;
      for (int e = tid; e < N * vecs; e += threads) {
        const int n = e / vecs, c = (e % vecs) * kVec;
        const uint4 v = __ldcg(reinterpret_cast<const uint4*>(dg + n * q.dg_sn + c));
        *reinterpret_cast<uint4*>(hs + n * p.hs_ld + c) = v;
      }
    } else {
      for (int e = tid; e < N * G; e += threads) {
        hs[(e / G) * p.hs_ld + e % G] = load_cg(dg + static_cast<int64_t>(e / G) * q.dg_sn + e % G);
      }
    }
    __syncthreads();
    for (int nb = 0; nb < N; nb += kChunk) {
      tc_partials<scalar_t, kNT>(a, hs, p.hs_ld, nb, kt0, ktiles, part, ks, rt, R16p);
      __syncthreads();
      for (int e = tid; e < kChunk * J; e += threads) {
        const int nl = e / J, j = e % J, n = nb + nl, u = u0 + j;
        if (n >= N || u >= H) continue;
        float sum = float(dh[n * H + u]);
        for (int sp = 0; sp < p.KS; ++sp) sum += part[(sp * kChunk + nl) * R16p + j];
        dh[n * H + u] = scalar_t(sum);
      }
      __syncthreads();  // part is rewritten by the next chunk; dh is read by the next step
    }
  }
}

// The backward kernel for a batch bucket and whether h_{t-1} is saved for the W_hh gradient.
template <typename scalar_t>
void (*tc_backward_kernel(int nt, bool hprev))(GruTcBackwardParams) {
  if (hprev) {
    if (nt == 1) return gru_persistent_tc_backward_kernel<scalar_t, 1, true>;
    if (nt == 2) return gru_persistent_tc_backward_kernel<scalar_t, 2, true>;
    return gru_persistent_tc_backward_kernel<scalar_t, 4, true>;
  }
  if (nt == 1) return gru_persistent_tc_backward_kernel<scalar_t, 1, false>;
  if (nt == 2) return gru_persistent_tc_backward_kernel<scalar_t, 2, false>;
  return gru_persistent_tc_backward_kernel<scalar_t, 4, false>;
}

// ---------------------------------------------------------------------------------------------
// The tensor-core planner, one algorithm for both directions. The reduction runs over Kp = H
// (forward) or 3H (backward) rounded up to the MMA's K, KT = Kp / K k-tiles; a block's rows are
// the 3 J gate rows of its units (forward) or its J units (backward), RT = ceil(rows / 16) row
// tiles. For J = 8, 16, 32, 64 units per block (most blocks first: each block's share of the
// per-step work is smallest): KS k splits so that each warp keeps at most kTcKTiles k-tiles
// (kTcMaxKTiles where that would need more than kTcMaxWarps warps), and so that a block has about
// kTcTargetWarps warps (shorter dependent MMA chains); the batch chunk 8 kNT for the smallest kNT
// in {1, 2, 4} covering N (the forward: fewer if its gate pass would need more than kTcItems items
// per thread). The first J whose grid is co-resident and whose shared memory fits wins; none: the
// FMA kernel's planner decides.
struct TcPlan : TcLayout {  // J == 0: no tensor-core plan
  int NT = 0, threads = 0;
  unsigned int blocks = 0;
  int64_t smem = 0;
};

constexpr int kTcTargetWarps = 8;

template <typename scalar_t, typename Launch>
TcPlan tc_plan(int64_t T, int64_t N, int64_t H, bool backward, bool hprev, int directions,
               const Launch& launch) {
  if constexpr (!kHasMma<scalar_t>) {
    return {};
  } else {
    using M = MmaOf<scalar_t>;
    // fp32 on tensor cores is TF32: only when nn.GRU would take TF32 (matmul.cuh).
    if ((std::is_same_v<scalar_t, float> && !rnn_allows_tf32()) || T < 1 || N < 1 ||
        N * H > kMaxPersistentStates || launch.compute_major() < 8) {
      return {};
    }
    const int64_t Kp = round_up((backward ? 3 : 1) * H, static_cast<int64_t>(M::kK));
    const int64_t KT = Kp / M::kK;
    const int64_t words = Kp * static_cast<int64_t>(sizeof(scalar_t)) / 4;
    const int64_t hs_ld =
        (round_up(words, kTcStageWords) + kTcRowPad) * 4 / static_cast<int64_t>(sizeof(scalar_t));
    for (int64_t J = 8; J <= 64; J *= 2) {
      const int64_t RT = ((backward ? 1 : 3) * J + kTcTileRows - 1) / kTcTileRows;
      // k splits of at most kTcKTiles k-tiles per warp, or, where that needs more than
      // kTcMaxWarps warps, of up to kTcMaxKTiles (TF32 at large H).
      const auto splits = [&](int64_t ktiles) {
        const int64_t ks = std::max<int64_t>((KT + ktiles - 1) / ktiles,
                                             std::max<int64_t>(1, kTcTargetWarps / RT));
        const int64_t ktw = (KT + std::min(ks, KT) - 1) / std::min(ks, KT);
        return std::make_pair((KT + ktw - 1) / ktw, ktw);  // no empty split
      };
      auto [KS, KTW] = splits(kTcKTiles);
      if (32 * RT * KS > kTcMaxThreads) std::tie(KS, KTW) = splits(kTcMaxKTiles<scalar_t>);
      const int64_t threads = 32 * RT * KS;
      if (threads > kTcMaxThreads) continue;
      int64_t NT = N <= 8 ? 1 : (N <= 16 ? 2 : 4);
      while (!backward && NT > 1 && NT * kTcTileBatch * J > kTcItems * threads) NT /= 2;
      if (!backward && NT * kTcTileBatch * J > kTcItems * threads) continue;
      const int64_t chunk = NT * kTcTileBatch, rows = round_up(N, chunk);
      const int64_t smem =
          round_up(rows * hs_ld * static_cast<int64_t>(sizeof(scalar_t)), kVecBytes) +
          KS * chunk * (RT * kTcTileRows + kTcRowPad) * static_cast<int64_t>(sizeof(float));
      if (smem > static_cast<int64_t>(launch.max_smem())) continue;
      const int64_t blocks = (H + J - 1) / J;
      const dim3 block(static_cast<unsigned int>(threads));
      const int64_t fit =
          backward
              ? launch.coresident_blocks(tc_backward_kernel<scalar_t>(static_cast<int>(NT), hprev),
                                         block, static_cast<size_t>(smem))
              : launch.coresident_blocks(tc_forward_kernel<scalar_t>(static_cast<int>(NT)), block,
                                         static_cast<size_t>(smem));
      if (directions * blocks <= fit) {
        TcPlan plan{};
        plan.J = static_cast<int>(J);
        plan.RT = static_cast<int>(RT);
        plan.KS = static_cast<int>(KS);
        plan.KTW = static_cast<int>(KTW);
        plan.NT = static_cast<int>(NT);
        plan.threads = static_cast<int>(threads);
        plan.hs_ld = static_cast<int>(hs_ld);
        plan.rows = static_cast<int>(rows);
        plan.Kp = static_cast<int>(Kp);
        plan.blocks = static_cast<unsigned int>(blocks);
        plan.smem = smem;
        return plan;
      }
    }
    return {};
  }
}

// directions: 2 plans both directions of a bidirectional layer in one grid (blocks stays the
// count per direction).
template <typename scalar_t, typename Launch>
TcPlan tc_forward_plan(int64_t T, int64_t N, int64_t H, const Launch& launch, int directions = 1) {
  return tc_plan<scalar_t>(T, N, H, false, false, directions, launch);
}

// grad_ws (double backward): the FMA kernel's; no tensor-core plan.
template <typename scalar_t, typename Launch>
TcPlan tc_backward_plan(int64_t T, int64_t N, int64_t H, bool hprev, bool grad_ws,
                        const Launch& launch, int directions = 1) {
  return grad_ws ? TcPlan{} : tc_plan<scalar_t>(T, N, H, true, hprev, directions, launch);
}

// The tensor-core kernels' parameters: the persistent kernels' inputs and outputs (io[d] of
// direction d), the plan.
inline GruTcForwardParams tc_forward_params(const PersistentForwardIO* io, int directions,
                                            const TcPlan& plan) {
  GruTcForwardParams q{};
  static_cast<PersistentForwardLaunch&>(q) = directions_launch(io, directions, plan.blocks);
  static_cast<TcLayout&>(q) = plan;
  return q;
}

// st[d], io[d]: direction d's backward state and kernel inputs.
inline GruTcBackwardParams tc_backward_params(const GruBackwardState* const* st,
                                              const PersistentBackwardIO* io, int directions,
                                              const TcPlan& plan) {
  GruTcBackwardParams q{};
  static_cast<PersistentBackwardLaunch&>(q) = directions_launch(io, directions, plan.blocks);
  static_cast<TcLayout&>(q) = plan;
  q.vec_stage = true;
  for (int d = 0; d < directions; ++d) {
    const at::Tensor& dgh = st[d]->dgh;
    const int64_t bytes = static_cast<int64_t>(at::elementSize(dgh.scalar_type()));
    q.vec_stage = q.vec_stage && reinterpret_cast<uintptr_t>(dgh.data_ptr()) % kVecBytes == 0 &&
                  dgh.stride(1) * bytes % kVecBytes == 0 &&
                  dgh.stride(0) * bytes % kVecBytes == 0 &&
                  3 * st[d]->base.H * bytes % kVecBytes == 0;
  }
  return q;
}

}  // namespace gru
}  // namespace cuda
}  // namespace fusedgru
