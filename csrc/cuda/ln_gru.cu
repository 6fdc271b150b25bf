// The layer-normalized GRU ops on CUDA: the kernels and their launch logic live in
// ln_gru_host.cuh; here they run under a device guard on the current stream.
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "ln_gru_host.cuh"

namespace fusedgru {
namespace cuda {
namespace {

using at::Tensor;

std::tuple<Tensor, Tensor, Tensor> ln_gru_forward(
    const Tensor& input, const Tensor& hx, const Tensor& weight_ih, const Tensor& weight_hh,
    const Tensor& ln_ih_weight, const Tensor& ln_ih_bias, const Tensor& ln_hh_weight,
    const Tensor& ln_hh_bias, const std::optional<Tensor>& lengths, bool reverse, double eps,
    bool need_workspace) {
  const c10::cuda::OptionalCUDAGuard guard(cuda_device(input));
  return ln_gru::forward_impl(input, hx, weight_ih, weight_hh, ln_ih_weight, ln_ih_bias,
                              ln_hh_weight, ln_hh_bias, lengths, reverse, eps, need_workspace,
                              current_stream_launcher());
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> ln_gru_backward(
    const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& input, const Tensor& hx,
    const Tensor& weight_ih, const Tensor& weight_hh, const Tensor& ln_ih_weight,
    const Tensor& ln_hh_weight, const Tensor& ln_hh_bias, const std::optional<Tensor>& lengths,
    const Tensor& output, const Tensor& workspace, bool reverse, bool need_input_grad,
    bool need_weight_grad) {
  const c10::cuda::OptionalCUDAGuard guard(cuda_device(input));
  return ln_gru::backward_impl(grad_output, grad_h_n, input, hx, weight_ih, weight_hh, ln_ih_weight,
                               ln_hh_weight, ln_hh_bias, lengths, output, workspace, reverse,
                               need_input_grad, need_weight_grad, current_stream_launcher());
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(fusedgru, CUDA, m) {
  m.impl("ln_gru_forward", &cuda::ln_gru_forward);
  m.impl("ln_gru_backward", &cuda::ln_gru_backward);
}

}  // namespace fusedgru
