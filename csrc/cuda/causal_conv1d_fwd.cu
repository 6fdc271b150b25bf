// The causal depthwise conv1d forward and streaming update on CUDA: the kernels and their
// launch logic live in causal_conv1d_host.cuh; cuda_op (launch.cuh) runs them under a device
// guard on the current stream. (The backward builds in its own translation unit,
// causal_conv1d_bwd.cu.)
#include <torch/library.h>

#include "causal_conv1d_host.cuh"

namespace fusedgru {
namespace cuda {

TORCH_LIBRARY_IMPL(fusedgru, CUDA, m) {
  m.impl("causal_conv1d_fwd", cuda_op<&conv::fwd_impl<StreamLauncher>>);
  m.impl("causal_conv1d_update", cuda_op<&conv::update_impl<StreamLauncher>>);
}

}  // namespace cuda
}  // namespace fusedgru
