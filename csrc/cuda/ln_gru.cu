// The layer-normalized GRU ops on CUDA: the kernels and their launch logic live in
// ln_gru_host.cuh; cuda_op (launch.cuh) runs them under a device guard on the current stream.
#include <torch/library.h>

#include "ln_gru_host.cuh"

namespace fusedgru {
namespace cuda {

TORCH_LIBRARY_IMPL(fusedgru, CUDA, m) {
  m.impl("ln_gru_forward", cuda_op<&ln_gru::forward_impl<StreamLauncher>>);
  m.impl("ln_gru_backward", cuda_op<&ln_gru::backward_impl<StreamLauncher>>);
}

}  // namespace cuda
}  // namespace fusedgru
