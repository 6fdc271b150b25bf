// Host orchestration of the fused GRU ops on CUDA (forward, backward, cell), written over a
// launcher (launch.cuh) so the tests also run it under the host emulator. The kernels:
// gru_pointwise.cuh, gru_persistent.cuh, gru_persistent_tc.cuh, gru_cell.cuh.
//
// Per layer direction, a persistent kernel (tensor cores where they apply, else FMA) when its
// plan fits the device and the cost model (gru_cost.cuh) predicts it faster than the per-step
// path; the per-step path otherwise, or when the device refuses the cooperative launch. Both
// directions of a bidirectional layer (gru_forward_bidirectional) share one persistent launch
// where a plan for both fits.
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

// One direction of a layer as the persistent kernels see it.
struct ForwardDirection {
  const GruForwardState* st;
  Tensor weight_hh;
  bool reverse;
};

// `directions` directions (1, or 2: both directions of a bidirectional layer) in ONE persistent
// launch, when a plan for all of them fits and the cost model takes it (gru_cost.cuh); leaves
// each direction's h_n in its st->h. Returns false when it did not run (no plan, declined, or the
// device refused the cooperative launch): the caller runs another path.
template <typename Launch>
bool persistent_forward(const ForwardDirection* dir, int directions, const Launch& launch) {
  const GruForwardState& st0 = *dir[0].st;
  const int64_t T = st0.T, N = st0.N, H = st0.H;
  bool ran = false;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, st0.x.scalar_type(), "gru_persistent_forward", [&] {
        const PathPlan path = forward_path<scalar_t>(T, N, H, launch, directions);
        if (!path.persistent) return;
        const bool tc = path.tc.J != 0;
        const int64_t width = tc ? path.tc.Kp : H;  // the ping-pong buffer's row (tc: padded)
        Tensor w_hh[kMaxDirections], hbuf[kMaxDirections];
        PersistentForwardIO io[kMaxDirections];
        for (int d = 0; d < directions; ++d) {
          const GruForwardState& st = *dir[d].st;
          w_hh[d] = dir[d].weight_hh.contiguous();
          hbuf[d] = tc ? at::zeros({2, N, width}, st.h.options())
                       : at::empty({2, N, width}, st.h.options());
          hbuf[d].select(0, 0).narrow(1, 0, H).copy_(st.h);
          io[d] = persistent_forward_io(st, w_hh[d], hbuf[d], dir[d].reverse);
        }
        if constexpr (kHasMma<scalar_t>) {
          if (tc) {
            const TcPlan& plan = path.tc;
            ran = launch.try_cooperative(
                tc_forward_kernel<scalar_t>(plan.NT), dim3(directions * plan.blocks),
                dim3(static_cast<unsigned int>(plan.threads)), static_cast<size_t>(plan.smem),
                tc_forward_params(io, directions, plan));
          }
        }
        if (!tc) {
          const PersistentPlan& plan = path.fma;
          ran = launch.try_cooperative(gru_persistent_forward_kernel<scalar_t>,
                                       dim3(directions * plan.blocks), dim3(kPThreads),
                                       static_cast<size_t>(plan.smem),
                                       persistent_forward_params(io, directions, plan));
        }
        for (int d = 0; d < directions && ran; ++d) {
          dir[d].st->h.copy_(hbuf[d].select(0, T % 2).narrow(1, 0, H));
        }
      });
  return ran;
}

// One direction on the per-step path: per step a recurrent GEMM and one pointwise kernel.
template <typename Launch>
void per_step_forward(const GruForwardState& st, const Tensor& weight_hh, bool reverse,
                      const Matmul& mm, const Launch& launch) {
  const int64_t T = st.T, N = st.N, H = st.H;
  const Tensor w_hh_t = weight_hh.t();
  Tensor gh = at::empty({N, 3 * H}, st.h.options());
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
}

// One direction: its persistent kernel, else the per-step path.
template <typename Launch>
void forward_direction(const ForwardDirection& dir, const Matmul& mm, const Launch& launch) {
  if (!persistent_forward(&dir, 1, launch)) {
    per_step_forward(*dir.st, dir.weight_hh, dir.reverse, mm, launch);
  }
}

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
  if (st.N > 0) forward_direction({&st, weight_hh, reverse}, mm, launch);
  return st.result();
}

// Both directions of a bidirectional layer: one persistent launch for both where it fits and
// pays (half the grid each), else each direction on its own path; each writes its half of the
// output.
template <typename Launch>
std::tuple<Tensor, Tensor, Tensor, Tensor> forward_bidirectional_impl(
    const Tensor& input, const Tensor& hx, const Tensor& weight_ih, const Tensor& weight_hh,
    const std::optional<Tensor>& bias_ih, const std::optional<Tensor>& bias_hh,
    const Tensor& weight_ih_reverse, const Tensor& weight_hh_reverse,
    const std::optional<Tensor>& bias_ih_reverse, const std::optional<Tensor>& bias_hh_reverse,
    const std::optional<Tensor>& lengths, bool need_workspace, const Launch& launch) {
  const Matmul mm = matmul_for(launch, input.scalar_type());
  const Tensor output =
      bidirectional_output(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, weight_ih_reverse,
                           weight_hh_reverse, bias_ih_reverse, bias_hh_reverse);
  const GruForwardState st[kMaxDirections] = {
      gru_forward_state(input, hx.select(0, 0), weight_ih, weight_hh, bias_ih, bias_hh, lengths,
                        need_workspace, mm, direction_half(output, 0)),
      gru_forward_state(input, hx.select(0, 1), weight_ih_reverse, weight_hh_reverse,
                        bias_ih_reverse, bias_hh_reverse, lengths, need_workspace, mm,
                        direction_half(output, 1))};
  const ForwardDirection dir[kMaxDirections] = {{&st[0], weight_hh, false},
                                                {&st[1], weight_hh_reverse, true}};
  if (st[0].N > 0 && !persistent_forward(dir, kMaxDirections, launch)) {
    for (const ForwardDirection& d : dir) forward_direction(d, mm, launch);
  }
  return {output, at::stack({st[0].h, st[1].h}), st[0].workspace, st[1].workspace};
}

// `directions` backward states (1, or 2: both directions of a bidirectional layer, which must
// agree on saving h_{t-1} and on grad_workspace) through ONE persistent launch, when a plan for
// all of them fits and the cost model takes it; carries each st[d]->dh back to grad_hx and fills
// dgh, dgin. Returns false when it did not run: the caller runs another path.
template <typename Launch>
bool persistent_backward(GruBackwardState* const* st, const Tensor* weight_hh, int directions,
                         const Launch& launch) {
  const GruBackwardState& st0 = *st[0];
  const int64_t T = st0.T, N = st0.N, H = st0.H;
  bool ran = false;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, st0.x.scalar_type(), "gru_persistent_backward", [&] {
        const bool hprev = st0.hprev.defined(), grad_ws = st0.gws.defined();
        const PathPlan path = backward_path<scalar_t>(T, N, H, hprev, grad_ws, launch, directions);
        if (!path.persistent) return;
        Tensor w_hh[kMaxDirections];
        PersistentBackwardIO io[kMaxDirections];
        for (int d = 0; d < directions; ++d) {
          w_hh[d] = weight_hh[d].contiguous();
          io[d] = persistent_backward_io(*st[d], w_hh[d]);
        }
        if constexpr (kHasMma<scalar_t>) {  // tensor cores, as the forward
          const TcPlan& tc = path.tc;
          if (tc.J != 0) {
            ran = launch.try_cooperative(
                tc_backward_kernel<scalar_t>(tc.NT, hprev), dim3(directions * tc.blocks),
                dim3(static_cast<unsigned int>(tc.threads)), static_cast<size_t>(tc.smem),
                tc_backward_params(st, io, directions, tc));
            return;  // refused: another path
          }
        }
        const PersistentPlan& plan = path.fma;
        ran = launch.try_cooperative(persistent_backward_kernel<scalar_t>(hprev, grad_ws),
                                     dim3(directions * plan.blocks), dim3(kPThreads),
                                     static_cast<size_t>(plan.smem),
                                     persistent_backward_params(io, directions, plan));
      });
  return ran;
}

// One direction's recurrent part: its persistent kernel, else per step (in reverse time) one
// fused pointwise kernel and one GEMM carrying dL/dh to the previous step.
template <typename Launch>
void backward_direction(GruBackwardState& st, const Tensor& weight_hh, bool reverse,
                        const Matmul& mm, const Launch& launch) {
  GruBackwardState* const one[] = {&st};
  if (st.N == 0 || persistent_backward(one, &weight_hh, 1, launch)) return;
  for (int64_t s = 0; s < st.T; ++s) {
    const int64_t t = reverse ? s : st.T - 1 - s;
    backward_pointwise(st.at_step(t), launch);
    // dL/dh_{t-1} = z * dL/dh_t (left in dh by the kernel) + dgh_t W_hh
    mm(st.dh, st.dgh.select(0, t), weight_hh, 1.0);
  }
}

// After the recurrent part: the input and weight gradients as GEMMs over all steps.
inline GruGrads backward_result(const GruBackwardState& st, const Tensor& weight_ih, bool has_bias,
                                bool need_input_grad, bool need_weight_grad, const Matmul& mm) {
  auto [grad_input, gw_ih, gw_hh, gb_ih, gb_hh] =
      gru_backward_gemms(st.x, st.batch_major, st.len, weight_ih, st.dgh, st.dgin, st.hprev,
                         has_bias, need_input_grad, need_weight_grad, mm, BackwardProducts{});
  return {grad_input, st.dh, gw_ih, gw_hh, gb_ih, gb_hh};
}

template <typename Launch>
GruGrads backward_impl(const Tensor& grad_output, const Tensor& grad_h_n,
                       const std::optional<Tensor>& grad_workspace, const Tensor& input,
                       const Tensor& hx, const Tensor& weight_ih, const Tensor& weight_hh,
                       const std::optional<Tensor>& lengths, const Tensor& output,
                       const Tensor& workspace, bool reverse, bool has_bias, bool need_input_grad,
                       bool need_weight_grad, const Launch& launch) {
  const Matmul mm = matmul_for(launch, input.scalar_type());
  GruBackwardState st =
      gru_backward_state(grad_output, grad_h_n, grad_workspace, input, hx, weight_ih, weight_hh,
                         lengths, output, workspace, reverse, need_weight_grad);
  backward_direction(st, weight_hh, reverse, mm, launch);
  return backward_result(st, weight_ih, has_bias, need_input_grad, need_weight_grad, mm);
}

// Both directions of a bidirectional layer: one persistent launch for both where it fits and
// pays, else each direction on its own path.
template <typename Launch>
GruBidirectionalGrads backward_bidirectional_impl(
    const Tensor& grad_output, const Tensor& grad_h_n, const std::optional<Tensor>& grad_workspace,
    const std::optional<Tensor>& grad_workspace_reverse, const Tensor& input, const Tensor& hx,
    const Tensor& weight_ih, const Tensor& weight_hh, const Tensor& weight_ih_reverse,
    const Tensor& weight_hh_reverse, const std::optional<Tensor>& lengths, const Tensor& output,
    const Tensor& workspace, const Tensor& workspace_reverse, bool has_bias, bool need_input_grad,
    bool need_weight_grad, const Launch& launch) {
  check_bidirectional_backward_args(grad_output, grad_h_n, grad_workspace, grad_workspace_reverse,
                                    input, hx, weight_ih, weight_hh, weight_ih_reverse,
                                    weight_hh_reverse, output, workspace, workspace_reverse);
  const Matmul mm = matmul_for(launch, input.scalar_type());
  GruBackwardState st[kMaxDirections] = {
      gru_backward_state(direction_half(grad_output, 0), grad_h_n.select(0, 0), grad_workspace,
                         input, hx.select(0, 0), weight_ih, weight_hh, lengths,
                         direction_half(output, 0), workspace, false, need_weight_grad),
      gru_backward_state(direction_half(grad_output, 1), grad_h_n.select(0, 1),
                         grad_workspace_reverse, input, hx.select(0, 1), weight_ih_reverse,
                         weight_hh_reverse, lengths, direction_half(output, 1), workspace_reverse,
                         true, need_weight_grad)};
  GruBackwardState* const both[] = {&st[0], &st[1]};
  const Tensor w_hh[kMaxDirections] = {weight_hh, weight_hh_reverse};
  // One kernel serves both only if they save the same things (grad_workspace may be given for
  // one direction only).
  const bool same = st[0].gws.defined() == st[1].gws.defined();
  if (st[0].N > 0 && !(same && persistent_backward(both, w_hh, kMaxDirections, launch))) {
    for (int d = 0; d < kMaxDirections; ++d) backward_direction(st[d], w_hh[d], d == 1, mm, launch);
  }
  return bidirectional_grads(
      backward_result(st[0], weight_ih, has_bias, need_input_grad, need_weight_grad, mm),
      backward_result(st[1], weight_ih_reverse, has_bias, need_input_grad, need_weight_grad, mm),
      need_input_grad);
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
