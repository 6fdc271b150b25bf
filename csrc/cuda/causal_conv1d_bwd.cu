// The causal depthwise conv1d backward on CUDA (see causal_conv1d_fwd.cu): kernels and launch
// logic in causal_conv1d_host.cuh, run here under a device guard on the current stream.
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "causal_conv1d_host.cuh"

namespace fusedgru {
namespace cuda {
namespace {

using at::Tensor;

std::tuple<Tensor, Tensor, Tensor, Tensor> causal_conv1d_bwd(
    const Tensor& grad_y, const Tensor& x, const Tensor& weight, const std::optional<Tensor>& bias,
    const std::optional<Tensor>& initial_state, int64_t dilation, int64_t activation) {
  const c10::cuda::OptionalCUDAGuard guard(cuda_device(x));
  return conv::bwd_impl(grad_y, x, weight, bias, initial_state, dilation, activation,
                        current_stream_launcher());
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(fusedgru, CUDA, m) { m.impl("causal_conv1d_bwd", &cuda::causal_conv1d_bwd); }

}  // namespace fusedgru
