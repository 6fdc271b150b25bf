// The fused GRU backward op on CUDA (see gru_forward.cu): kernels and launch logic in
// gru_host.cuh, run here under a device guard on the current stream.
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "gru_host.cuh"

namespace fusedgru {
namespace cuda {
namespace {

using at::Tensor;

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_backward(
    const Tensor& grad_output, const Tensor& grad_h_n, const std::optional<Tensor>& grad_workspace,
    const Tensor& input, const Tensor& hx, const Tensor& weight_ih, const Tensor& weight_hh,
    const std::optional<Tensor>& lengths, const Tensor& output, const Tensor& workspace,
    bool reverse, bool has_bias, bool need_input_grad, bool need_weight_grad) {
  const c10::cuda::OptionalCUDAGuard guard(cuda_device(input));
  return gru::backward_impl(grad_output, grad_h_n, grad_workspace, input, hx, weight_ih, weight_hh,
                            lengths, output, workspace, reverse, has_bias, need_input_grad,
                            need_weight_grad, current_stream_launcher());
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(fusedgru, CUDA, m) { m.impl("gru_backward", &cuda::gru_backward); }

}  // namespace fusedgru
