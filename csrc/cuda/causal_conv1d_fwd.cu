// The causal depthwise conv1d forward and streaming update on CUDA: the kernels and their
// launch logic live in causal_conv1d_host.cuh; here they run under a device guard on the
// current stream. (The backward builds in its own translation unit, causal_conv1d_bwd.cu.)
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "causal_conv1d_host.cuh"

namespace fusedgru {
namespace cuda {
namespace {

using at::Tensor;

Tensor causal_conv1d_fwd(const Tensor& x, const Tensor& weight, const std::optional<Tensor>& bias,
                         const std::optional<Tensor>& initial_state, int64_t dilation,
                         int64_t activation) {
  const c10::cuda::OptionalCUDAGuard guard(cuda_device(x));
  return conv::fwd_impl(x, weight, bias, initial_state, dilation, activation,
                        current_stream_launcher());
}

Tensor causal_conv1d_update(const Tensor& x, Tensor& conv_state, const Tensor& weight,
                            const std::optional<Tensor>& bias, int64_t dilation,
                            int64_t activation) {
  const c10::cuda::OptionalCUDAGuard guard(cuda_device(x));
  return conv::update_impl(x, conv_state, weight, bias, dilation, activation,
                           current_stream_launcher());
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(fusedgru, CUDA, m) {
  m.impl("causal_conv1d_fwd", &cuda::causal_conv1d_fwd);
  m.impl("causal_conv1d_update", &cuda::causal_conv1d_update);
}

}  // namespace fusedgru
