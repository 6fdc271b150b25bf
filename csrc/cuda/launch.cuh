// Pieces every CUDA kernel file shares: dynamic shared memory, 16-byte vectors and the launcher.
//
// Host code that launches kernels is written once as a template over a launcher,
//   launch(kernel, grid, block, dynamic_smem_bytes, args...),  launch.max_smem(),
//   launch.compute_major()                                     (the device's compute capability),
//   launch.try_cooperative(kernel, grid, block, smem, args...) (all blocks resident at once;
//                                                               false if the device refuses)
//   and launch.coresident_blocks(kernel, block, smem)           (the largest cooperative grid),
//   and launch.tf32_gemm(ColumnMajorGemm)                      (an fp32 GEMM in TF32, cuBLAS),
// so the same code runs the kernels on the current CUDA stream (StreamLauncher, here) and,
// in the tests, under the host emulator of tests/cuda_emu (which defines FUSEDGRU_CUDA_EMU and
// provides the CUDA runtime and cuBLAS calls StreamLauncher makes, emulated).
#pragma once

#ifndef FUSEDGRU_CUDA_EMU
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/Exceptions.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cooperative_groups.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>
#endif

#include <c10/util/Exception.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <mutex>
#include <optional>
#include <set>
#include <tuple>
#include <type_traits>
#include <utility>

#include "../align.h"

namespace fusedgru {
namespace cuda {

// The block's dynamic shared memory, 16-byte aligned.
template <typename T>
__device__ __forceinline__ T* dynamic_smem() {
#ifdef FUSEDGRU_CUDA_EMU
  return reinterpret_cast<T*>(emu::dynamic_smem());
#else
  extern __shared__ __align__(16) unsigned char fusedgru_dynamic_smem[];
  return reinterpret_cast<T*>(fusedgru_dynamic_smem);
#endif
}

// Barrier over every thread of a cooperative launch (with its memory ordering).
__device__ __forceinline__ void grid_sync() {
#ifdef FUSEDGRU_CUDA_EMU
  emu::grid_sync();
#else
  cooperative_groups::this_grid().sync();
#endif
}

// A load that bypasses L1 (which is not coherent across SMs): for data other blocks wrote
// before the last grid_sync().
template <typename T>
__device__ __forceinline__ T load_cg(const T* p) {
  using Bits =
      std::conditional_t<sizeof(T) == 2, unsigned short,
                         std::conditional_t<sizeof(T) == 4, unsigned int, unsigned long long>>;
  static_assert(sizeof(T) == sizeof(Bits), "load_cg: 2, 4 or 8 bytes");
  const Bits bits = __ldcg(reinterpret_cast<const Bits*>(p));
  T v;
  memcpy(&v, &bits, sizeof(T));
  return v;
}

// kN elements of T moved as one 16-byte load or store (when the address is 16-byte aligned).
template <typename T, int kN>
struct alignas(sizeof(T) * kN) Vec {
  T v[kN];
};

// One vector access: 16 bytes. A second array in shared memory starts at a multiple of it
// (round_up(bytes, kVecBytes)) so that its vector accesses stay aligned.
constexpr int64_t kVecBytes = 16;
template <typename T>
constexpr int kVecElems = static_cast<int>(kVecBytes / sizeof(T));

constexpr size_t kDefaultSmem = 48 * 1024;  // dynamic shared memory without an opt-in

// An fp32 GEMM for launch.tf32_gemm (matmul.cuh), in cuBLAS's column-major terms:
// C = op(A) op(B) + beta C with op(A) m x k, op(B) k x n, C m x n; ld* are the column strides of
// the stored matrices (elements).
struct ColumnMajorGemm {
  bool trans_a, trans_b;
  int64_t m, n, k, lda, ldb, ldc;
  const float* a;
  const float* b;
  float* c;
  float beta;
};

// The cudaLaunchKernelEx configuration of one launch, with the cooperative attribute when asked:
// StreamLauncher's, and that of the emulator's launch probes (tests/cuda_emu/emu_ops.cpp), which
// launch straight through the runtime so that nothing opts a planted bad launch in. Not
// copyable: config.attrs points into it.
struct LaunchConfig {
  cudaLaunchAttribute cooperative_attr[1];
  cudaLaunchConfig_t config = {};
  LaunchConfig(dim3 grid, dim3 block, size_t smem, cudaStream_t stream, bool cooperative) {
    cooperative_attr[0].id = cudaLaunchAttributeCooperative;
    cooperative_attr[0].val.cooperative = 1;
    config.gridDim = grid;
    config.blockDim = block;
    config.dynamicSmemBytes = smem;
    config.stream = stream;
    config.attrs = cooperative ? cooperative_attr : nullptr;
    config.numAttrs = cooperative ? 1 : 0;
  }
  LaunchConfig(const LaunchConfig&) = delete;
  LaunchConfig& operator=(const LaunchConfig&) = delete;
};

// Launches on one stream through the CUDA runtime: the real one, or under FUSEDGRU_CUDA_EMU the
// emulated runtime of tests/cuda_emu/emu_runtime.h, which enforces a GPU's launch rules (48 KB
// of dynamic shared memory without the opt-in, the opt-in maximum, threads per block, the
// co-resident limit of cooperative grids), so this exact logic runs in the CPU tests.
struct StreamLauncher {
  cudaStream_t stream;

  // The device's opt-in limit of dynamic shared memory per block.
  size_t max_smem() const {
    int device = 0, bytes = 0;
    C10_CUDA_CHECK(cudaGetDevice(&device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    return static_cast<size_t>(bytes);
  }

  // The device's compute capability, major number (tensor-core kernels need 8 or more).
  int compute_major() const {
    int device = 0, major = 0;
    C10_CUDA_CHECK(cudaGetDevice(&device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    return major;
  }

  template <typename... KernelArgs, typename... Args>
  void operator()(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem,
                  Args&&... args) const {
    launch_ex(false, kernel, grid, block, smem, std::forward<Args>(args)...);
  }

  // How many blocks of `kernel` can be resident at once on the device (0 when the device
  // cannot launch cooperatively): the largest grid launch.try_cooperative accepts.
  template <typename... KernelArgs>
  int64_t coresident_blocks(void (*kernel)(KernelArgs...), dim3 block, size_t smem) const {
    int device = 0, coop = 0, sms = 0, per_sm = 0;
    C10_CUDA_CHECK(cudaGetDevice(&device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    if (!coop) return 0;
    if (smem > kDefaultSmem) allow_max_smem(kernel, device);
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
        &per_sm, kernel, static_cast<int>(block.x * block.y * block.z), smem));
    return static_cast<int64_t>(per_sm) * sms;
  }

  // A cooperative launch (all blocks resident at once; kernels may call grid_sync()), through
  // cudaLaunchKernelEx with the cooperative attribute, which stream capture records as a
  // cooperative kernel node (CUDA graphs). A grid the device refuses to co-schedule
  // (cudaErrorCooperativeLaunchTooLarge: e.g. under MPS, or in a green context with fewer SMs
  // than the occupancy query counted) returns false, with the error cleared, so that the caller
  // takes another path; any other error raises.
  template <typename... KernelArgs, typename... Args>
  bool try_cooperative(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem,
                       Args&&... args) const {
    return launch_ex(true, kernel, grid, block, smem, std::forward<Args>(args)...);
  }

  // A column-major fp32 GEMM in TF32 (matmul.cuh) on ATen's cuBLAS handle for this thread and
  // device, which getCurrentCUDABlasHandle binds to the current stream and ATen's workspace.
  // The compute type asks for TF32 whatever math mode the handle carries.
  void tf32_gemm(const ColumnMajorGemm& g) const {
    constexpr int64_t kMax = std::numeric_limits<int>::max();
    TORCH_CHECK(g.m <= kMax && g.n <= kMax && g.k <= kMax && g.lda <= kMax && g.ldb <= kMax &&
                    g.ldc <= kMax,
                "fusedgru: GEMM too large for cuBLAS's 32-bit sizes: ", g.m, " x ", g.n, " x ",
                g.k);
    const float alpha = 1.0f;
    TORCH_CUDABLAS_CHECK(cublasGemmEx(
        at::cuda::getCurrentCUDABlasHandle(), g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
        g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, static_cast<int>(g.m), static_cast<int>(g.n),
        static_cast<int>(g.k), &alpha, g.a, CUDA_R_32F, static_cast<int>(g.lda), g.b, CUDA_R_32F,
        static_cast<int>(g.ldb), &g.beta, g.c, CUDA_R_32F, static_cast<int>(g.ldc),
        CUBLAS_COMPUTE_32F_FAST_TF32, CUBLAS_GEMM_DEFAULT));
  }

 private:
  template <typename... KernelArgs, typename... Args>
  bool launch_ex(bool cooperative, void (*kernel)(KernelArgs...), dim3 grid, dim3 block,
                 size_t smem, Args&&... args) const {
    if (smem > kDefaultSmem) {
      int device = 0;
      C10_CUDA_CHECK(cudaGetDevice(&device));
      allow_max_smem(kernel, device);
    }
    const LaunchConfig launch(grid, block, smem, stream, cooperative);
    const cudaError_t err = cudaLaunchKernelEx(&launch.config, kernel, std::forward<Args>(args)...);
    if (cooperative && err == cudaErrorCooperativeLaunchTooLarge) {
      (void)cudaGetLastError();
      return false;
    }
    C10_CUDA_CHECK(err);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return true;
  }

  // Raises the kernel's dynamic shared-memory limit on `device` once, to the most it can take
  // (the opt-in maximum less its static shared memory), so every later launch of any size up
  // to that needs no attribute call. (Setting it to each launch's own size lets two host
  // threads interleave set and launch, and one launch then fails.)
  template <typename... KernelArgs>
  static void allow_max_smem(void (*kernel)(KernelArgs...), int device) {
    static std::mutex mutex;
    static std::set<std::pair<int, const void*>> raised;
    const std::pair<int, const void*> key{device, reinterpret_cast<const void*>(kernel)};
    const std::lock_guard<std::mutex> lock(mutex);
    if (raised.count(key) != 0) return;
    int optin = 0;
    cudaFuncAttributes attrs{};
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    C10_CUDA_CHECK(cudaFuncGetAttributes(&attrs, kernel));
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        optin - static_cast<int>(attrs.sharedSizeBytes)));
    raised.insert(key);
  }
};

#ifndef FUSEDGRU_CUDA_EMU
inline StreamLauncher current_stream_launcher() {
  return StreamLauncher{c10::cuda::getCurrentCUDAStream().stream()};
}

// The device for an op's CUDA guard: x's when it is a CUDA tensor; otherwise none, and the op's
// own checks then say which argument is on the wrong device.
inline std::optional<c10::Device> cuda_device(const at::Tensor& x) {
  return x.is_cuda() ? std::make_optional(x.device()) : std::nullopt;
}

// An op's CUDA entry point, made from its launch code impl(the op's arguments..., launch): impl
// on the current stream, under a guard of the first argument's device (all of an op's tensors
// are on one device; its checks name any that is not). Its signature is impl's less the
// launcher, so an op's argument list is written once for CUDA, in its launch code:
//   m.impl("gru_forward", cuda_op<&gru::forward_impl<StreamLauncher>>);
template <typename Impl>
struct OpArity;
template <typename R, typename... Args>
struct OpArity<R (*)(Args...)> {
  static constexpr size_t value = sizeof...(Args) - 1;  // less the launcher
};
template <auto impl, typename Impl = decltype(impl),
          typename OpArgs = std::make_index_sequence<OpArity<Impl>::value>>
struct CurrentStreamOp;
template <auto impl, typename R, typename... Args, size_t... I>
struct CurrentStreamOp<impl, R (*)(Args...), std::index_sequence<I...>> {
  static R run(std::tuple_element_t<I, std::tuple<Args...>>... args) {
    const c10::cuda::OptionalCUDAGuard guard(cuda_device(std::get<0>(std::tie(args...))));
    return impl(args..., current_stream_launcher());
  }
};
template <auto impl>
constexpr auto cuda_op = &CurrentStreamOp<impl>::run;
#endif

}  // namespace cuda
}  // namespace fusedgru
