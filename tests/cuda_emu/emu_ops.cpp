// The CUDA kernels and their launch code, compiled for the host emulator (cuda_emu.h) and
// exposed to the tests as functions on CPU tensors; each op runs with its allocations poisoned
// (emu_runtime.h). Built by emu_build.load_emulator for the tests.
#include "cuda_emu.h"
#include "emu_runtime.h"

#include <torch/extension.h>

#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "cuda/causal_conv1d_host.cuh"
#include "cuda/gru_host.cuh"
#include "cuda/ln_gru_host.cuh"
#include "cuda/matmul.cuh"

namespace {

using fusedgru::cuda::StreamLauncher;

// Emulated devices (emu_runtime.h): an H100's per-SM resources on 4 SMs, so the persistent
// kernels (one block per SM) get 4 co-resident blocks; the same without cooperative launches
// (the GRU's per-step path); one whose opt-in limit is the default 48 KB (the conv's fallbacks
// at smaller histories); a whole H100 / H200 (132 SMs), for the planners only (its cooperative
// grids would be 132 blocks of std::threads); 8 SMs, where the persistent kernels reach
// J = 32 units per block with fp32's widest slices; and 1 SM, where the tensor-core kernel
// takes its widest blocks.
struct Devices {
  int h100 = emu::add_device({4, true, 227 * 1024});
  int no_coop = emu::add_device({4, false, 227 * 1024});
  int small_smem = emu::add_device({4, true, 48 * 1024});
  int h100_132 = emu::add_device({132, true, 227 * 1024});
  int sms8 = emu::add_device({8, true, 227 * 1024});
  int sms1 = emu::add_device({1, true, 227 * 1024});  // one SM: wide units per block
};

const Devices& devices() {
  static const Devices d;
  return d;
}

// The launcher each emulated op runs with: StreamLauncher itself, on the chosen device.
struct OnH100 {
  static int device() { return devices().h100; }
};
struct NoCooperative {
  static int device() { return devices().no_coop; }
};
struct SmallSmem {
  static int device() { return devices().small_smem; }
};

inline StreamLauncher launcher_on(int device) {
  emu::set_device(device);
  return StreamLauncher{nullptr};
}

template <typename Device>
StreamLauncher launcher() {
  return launcher_on(Device::device());
}

// Defines an emulated op: fn runs with every CPU allocation poisoned (emu::PoisonedAllocations),
// so an output or scratch tensor the launch code allocates and a kernel leaves partly unwritten
// reads as NaN. fn: a captureless lambda with a leading +.
template <typename R, typename... A>
void def_op(pybind11::module_& m, const char* name, R (*fn)(A...)) {
  m.def(name, [fn](A... args) -> R {
    const emu::PoisonedAllocations poison;
    return fn(std::forward<A>(args)...);
  });
}

// A kernel for probing the emulated runtime's launch rules; each rule gets its own instance,
// so no opt-in or register count set for one probe carries over to another.
template <int kProbe>
__global__ void probe_kernel(int* out) {
  if (threadIdx.x == 0 && blockIdx.x == 0) *out = kProbe;
}

// Launches a GPU would refuse, straight through the emulated runtime: StreamLauncher's launch
// configuration (LaunchConfig), without its shared-memory opt-in, which would make a planted
// bad launch legal. C10_CUDA_CHECK turns the refusal into the RuntimeError a real launch gives.
void launch_probe(const std::string& rule) {
  int sink = 0;
  auto launch = [&](auto kernel, dim3 grid, dim3 block, size_t smem, bool coop) {
    const fusedgru::cuda::LaunchConfig config(grid, block, smem, nullptr, coop);
    C10_CUDA_CHECK(cudaLaunchKernelEx(&config.config, kernel, &sink));
  };
  emu::set_device(devices().h100);
  if (rule == "smem-without-opt-in") {
    launch(probe_kernel<0>, dim3(1), dim3(32), 64 * 1024, false);
  } else if (rule == "smem-over-opt-in") {
    C10_CUDA_CHECK(cudaFuncSetAttribute(probe_kernel<1>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, 228 * 1024));
  } else if (rule == "threads") {
    launch(probe_kernel<2>, dim3(1), dim3(1025), 0, false);
  } else if (rule == "grid-y") {
    launch(probe_kernel<2>, dim3(1, 65536), dim3(32), 0, false);
  } else if (rule == "cooperative-too-large") {  // 1 block per SM at 255 registers, 4 SMs
    emu::set_registers(probe_kernel<3>, 255);
    launch(probe_kernel<3>, dim3(5), dim3(256), 0, true);
  } else if (rule == "cooperative-unsupported") {
    emu::set_device(devices().no_coop);
    launch(probe_kernel<4>, dim3(1), dim3(32), 0, true);
  } else {
    TORCH_CHECK(rule == "ok", "unknown probe ", rule);
    C10_CUDA_CHECK(cudaFuncSetAttribute(probe_kernel<5>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, 227 * 1024));
    launch(probe_kernel<5>, dim3(4), dim3(256), 100 * 1024, true);
    TORCH_CHECK(sink == 5, "probe kernel did not run");
  }
}

void define_runtime_hooks(pybind11::module_& m) {
  m.def("launch_probe", &launch_probe);
  m.def("rnn_allows_tf32", &fusedgru::cuda::rnn_allows_tf32);
  m.def("cublas_refuses", &fusedgru::cuda::gemm::cublas_refuses);
  m.def("gemm_calls", &emu::gemm_calls, "cublasGemmEx calls so far, by compute type (tf32, fp32)");
  m.def("fail_next_launch", [] {
    std::lock_guard<std::mutex> lock(emu::runtime().mutex);
    emu::runtime().fail_next_launch = true;
  });
  // The next n cooperative launches are refused as too large (as under MPS): the GRU ops fall
  // back to the per-step path. Returns how many refusals were still pending.
  m.def("refuse_cooperative_launches", [](int n) {
    std::lock_guard<std::mutex> lock(emu::runtime().mutex);
    const int pending = emu::runtime().refuse_cooperative;
    emu::runtime().refuse_cooperative = n;
    return pending;
  });
  // The grid sizes (blocks) of the cooperative launches run since the last call, oldest first.
  m.def("cooperative_grids", [] {
    std::lock_guard<std::mutex> lock(emu::runtime().mutex);
    return std::exchange(emu::runtime().cooperative_grids, {});
  });
  // Arms (or disarms) a check inside every emulated cublasGemmEx that the precision flags still
  // read as they do now.
  m.def("snapshot_flags", [](bool arm) {
    const std::vector<int> flags = emu::precision_flags();
    std::lock_guard<std::mutex> lock(emu::runtime().mutex);
    emu::runtime().flags_at_start =
        arm ? std::make_optional(flags) : std::optional<std::vector<int>>();
  });
  m.def("smem_attribute_sets", [] {
    std::vector<std::tuple<int, int64_t, int>> sets;
    {
      std::lock_guard<std::mutex> lock(emu::runtime().mutex);
      for (const auto& [dev, kernel, bytes] : emu::runtime().smem_sets) {
        sets.emplace_back(dev, reinterpret_cast<int64_t>(kernel), bytes);
      }
    }
    std::vector<std::tuple<int, int64_t, int, int>> out;  // + the kernel's static smem
    for (const auto& [dev, kernel, bytes] : sets) {
      out.emplace_back(dev, kernel, bytes,
                       emu::resources_of(reinterpret_cast<const void*>(kernel)).static_smem);
    }
    return out;
  });
  m.def(
      "resolved_kernels",
      [] {
        std::vector<std::tuple<std::string, int, int, std::string>> out;
        for (const auto& k : emu::resolved_kernels()) {
          out.emplace_back(k.name, k.resources.registers, k.resources.static_smem, k.origin);
        }
        return out;
      },
      "(mangled name, registers, static smem, origin) of every kernel resolved so far");
  m.def(
      "occupancy",
      [](const std::string& name, int device, int threads, int64_t smem) {
        for (const auto& [kernel, k] : [] {
               std::lock_guard<std::mutex> lock(emu::runtime().mutex);
               return emu::runtime().resolved;
             }()) {
          if (k.name == name) return emu::occupancy(emu::device(device), kernel, threads, smem);
        }
        TORCH_CHECK(false, "emu: kernel ", name, " has not been resolved");
      },
      "blocks per SM of a resolved kernel, as the emulated occupancy API answers");
  m.def("device_smem_optin", [](int dev) { return emu::device(dev).smem_optin; });
  def_op(
      m, "tf32_matmul", +[](at::Tensor out, const at::Tensor& a, const at::Tensor& b, double beta) {
        const StreamLauncher launch = launcher<OnH100>();
        fusedgru::cuda::column_major_matmul(out, a, b, beta,
                                            [&](const auto& g) { launch.tf32_gemm(g); });
        return out;
      });
  m.def("devices", [] {
    const Devices& d = devices();
    return std::map<std::string, int>{
        {"h100", d.h100},         {"no_coop", d.no_coop}, {"small_smem", d.small_smem},
        {"h100_132", d.h100_132}, {"sms8", d.sms8},       {"sms1", d.sms1}};
  });
  m.def(
      "seed_block_order",
      [](uint64_t seed, uint64_t stream) { emu::block_order().seed(seed, stream); },
      "the seed of the order in which non-cooperative launches run their blocks (cuda_emu.h)");
  m.def("poison_guards_held", [] { return emu::PoisonedAllocations::held().load(); });
}

template <typename Launch>
void define_conv(pybind11::module_& m, const char* suffix) {
  namespace conv = fusedgru::cuda::conv;
  def_op(
      m, (std::string("causal_conv1d_fwd") + suffix).c_str(),
      +[](const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b,
          const std::optional<at::Tensor>& init, int64_t dilation, int64_t act) {
        return conv::fwd_impl(x, w, b, init, dilation, act, launcher<Launch>());
      });
  def_op(
      m, (std::string("causal_conv1d_bwd") + suffix).c_str(),
      +[](const at::Tensor& gy, const at::Tensor& x, const at::Tensor& w,
          const std::optional<at::Tensor>& b, const std::optional<at::Tensor>& init,
          int64_t dilation, int64_t act) {
        return conv::bwd_impl(gy, x, w, b, init, dilation, act, launcher<Launch>());
      });
  def_op(
      m, (std::string("causal_conv1d_update") + suffix).c_str(),
      +[](const at::Tensor& x, at::Tensor state, const at::Tensor& w,
          const std::optional<at::Tensor>& b, int64_t dilation, int64_t act) {
        return conv::update_impl(x, state, w, b, dilation, act, launcher<Launch>());
      });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_forward(
    const StreamLauncher& launch, const at::Tensor& input, const at::Tensor& hx,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh, const std::optional<at::Tensor>& lengths, bool reverse,
    bool need_workspace) {
  return fusedgru::cuda::gru::forward_impl(input, hx, w_ih, w_hh, b_ih, b_hh, lengths, reverse,
                                           need_workspace, launch);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_backward(
    const StreamLauncher& launch, const at::Tensor& grad_output, const at::Tensor& grad_h_n,
    const std::optional<at::Tensor>& grad_workspace, const at::Tensor& input, const at::Tensor& hx,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const std::optional<at::Tensor>& lengths,
    const at::Tensor& output, const at::Tensor& workspace, bool reverse, bool has_bias,
    bool need_input_grad, bool need_weight_grad) {
  return fusedgru::cuda::gru::backward_impl(grad_output, grad_h_n, grad_workspace, input, hx, w_ih,
                                            w_hh, lengths, output, workspace, reverse, has_bias,
                                            need_input_grad, need_weight_grad, launch);
}

template <typename Launch>
void define_gru_forward(pybind11::module_& m, const char* name) {
  def_op(
      m, name,
      +[](const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih,
          const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
          const std::optional<at::Tensor>& b_hh, const std::optional<at::Tensor>& lengths,
          bool reverse, bool need_workspace) {
        return gru_forward(launcher<Launch>(), input, hx, w_ih, w_hh, b_ih, b_hh, lengths, reverse,
                           need_workspace);
      });
}

template <typename Launch>
void define_gru_forward_bidirectional(pybind11::module_& m, const char* name) {
  def_op(
      m, name,
      +[](const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih,
          const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
          const std::optional<at::Tensor>& b_hh, const at::Tensor& w_ih_r, const at::Tensor& w_hh_r,
          const std::optional<at::Tensor>& b_ih_r, const std::optional<at::Tensor>& b_hh_r,
          const std::optional<at::Tensor>& lengths, bool need_workspace) {
        return fusedgru::cuda::gru::forward_bidirectional_impl(
            input, hx, w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r, b_hh_r, lengths,
            need_workspace, launcher<Launch>());
      });
}

fusedgru::GruBidirectionalGrads gru_backward_bidirectional(
    const StreamLauncher& launch, const at::Tensor& grad_output, const at::Tensor& grad_h_n,
    const std::optional<at::Tensor>& grad_ws, const std::optional<at::Tensor>& grad_ws_r,
    const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const at::Tensor& w_ih_r, const at::Tensor& w_hh_r, const std::optional<at::Tensor>& lengths,
    const at::Tensor& output, const at::Tensor& ws, const at::Tensor& ws_r, bool has_bias,
    bool need_input_grad, bool need_weight_grad) {
  return fusedgru::cuda::gru::backward_bidirectional_impl(
      grad_output, grad_h_n, grad_ws, grad_ws_r, input, hx, w_ih, w_hh, w_ih_r, w_hh_r, lengths,
      output, ws, ws_r, has_bias, need_input_grad, need_weight_grad, launch);
}

template <typename Launch>
void define_gru_backward_bidirectional(pybind11::module_& m, const char* name) {
  def_op(
      m, name,
      +[](const at::Tensor& grad_output, const at::Tensor& grad_h_n,
          const std::optional<at::Tensor>& grad_ws, const std::optional<at::Tensor>& grad_ws_r,
          const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih,
          const at::Tensor& w_hh, const at::Tensor& w_ih_r, const at::Tensor& w_hh_r,
          const std::optional<at::Tensor>& lengths, const at::Tensor& output, const at::Tensor& ws,
          const at::Tensor& ws_r, bool has_bias, bool need_input_grad, bool need_weight_grad) {
        return gru_backward_bidirectional(
            launcher<Launch>(), grad_output, grad_h_n, grad_ws, grad_ws_r, input, hx, w_ih, w_hh,
            w_ih_r, w_hh_r, lengths, output, ws, ws_r, has_bias, need_input_grad, need_weight_grad);
      });
}

template <typename Launch>
void define_gru_backward(pybind11::module_& m, const char* name) {
  def_op(
      m, name,
      +[](const at::Tensor& grad_output, const at::Tensor& grad_h_n,
          const std::optional<at::Tensor>& grad_workspace, const at::Tensor& input,
          const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh,
          const std::optional<at::Tensor>& lengths, const at::Tensor& output,
          const at::Tensor& workspace, bool reverse, bool has_bias, bool need_input_grad,
          bool need_weight_grad) {
        return gru_backward(launcher<Launch>(), grad_output, grad_h_n, grad_workspace, input, hx,
                            w_ih, w_hh, lengths, output, workspace, reverse, has_bias,
                            need_input_grad, need_weight_grad);
      });
}

void define_gru(pybind11::module_& m) {
  namespace cuda = fusedgru::cuda;
  // Same arguments as the fusedgru::gru_forward / gru_backward / gru_cell / ln_gru_* schemas.
  // gru_forward / gru_backward take the persistent kernels where they apply; the *_per_step
  // versions never do; the *_on versions run on the emulated device given first (devices()).
  define_gru_forward<OnH100>(m, "gru_forward");
  define_gru_forward<NoCooperative>(m, "gru_forward_per_step");
  define_gru_forward_bidirectional<OnH100>(m, "gru_forward_bidirectional");
  define_gru_forward_bidirectional<NoCooperative>(m, "gru_forward_bidirectional_per_step");
  def_op(
      m, "gru_forward_on",
      +[](int64_t device, const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih,
          const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
          const std::optional<at::Tensor>& b_hh, const std::optional<at::Tensor>& lengths,
          bool reverse, bool need_workspace) {
        return gru_forward(launcher_on(static_cast<int>(device)), input, hx, w_ih, w_hh, b_ih, b_hh,
                           lengths, reverse, need_workspace);
      });
  def_op(
      m, "gru_forward_bidirectional_on",
      +[](int64_t device, const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih,
          const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
          const std::optional<at::Tensor>& b_hh, const at::Tensor& w_ih_r, const at::Tensor& w_hh_r,
          const std::optional<at::Tensor>& b_ih_r, const std::optional<at::Tensor>& b_hh_r,
          const std::optional<at::Tensor>& lengths, bool need_workspace) {
        return cuda::gru::forward_bidirectional_impl(
            input, hx, w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r, b_hh_r, lengths,
            need_workspace, launcher_on(static_cast<int>(device)));
      });
  m.def("gru_persistent_blocks", [](int64_t T, int64_t N, int64_t H, bool fp64) {
    const auto plan = fp64 ? cuda::gru::persistent_forward_plan<double>(T, N, H, launcher<OnH100>())
                           : cuda::gru::persistent_forward_plan<float>(T, N, H, launcher<OnH100>());
    return static_cast<int64_t>(plan.blocks);
  });
  m.def("gru_persistent_backward_blocks", [](int64_t T, int64_t N, int64_t H, bool fp64) {
    const auto plan =
        fp64 ? cuda::gru::persistent_backward_plan<double>(T, N, H, true, false, launcher<OnH100>())
             : cuda::gru::persistent_backward_plan<float>(T, N, H, true, false, launcher<OnH100>());
    return static_cast<int64_t>(plan.blocks);
  });
  // The whole plan (J, KS, blocks, smem bytes) of the forward or backward persistent kernel on
  // an emulated device; the backward's for a launch with hprev and without grad_workspace.
  m.def("gru_persistent_plan", [](int64_t device, int64_t T, int64_t N, int64_t H, bool fp64,
                                  bool backward) {
    const StreamLauncher launch = launcher_on(static_cast<int>(device));
    const cuda::gru::PersistentPlan plan =
        backward ? (fp64 ? cuda::gru::persistent_backward_plan<double>(T, N, H, true, false, launch)
                         : cuda::gru::persistent_backward_plan<float>(T, N, H, true, false, launch))
                 : (fp64 ? cuda::gru::persistent_forward_plan<double>(T, N, H, launch)
                         : cuda::gru::persistent_forward_plan<float>(T, N, H, launch));
    return std::make_tuple(plan.J, plan.KS, static_cast<int64_t>(plan.blocks), plan.smem);
  });
  // The tensor-core forward's (or backward's, with h_{t-1} saved) plan on an emulated device for
  // "bf16", "fp16" or "fp32" (TF32): (J, RT, KS, KTW, NT, threads, blocks, smem bytes); J == 0
  // when it does not apply.
  const auto tc_plan = [](int64_t device, int64_t T, int64_t N, int64_t H, const std::string& dtype,
                          bool backward) {
    const StreamLauncher launch = launcher_on(static_cast<int>(device));
    const cuda::gru::TcPlan plan =
        dtype == "bf16"   ? cuda::gru::tc_plan<at::BFloat16>(T, N, H, backward, true, 1, launch)
        : dtype == "fp16" ? cuda::gru::tc_plan<at::Half>(T, N, H, backward, true, 1, launch)
                          : cuda::gru::tc_plan<float>(T, N, H, backward, true, 1, launch);
    return std::make_tuple(plan.J, plan.RT, plan.KS, plan.KTW, plan.NT, plan.threads,
                           static_cast<int64_t>(plan.blocks), plan.smem);
  };
  m.def("gru_tc_plan",
        [tc_plan](int64_t device, int64_t T, int64_t N, int64_t H, const std::string& dtype) {
          return tc_plan(device, T, N, H, dtype, false);
        });
  m.def("gru_tc_backward_plan",
        [tc_plan](int64_t device, int64_t T, int64_t N, int64_t H, const std::string& dtype) {
          return tc_plan(device, T, N, H, dtype, true);
        });
  // The path gru_forward / gru_backward (with hprev, without grad_workspace) take on an emulated
  // device for "bf16", "fp16", "fp32" or "fp64": (kernel "tc", "fma" or "" where no persistent
  // plan fits, predicted persistent us, predicted per-step us, whether the persistent kernel
  // is taken), under FUSEDGRU_PERSISTENT as it is set; directions = 2: both directions of a
  // bidirectional layer in one launch (per-step: both directions' time).
  m.def(
      "gru_path",
      [](int64_t device, int64_t T, int64_t N, int64_t H, const std::string& dtype, bool backward,
         int directions) {
        const StreamLauncher launch = launcher_on(static_cast<int>(device));
        const auto run = [&](auto zero) {
          using scalar_t = decltype(zero);
          return backward
                     ? cuda::gru::backward_path<scalar_t>(T, N, H, true, false, launch, directions)
                     : cuda::gru::forward_path<scalar_t>(T, N, H, launch, directions);
        };
        const cuda::gru::PathPlan path = dtype == "bf16"   ? run(at::BFloat16())
                                         : dtype == "fp16" ? run(at::Half())
                                         : dtype == "fp32" ? run(float())
                                                           : run(double());
        const std::string kernel = path.tc.J != 0 ? "tc" : path.fma.J != 0 ? "fma" : "";
        return std::make_tuple(kernel, path.cost.persistent_us, path.cost.per_step_us,
                               path.persistent);
      },
      pybind11::arg("device"), pybind11::arg("T"), pybind11::arg("N"), pybind11::arg("H"),
      pybind11::arg("dtype"), pybind11::arg("backward"), pybind11::arg("directions") = 1);
  define_gru_backward<OnH100>(m, "gru_backward");
  define_gru_backward<NoCooperative>(m, "gru_backward_per_step");
  define_gru_backward_bidirectional<OnH100>(m, "gru_backward_bidirectional");
  define_gru_backward_bidirectional<NoCooperative>(m, "gru_backward_bidirectional_per_step");
  def_op(
      m, "gru_backward_bidirectional_on",
      +[](int64_t device, const at::Tensor& grad_output, const at::Tensor& grad_h_n,
          const std::optional<at::Tensor>& grad_ws, const std::optional<at::Tensor>& grad_ws_r,
          const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih,
          const at::Tensor& w_hh, const at::Tensor& w_ih_r, const at::Tensor& w_hh_r,
          const std::optional<at::Tensor>& lengths, const at::Tensor& output, const at::Tensor& ws,
          const at::Tensor& ws_r, bool has_bias, bool need_input_grad, bool need_weight_grad) {
        return gru_backward_bidirectional(launcher_on(static_cast<int>(device)), grad_output,
                                          grad_h_n, grad_ws, grad_ws_r, input, hx, w_ih, w_hh,
                                          w_ih_r, w_hh_r, lengths, output, ws, ws_r, has_bias,
                                          need_input_grad, need_weight_grad);
      });
  def_op(
      m, "gru_backward_on",
      +[](int64_t device, const at::Tensor& grad_output, const at::Tensor& grad_h_n,
          const std::optional<at::Tensor>& grad_workspace, const at::Tensor& input,
          const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh,
          const std::optional<at::Tensor>& lengths, const at::Tensor& output,
          const at::Tensor& workspace, bool reverse, bool has_bias, bool need_input_grad,
          bool need_weight_grad) {
        return gru_backward(launcher_on(static_cast<int>(device)), grad_output, grad_h_n,
                            grad_workspace, input, hx, w_ih, w_hh, lengths, output, workspace,
                            reverse, has_bias, need_input_grad, need_weight_grad);
      });
  def_op(
      m, "gru_cell",
      +[](const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih,
          const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
          const std::optional<at::Tensor>& b_hh) {
        return cuda::gru::cell_impl(input, hx, w_ih, w_hh, b_ih, b_hh, launcher<OnH100>());
      });
  def_op(
      m, "ln_gru_forward",
      +[](const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih,
          const at::Tensor& w_hh, const at::Tensor& g_i, const at::Tensor& b_i,
          const at::Tensor& g_h, const at::Tensor& b_h, const std::optional<at::Tensor>& lengths,
          bool reverse, double eps, bool need_workspace) {
        return cuda::ln_gru::forward_impl(input, hx, w_ih, w_hh, g_i, b_i, g_h, b_h, lengths,
                                          reverse, eps, need_workspace, launcher<OnH100>());
      });
  def_op(
      m, "ln_gru_backward",
      +[](const at::Tensor& grad_output, const at::Tensor& grad_h_n, const at::Tensor& input,
          const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh,
          const at::Tensor& g_i, const at::Tensor& g_h, const at::Tensor& b_h,
          const std::optional<at::Tensor>& lengths, const at::Tensor& output,
          const at::Tensor& workspace, bool reverse, bool need_input_grad, bool need_weight_grad) {
        return cuda::ln_gru::backward_impl(grad_output, grad_h_n, input, hx, w_ih, w_hh, g_i, g_h,
                                           b_h, lengths, output, workspace, reverse,
                                           need_input_grad, need_weight_grad, launcher<OnH100>());
      });
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  define_runtime_hooks(m);
  def_op(
      m, "gemm", +[](at::Tensor out, const at::Tensor& a, const at::Tensor& b, double beta) {
        fusedgru::cuda::gemm::matmul(out, a, b, beta, launcher<OnH100>());
        return out;
      });
  define_conv<OnH100>(m, "");
  define_conv<SmallSmem>(m, "_small_smem");
  define_gru(m);
}
