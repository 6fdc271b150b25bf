// Host orchestration of the causal depthwise conv1d ops on CUDA (forward, backward, update),
// written over a launcher (launch.cuh) so the tests also run it under the host emulator. The
// kernels: causal_conv1d_fwd_kernels.cuh, causal_conv1d_bwd_kernels.cuh,
// causal_conv1d_update_kernel.cuh, over causal_conv1d_tiles.cuh.
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
#include "causal_conv1d_bwd_kernels.cuh"
#include "causal_conv1d_fwd_kernels.cuh"
#include "causal_conv1d_tiles.cuh"
#include "causal_conv1d_update_kernel.cuh"
#include "launch.cuh"

namespace fusedgru {
namespace cuda {
namespace conv {

// ---------------------------------------------------------------------------------------------
// Host side.

inline unsigned int blocks_for(int64_t n) {
  return static_cast<unsigned int>((n + kThreads - 1) / kThreads);
}

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
    smem = round_up((kLt + S + F) * kC * el, kVecBytes) + (backward ? (kLt + S) * kC * acc : 0) +
           p.W * kC * acc;
    tiles = (p.L + kLt - 1) / kLt;
    cblocks = (p.C + kC - 1) / kC;
  } else {
    smem = (padded_size<kN>(kTile + S + F) +
            (backward ? padded_size<kN>(kTile + S) + kWarps * (p.W + 1) : 0)) *
           acc;
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
  const CausalConvForward f = conv_forward(x_in, weight, bias, initial_state, dilation, activation);
  if (f.y.numel() == 0) return f.y;
  const CausalConvParams& p = f.p;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, f.x.scalar_type(), "causal_conv1d_fwd_cuda", [&] {
        const TilePlan plan = tile_plan<scalar_t>(p, false, launch);
        if (plan.tiled) {
          constexpr int kN = kVecElems<scalar_t>;
          const bool cl = p.channels_last;
          const bool vec = rows_aligned(f.x, kN, cl) && rows_aligned(f.y, kN, cl);
          launch(cl ? fwd_cl_for<scalar_t>(p.W, p.dilation) : fwd_ncl_kernel<scalar_t>, plan.grid,
                 dim3(kThreads), plan.smem, p, vec);
        } else {
          launch(fwd_direct_kernel<scalar_t>, dim3(blocks_for(f.y.numel())), dim3(kThreads), 0, p);
        }
      });
  return f.y;
}

template <typename Launch>
std::tuple<Tensor, Tensor, Tensor, Tensor> bwd_impl(const Tensor& grad_y, const Tensor& x_in,
                                                    const Tensor& weight,
                                                    const std::optional<Tensor>& bias,
                                                    const std::optional<Tensor>& initial_state,
                                                    int64_t dilation, int64_t activation,
                                                    const Launch& launch) {
  const CausalConvBackward st =
      conv_backward(grad_y, x_in, weight, bias, initial_state, dilation, activation);
  const CausalConvBackwardParams& q = st.q;
  const Tensor &x = st.x, &gy = st.gy, &gx = st.gx, &gw = st.gw, &gb = st.gb;
  const bool cl = st.channels_last;
  const int64_t N = x.size(0), C = x.size(1), W = st.w.size(1);
  const int64_t S = (W - 1) * dilation;
  const auto acc_type = st.acc_type;
  if (x.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, x.scalar_type(), "causal_conv1d_bwd_cuda", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          const TilePlan plan = tile_plan<scalar_t>(q.fwd, true, launch);
          if (plan.tiled) {
            constexpr int kN = kVecElems<scalar_t>;
            const bool vec =
                rows_aligned(x, kN, cl) && rows_aligned(gy, kN, cl) && rows_aligned(gx, kN, cl);
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
  return st.result();
}

template <typename Launch>
Tensor update_impl(const Tensor& x, Tensor& conv_state, const Tensor& weight,
                   const std::optional<Tensor>& bias, int64_t dilation, int64_t activation,
                   const Launch& launch) {
  const CausalConvUpdate u = conv_update(x, conv_state, weight, bias, dilation, activation);
  if (u.y.numel() == 0) return u.y;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "causal_conv1d_update_cuda", [&] {
        launch(update_kernel<scalar_t>, dim3(blocks_for(u.p.N * u.p.C)), dim3(kThreads), 0, u.p);
      });
  return u.y;
}

}  // namespace conv
}  // namespace cuda
}  // namespace fusedgru
