// The CUDA kernels and their launch code, compiled for the host emulator (cuda_emu.h) and
// exposed to the tests as functions on CPU tensors. Built by tests/test_cuda_emu.py.
#include "cuda_emu.h"

#include <torch/extension.h>

#include "cuda/causal_conv1d_kernels.cuh"
#include "cuda/gru_kernels.cuh"
#include "cuda/ln_gru_kernels.cuh"

namespace {

// A device with the H100's shared memory per block, on which only a few blocks (kCoopBlocks)
// fit at once, so cooperative grids stay small enough to run as threads.
struct EmuLauncher {
  static constexpr int64_t kCoopBlocks = 4;

  size_t max_smem() const { return emu::kMaxDynamicSmem; }

  template <typename... KernelArgs>
  int64_t coresident_blocks(void (*)(KernelArgs...), dim3, size_t) const {
    return kCoopBlocks;
  }

  template <typename... KernelArgs, typename... Args>
  void operator()(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem,
                  Args&&... args) const {
    emu::launch(kernel, grid, block, smem, std::forward<Args>(args)...);
  }

  template <typename... KernelArgs, typename... Args>
  void cooperative(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem,
                   Args&&... args) const {
    emu::launch_cooperative(kernel, grid, block, smem, std::forward<Args>(args)...);
  }
};

// A device without cooperative launches: the GRU takes its per-step path.
struct PerStepLauncher : EmuLauncher {
  template <typename... KernelArgs>
  int64_t coresident_blocks(void (*)(KernelArgs...), dim3, size_t) const {
    return 0;
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

template <typename Launch>
void define_gru_forward(pybind11::module_& m, const char* name) {
  m.def(name, [](const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih,
                 const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                 const std::optional<at::Tensor>& b_hh, const std::optional<at::Tensor>& lengths,
                 bool reverse, bool need_workspace) {
    return fusedgru::cuda::gru::forward_impl(input, hx, w_ih, w_hh, b_ih, b_hh, lengths, reverse,
                                             need_workspace, Launch{});
  });
}

template <typename Launch>
void define_gru_backward(pybind11::module_& m, const char* name) {
  m.def(name, [](const at::Tensor& grad_output, const at::Tensor& grad_h_n,
                 const std::optional<at::Tensor>& grad_workspace, const at::Tensor& input,
                 const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh,
                 const std::optional<at::Tensor>& lengths, const at::Tensor& output,
                 const at::Tensor& workspace, bool reverse, bool has_bias, bool need_input_grad,
                 bool need_weight_grad) {
    return fusedgru::cuda::gru::backward_impl(grad_output, grad_h_n, grad_workspace, input, hx,
                                              w_ih, w_hh, lengths, output, workspace, reverse,
                                              has_bias, need_input_grad, need_weight_grad,
                                              Launch{});
  });
}

void define_gru(pybind11::module_& m) {
  namespace cuda = fusedgru::cuda;
  // Same arguments as the fusedgru::gru_forward / gru_backward / gru_cell / ln_gru_* schemas.
  // gru_forward / gru_backward take the persistent kernels where they apply; the *_per_step
  // versions never do.
  define_gru_forward<EmuLauncher>(m, "gru_forward");
  define_gru_forward<PerStepLauncher>(m, "gru_forward_per_step");
  m.def("gru_persistent_blocks", [](int64_t T, int64_t N, int64_t H, bool fp64) {
    const auto plan = fp64 ? cuda::gru::persistent_plan<double>(T, N, H, EmuLauncher{})
                           : cuda::gru::persistent_plan<float>(T, N, H, EmuLauncher{});
    return static_cast<int64_t>(plan.blocks);
  });
  m.def("gru_persistent_backward_blocks", [](int64_t T, int64_t N, int64_t H, bool fp64) {
    const auto plan =
        fp64 ? cuda::gru::persistent_backward_plan<double>(T, N, H, true, false, EmuLauncher{})
             : cuda::gru::persistent_backward_plan<float>(T, N, H, true, false, EmuLauncher{});
    return static_cast<int64_t>(plan.blocks);
  });
  define_gru_backward<EmuLauncher>(m, "gru_backward");
  define_gru_backward<PerStepLauncher>(m, "gru_backward_per_step");
  m.def("gru_cell", [](const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih,
                       const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                       const std::optional<at::Tensor>& b_hh) {
    return cuda::gru::cell_impl(input, hx, w_ih, w_hh, b_ih, b_hh, EmuLauncher{});
  });
  m.def("ln_gru_forward",
        [](const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih,
           const at::Tensor& w_hh, const at::Tensor& g_i, const at::Tensor& b_i,
           const at::Tensor& g_h, const at::Tensor& b_h, const std::optional<at::Tensor>& lengths,
           bool reverse, double eps, bool need_workspace) {
          return cuda::ln_gru::forward_impl(input, hx, w_ih, w_hh, g_i, b_i, g_h, b_h, lengths,
                                            reverse, eps, need_workspace, EmuLauncher{});
        });
  m.def("ln_gru_backward",
        [](const at::Tensor& grad_output, const at::Tensor& grad_h_n, const at::Tensor& input,
           const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh,
           const at::Tensor& g_i, const at::Tensor& g_h, const at::Tensor& b_h,
           const std::optional<at::Tensor>& lengths, const at::Tensor& output,
           const at::Tensor& workspace, bool reverse, bool need_input_grad,
           bool need_weight_grad) {
          return cuda::ln_gru::backward_impl(grad_output, grad_h_n, input, hx, w_ih, w_hh, g_i,
                                             g_h, b_h, lengths, output, workspace, reverse,
                                             need_input_grad, need_weight_grad, EmuLauncher{});
        });
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gemm", [](at::Tensor out, const at::Tensor& a, const at::Tensor& b, double beta) {
    fusedgru::cuda::gemm::matmul(out, a, b, beta, EmuLauncher{});
    return out;
  });
  define_conv<EmuLauncher>(m, "");
  define_conv<SmallSmemLauncher>(m, "_small_smem");
  define_gru(m);
}
