// The fused GRU backward op on CUDA (see gru_forward.cu): kernels and launch logic in
// gru_host.cuh, run by cuda_op (launch.cuh) under a device guard on the current stream.
#include <torch/library.h>

#include "gru_host.cuh"

namespace fusedgru {
namespace cuda {

TORCH_LIBRARY_IMPL(fusedgru, CUDA, m) {
  m.impl("gru_backward", cuda_op<&gru::backward_impl<StreamLauncher>>);
  m.impl("gru_backward_bidirectional", cuda_op<&gru::backward_bidirectional_impl<StreamLauncher>>);
}

}  // namespace cuda
}  // namespace fusedgru
