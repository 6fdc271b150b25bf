// The CUDA kernels and their launch code, compiled for the host emulator (cuda_emu.h) and
// exposed to the tests as functions on CPU tensors. Built by tests/test_cuda_emu.py.
#include "cuda_emu.h"

#include <torch/extension.h>

#include "cuda/causal_conv1d_kernels.cuh"

namespace {

struct EmuLauncher {
  size_t max_smem() const { return emu::kMaxDynamicSmem; }

  template <typename... KernelArgs, typename... Args>
  void operator()(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem,
                  Args&&... args) const {
    emu::launch(kernel, grid, block, smem, std::forward<Args>(args)...);
  }
};

// Like EmuLauncher, but as if the device had the default 48 KB of shared memory per block and
// no more: the launch code then takes its fallbacks at smaller histories.
struct SmallSmemLauncher : EmuLauncher {
  size_t max_smem() const { return fusedgru::cuda::kDefaultSmem; }
};

template <typename Launch>
void define_conv(pybind11::module_& m, const char* suffix) {
  namespace conv = fusedgru::cuda::conv;
  m.def((std::string("causal_conv1d_fwd") + suffix).c_str(),
        [](const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b,
           const std::optional<at::Tensor>& init, int64_t dilation, int64_t act) {
          return conv::fwd_impl(x, w, b, init, dilation, act, Launch{});
        });
  m.def((std::string("causal_conv1d_bwd") + suffix).c_str(),
        [](const at::Tensor& gy, const at::Tensor& x, const at::Tensor& w,
           const std::optional<at::Tensor>& b, const std::optional<at::Tensor>& init,
           int64_t dilation, int64_t act) {
          return conv::bwd_impl(gy, x, w, b, init, dilation, act, Launch{});
        });
  m.def((std::string("causal_conv1d_update") + suffix).c_str(),
        [](const at::Tensor& x, at::Tensor state, const at::Tensor& w,
           const std::optional<at::Tensor>& b, int64_t dilation, int64_t act) {
          return conv::update_impl(x, state, w, b, dilation, act, Launch{});
        });
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  define_conv<EmuLauncher>(m, "");
  define_conv<SmallSmemLauncher>(m, "_small_smem");
}
