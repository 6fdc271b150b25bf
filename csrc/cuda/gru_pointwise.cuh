// The GRU's per-step pointwise kernels (one thread per (row i, unit j) of step t) and their
// launchers: the forward computes r, z, n, h_t, the output and the saved activations from the
// step's input projection and h_{t-1} W_hh^T; the backward the gate gradients and z * dL/dh_t.
// The per-step path (gru_host.cuh) runs one per step after the recurrent GEMM; the persistent
// backward (gru_persistent.cuh) reuses gru_backward_unit. Math in fp32 (fp64 for double).
// Shape legend, equations and the params structs: ../fusedgru.h.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include "../fusedgru.h"
#include "device_helpers.cuh"
#include "launch.cuh"

namespace fusedgru {
namespace cuda {
namespace gru {

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
  const acc_t h0 =
      from_out ? acc_t(static_cast<const scalar_t*>(p.out)[tp * p.out_st + i * p.out_sn + j])
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

}  // namespace gru
}  // namespace cuda
}  // namespace fusedgru
