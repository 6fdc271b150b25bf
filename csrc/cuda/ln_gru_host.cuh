// Host orchestration of the layer-normalized GRU ops on CUDA (equations: ../fusedgru.h), over a
// launcher (launch.cuh) so the tests also run it under the emulator. Kernels: ln_gru_pointwise.cuh.
//
// Forward, per layer and direction: the input projection and its normalization for all steps
// (ln_gru_common.cpp), then per step one GEMM (h_{t-1} W_hh^T, ATen/cuBLAS) and ONE fused kernel
// with a block per batch row: the row's mean/variance over its 3H recurrent pre-activations
// (block reduction), the normalization and the gates. Backward per step: one fused kernel per
// row (gate gradients, then the gradient through the normalization with the row's two
// reductions) and one GEMM carrying dh back; then the all-steps GEMMs and parameter reductions.
// ln_gru.cu: current stream, device guard, launch checks, no host synchronization.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <optional>
#include <tuple>

#include "../fusedgru.h"
#include "launch.cuh"
#include "ln_gru_pointwise.cuh"
#include "matmul.cuh"

namespace fusedgru {
namespace cuda {
namespace ln_gru {

using at::Tensor;

template <typename Launch>
std::tuple<Tensor, Tensor, Tensor> forward_impl(
    const Tensor& input, const Tensor& hx, const Tensor& weight_ih, const Tensor& weight_hh,
    const Tensor& ln_ih_weight, const Tensor& ln_ih_bias, const Tensor& ln_hh_weight,
    const Tensor& ln_hh_bias, const std::optional<Tensor>& lengths, bool reverse, double eps,
    bool need_workspace, const Launch& launch) {
  const Matmul mm = matmul_for(launch, input.scalar_type());
  const LnGruForwardState st =
      ln_gru_forward_state(input, hx, weight_ih, weight_hh, ln_ih_weight, ln_ih_bias, ln_hh_weight,
                           ln_hh_bias, lengths, eps, need_workspace, mm);
  if (st.N == 0) return st.result();
  const Tensor w_hh_t = weight_hh.t();
  Tensor gh = at::empty({st.N, 3 * st.H}, input.options());
  for (int64_t s = 0; s < st.T; ++s) {
    const int64_t t = reverse ? st.T - 1 - s : s;
    mm(gh, st.h, w_hh_t, 0.0);
    LnGruForwardPointwise p = st.at_step(t);
    p.gh = gh.data_ptr();
    p.h_in = st.h.data_ptr();
    p.h_out = st.h.data_ptr();  // each thread reads h_{t-1} of its units before writing h_t
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, input.scalar_type(), "ln_gru_forward_cuda", [&] {
          launch(ln_gru_forward_kernel<scalar_t>, dim3(static_cast<unsigned int>(st.N)),
                 dim3(kThreads), 0, p);
        });
  }
  return st.result();
}

template <typename Launch>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> backward_impl(
    const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& input, const Tensor& hx,
    const Tensor& weight_ih, const Tensor& weight_hh, const Tensor& ln_ih_weight,
    const Tensor& ln_hh_weight, const Tensor& ln_hh_bias, const std::optional<Tensor>& lengths,
    const Tensor& output, const Tensor& workspace, bool reverse, bool need_input_grad,
    bool need_weight_grad, const Launch& launch) {
  const Matmul mm = matmul_for(launch, input.scalar_type());
  LnGruBackwardState st =
      ln_gru_backward_state(grad_output, grad_h_n, input, hx, weight_ih, weight_hh, ln_ih_weight,
                            ln_hh_weight, ln_hh_bias, lengths, output, workspace, reverse);
  const int64_t T = st.T, N = st.N;
  const Tensor& x = st.x;
  const bool bm = st.batch_major;
  for (int64_t s = 0; s < T && N > 0; ++s) {
    const int64_t t = reverse ? s : T - 1 - s;
    const LnGruBackwardPointwise p = st.at_step(t);
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, input.scalar_type(), "ln_gru_backward_cuda", [&] {
          launch(ln_gru_backward_kernel<scalar_t>, dim3(static_cast<unsigned int>(N)),
                 dim3(kThreads), 0, p);
        });
    mm(st.dh, st.dg_raw.select(0, t), weight_hh, 1.0);
  }
  auto [d_gi, g_gi, g_bi, g_gh, g_bh] =
      ln_gru_input_backward(bm, ln_ih_weight, st.ws, st.da_i, st.da_h, need_weight_grad);
  auto [grad_input, g_wih, g_whh] =
      ln_gru_backward_gemms(x, bm, st.len, weight_ih, d_gi, st.dg_raw, st.hprev, need_input_grad,
                            need_weight_grad, mm, BackwardProducts{});
  return {grad_input, st.dh, g_wih, g_whh, g_gi, g_bi, g_gh, g_bh};
}

}  // namespace ln_gru
}  // namespace cuda
}  // namespace fusedgru
