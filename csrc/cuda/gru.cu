// The fused GRU ops on CUDA: the kernels and their launch logic live in gru_kernels.cuh; here
// they run under a device guard on the current stream.
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "gru_kernels.cuh"

namespace fusedgru {
namespace cuda {
namespace {

using at::Tensor;

std::tuple<Tensor, Tensor, Tensor> gru_forward(
    const Tensor& input, const Tensor& hx, const Tensor& weight_ih, const Tensor& weight_hh,
    const std::optional<Tensor>& bias_ih, const std::optional<Tensor>& bias_hh,
    const std::optional<Tensor>& lengths, bool reverse, bool need_workspace) {
  const c10::cuda::OptionalCUDAGuard guard(cuda_device(input));
  return gru::forward_impl(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, lengths, reverse,
                           need_workspace, current_stream_launcher());
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_backward(
    const Tensor& grad_output, const Tensor& grad_h_n, const std::optional<Tensor>& grad_workspace,
    const Tensor& input, const Tensor& hx, const Tensor& weight_ih, const Tensor& weight_hh,
    const std::optional<Tensor>& lengths, const Tensor& output, const Tensor& workspace,
    bool reverse, bool has_bias, bool need_input_grad, bool need_weight_grad) {
  const c10::cuda::OptionalCUDAGuard guard(cuda_device(input));
  return gru::backward_impl(grad_output, grad_h_n, grad_workspace, input, hx, weight_ih,
                            weight_hh, lengths, output, workspace, reverse, has_bias,
                            need_input_grad, need_weight_grad, current_stream_launcher());
}

Tensor gru_cell(const Tensor& input, const Tensor& hx, const Tensor& weight_ih,
                const Tensor& weight_hh, const std::optional<Tensor>& bias_ih,
                const std::optional<Tensor>& bias_hh) {
  const c10::cuda::OptionalCUDAGuard guard(cuda_device(input));
  return gru::cell_impl(input, hx, weight_ih, weight_hh, bias_ih, bias_hh,
                        current_stream_launcher());
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(fusedgru, CUDA, m) {
  m.impl("gru_forward", &cuda::gru_forward);
  m.impl("gru_backward", &cuda::gru_backward);
  m.impl("gru_cell", &cuda::gru_cell);
}

}  // namespace fusedgru
