// The fused GRU forward and cell ops on CUDA: the kernels and their launch logic live in
// gru_host.cuh; here they run under a device guard on the current stream. (The backward has
// its own translation unit, gru_backward.cu, so the two instantiations build in parallel.)
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "gru_host.cuh"

namespace fusedgru {
namespace cuda {
namespace {

using at::Tensor;

std::tuple<Tensor, Tensor, Tensor> gru_forward(const Tensor& input, const Tensor& hx,
                                               const Tensor& weight_ih, const Tensor& weight_hh,
                                               const std::optional<Tensor>& bias_ih,
                                               const std::optional<Tensor>& bias_hh,
                                               const std::optional<Tensor>& lengths, bool reverse,
                                               bool need_workspace) {
  const c10::cuda::OptionalCUDAGuard guard(cuda_device(input));
  return gru::forward_impl(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, lengths, reverse,
                           need_workspace, current_stream_launcher());
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
  m.impl("gru_cell", &cuda::gru_cell);
}

}  // namespace fusedgru
