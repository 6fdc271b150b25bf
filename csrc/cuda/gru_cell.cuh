// One GRU step for small batches in a single launch (fusedgru::gru_cell, and the streaming
// step of fusedgru.GRU): dot products straight off the weights, no GEMM. Launched by
// gru_host.cuh's cell_impl for N <= kCellMaxBatch. Shape legend: ../fusedgru.h.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include "device_helpers.cuh"

namespace fusedgru {
namespace cuda {
namespace gru {

// One GRU step for small batches in a single launch: warp w of block b owns hidden unit
// j = b * kCellWarps + w; for each row it forms the six dot products (gates r, z, n of W_ih x and
// W_hh h) with its lanes striding over the reduction dim (coalesced weight rows), reduces them
// with shuffles, and lane 0 applies the gates. Weights are read from DRAM once (later rows hit
// L1/L2). x: [N, C] row stride x_sn; h, out: [N, H] contiguous; w_ih [3H, C], w_hh [3H, H].
constexpr int kCellWarps = 8;
constexpr int64_t kCellMaxBatch = 32;

template <typename scalar_t>
__global__ void __launch_bounds__(kCellWarps * 32)
    gru_cell_kernel(const scalar_t* __restrict__ x, int64_t x_sn, const scalar_t* __restrict__ h,
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

}  // namespace gru
}  // namespace cuda
}  // namespace fusedgru
