// The causal depthwise conv1d backward on CUDA (see causal_conv1d_fwd.cu): kernels and launch
// logic in causal_conv1d_host.cuh, run by cuda_op (launch.cuh) under a device guard on the
// current stream.
#include <torch/library.h>

#include "causal_conv1d_host.cuh"

namespace fusedgru {
namespace cuda {

TORCH_LIBRARY_IMPL(fusedgru, CUDA, m) {
  m.impl("causal_conv1d_bwd", cuda_op<&conv::bwd_impl<StreamLauncher>>);
}

}  // namespace cuda
}  // namespace fusedgru
