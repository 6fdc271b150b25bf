// Host orchestration of the fused GRU ops on CUDA (forward, backward, cell), written over a
// launcher (launch.cuh) so the tests also run it under the host emulator. The kernels:
// gru_pointwise.cuh, gru_persistent.cuh, gru_persistent_tc.cuh, gru_cell.cuh.
//
// Per layer direction, a persistent kernel (tensor cores where they apply, else FMA) when its
// plan fits the device and the cost model (gru_cost.cuh) predicts it faster than the per-step
// path; the per-step path otherwise, or when the device refuses the cooperative launch.
//
// Forward, per layer and direction: the input projection of all steps as one cuBLAS GEMM, then
// per step one recurrent GEMM (h_{t-1} W_hh^T) and ONE fused pointwise kernel computing r, z, n,
// h_t, the output and the saved activations. Backward: per step (in reverse) one fused pointwise
// kernel for the gate gradients and one GEMM carrying dL/dh to the previous step, then the input
// and weight gradients as GEMMs over all steps and the bias gradients reduced in fp32.
// gru_forward.cu / gru_backward.cu run it all on the current stream under a device guard;
// nothing synchronizes the host.
// GEMMs: matmul.cuh (cuBLAS; fp32 in TF32 exactly when nn.GRU would use it, decided per call;
// bf16/fp16 accumulate in fp32); pointwise math is fp32 (fp64 for double). Lengths are read on
// the device and clamped into [0, T] (device_helpers.cuh). Shape legend and equations:
// ../fusedgru.h.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <optional>
#include <tuple>

#include "../fusedgru.h"
#include "gru_cell.cuh"
#include "gru_cost.cuh"
#include "gru_persistent.cuh"
#include "gru_persistent_tc.cuh"
#include "gru_pointwise.cuh"
#include "launch.cuh"
#include "matmul.cuh"

namespace fusedgru {
namespace cuda {
namespace gru {

using at::Tensor;

template <typename Launch>
std::tuple<Tensor, Tensor, Tensor> forward_impl(const Tensor& input, const Tensor& hx,
                                                const Tensor& weight_ih, const Tensor& weight_hh,
                                                const std::optional<Tensor>& bias_ih,
                                                const std::optional<Tensor>& bias_hh,
                                                const std::optional<Tensor>& lengths, bool reverse,
                                                bool need_workspace, const Launch& launch) {
  const Matmul mm = matmul_for(launch, input.scalar_type());
  const GruForwardState st = gru_forward_state(input, hx, weight_ih, weight_hh, bias_ih, bias_hh,
                                               lengths, need_workspace, mm);
  if (st.N == 0) return st.result();
  const int64_t T = st.T, N = st.N, H = st.H;
  bool persistent = false;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "gru_persistent_forward", [&] {
        const PathPlan path = forward_path<scalar_t>(T, N, H, launch);
        if (!path.persistent) return;
        if constexpr (kHasMma<scalar_t>) {
          const TcPlan& tc = path.tc;
          if (tc.J != 0) {
            const Tensor w_hh_c = weight_hh.contiguous();
            Tensor hbuf = at::zeros({2, N, tc.Kp}, input.options());
            hbuf.select(0, 0).narrow(1, 0, H).copy_(st.h);
            persistent = launch.try_cooperative(tc_forward_kernel<scalar_t>(tc.NT), dim3(tc.blocks),
                                                dim3(static_cast<unsigned int>(tc.threads)),
                                                static_cast<size_t>(tc.smem),
                                                tc_forward_params(st, w_hh_c, hbuf, tc, reverse));
            if (persistent) st.h.copy_(hbuf.select(0, T % 2).narrow(1, 0, H));
            return;  // refused: the per-step path
          }
        }
        const PersistentPlan& plan = path.fma;
        const Tensor w_hh_c = weight_hh.contiguous();
        Tensor hbuf = at::empty({2, N, H}, input.options());
        hbuf.select(0, 0).copy_(st.h);
        persistent =
            launch.try_cooperative(gru_persistent_forward_kernel<scalar_t>, dim3(plan.blocks),
                                   dim3(kPThreads), static_cast<size_t>(plan.smem),
                                   persistent_forward_params(st, w_hh_c, hbuf, plan, reverse));
        if (persistent) st.h.copy_(hbuf.select(0, T % 2));
      });
  if (persistent) return st.result();

  const Tensor w_hh_t = weight_hh.t();
  Tensor gh = at::empty({N, 3 * H}, input.options());
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = reverse ? T - 1 - s : s;
    mm(gh, st.h, w_hh_t, 0.0);
    GruForwardPointwise p = st.at_step(t);
    p.gh = gh.data_ptr();
    p.gh_sn = 3 * H;
    p.gh_sg = H;
    p.h_in = st.h.data_ptr();
    p.h_out = st.h.data_ptr();  // the GEMM has consumed h_{t-1} before the kernel overwrites it
    forward_pointwise(p, launch);
  }
  return st.result();
}

template <typename Launch>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> backward_impl(
    const Tensor& grad_output, const Tensor& grad_h_n, const std::optional<Tensor>& grad_workspace,
    const Tensor& input, const Tensor& hx, const Tensor& weight_ih, const Tensor& weight_hh,
    const std::optional<Tensor>& lengths, const Tensor& output, const Tensor& workspace,
    bool reverse, bool has_bias, bool need_input_grad, bool need_weight_grad,
    const Launch& launch) {
  const Matmul mm = matmul_for(launch, input.scalar_type());
  GruBackwardState st =
      gru_backward_state(grad_output, grad_h_n, grad_workspace, input, hx, weight_ih, weight_hh,
                         lengths, output, workspace, reverse, need_weight_grad);
  const int64_t T = st.T, N = st.N, H = st.H;
  const Tensor& x = st.x;
  const bool bm = st.batch_major;
  bool persistent = false;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "gru_persistent_backward", [&] {
        const bool hprev = st.hprev.defined(), grad_ws = st.gws.defined();
        const PathPlan path = backward_path<scalar_t>(T, N, H, hprev, grad_ws, launch);
        if (!path.persistent) return;
        if constexpr (kHasMma<scalar_t>) {  // tensor cores, as the forward
          const TcPlan& tc = path.tc;
          if (tc.J != 0) {
            const Tensor w_hh_c = weight_hh.contiguous();
            persistent = launch.try_cooperative(
                tc_backward_kernel<scalar_t>(tc.NT, hprev), dim3(tc.blocks),
                dim3(static_cast<unsigned int>(tc.threads)), static_cast<size_t>(tc.smem),
                tc_backward_params(st, w_hh_c, tc));
            return;  // refused: the per-step path
          }
        }
        const PersistentPlan& plan = path.fma;
        const Tensor w_hh_c = weight_hh.contiguous();
        persistent = launch.try_cooperative(persistent_backward_kernel<scalar_t>(hprev, grad_ws),
                                            dim3(plan.blocks), dim3(kPThreads),
                                            static_cast<size_t>(plan.smem),
                                            persistent_backward_params(st, w_hh_c, plan));
      });
  for (int64_t s = 0; s < T && N > 0 && !persistent; ++s) {
    const int64_t t = reverse ? s : T - 1 - s;
    backward_pointwise(st.at_step(t), launch);
    // dL/dh_{t-1} = z * dL/dh_t (left in dh by the kernel) + dgh_t W_hh
    mm(st.dh, st.dgh.select(0, t), weight_hh, 1.0);
  }
  auto [grad_input, gw_ih, gw_hh, gb_ih, gb_hh] = gru_backward_gemms(
      x, bm, weight_ih, st.dgh, st.dgin, st.hprev, has_bias, need_input_grad, need_weight_grad, mm);
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
    return std::get<1>(forward_impl(input.unsqueeze(0), hx, weight_ih, weight_hh, bias_ih, bias_hh,
                                    std::nullopt, false, false, launch));
  }
  const Tensor x = input.stride(1) == 1 ? input : input.contiguous();
  const Tensor h = hx.contiguous(), w_ih = weight_ih.contiguous(), w_hh = weight_hh.contiguous();
  const Tensor b_ih = bias_ih.has_value() ? bias_ih->contiguous() : Tensor();
  const Tensor b_hh = bias_hh.has_value() ? bias_hh->contiguous() : Tensor();
  Tensor out = at::empty({N, H}, input.options());
  if (N == 0) return out;
  const dim3 grid(static_cast<unsigned int>((H + kCellWarps - 1) / kCellWarps));
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "gru_cell_cuda", [&] {
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
