// The fused GRU forward and cell ops on CUDA: the kernels and their launch logic live in
// gru_host.cuh; cuda_op (launch.cuh) runs them under a device guard on the current stream. (The
// backward has its own translation unit, gru_backward.cu, so the two instantiations build in
// parallel.)
#include <torch/library.h>

#include "gru_host.cuh"

namespace fusedgru {
namespace cuda {

TORCH_LIBRARY_IMPL(fusedgru, CUDA, m) {
  m.impl("gru_forward", cuda_op<&gru::forward_impl<StreamLauncher>>);
  m.impl("gru_forward_bidirectional", cuda_op<&gru::forward_bidirectional_impl<StreamLauncher>>);
  m.impl("gru_cell", cuda_op<&gru::cell_impl<StreamLauncher>>);
}

}  // namespace cuda
}  // namespace fusedgru
