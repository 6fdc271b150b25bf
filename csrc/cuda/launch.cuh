// Pieces every CUDA kernel file shares: dynamic shared memory, 16-byte vectors and the launcher.
//
// Host code that launches kernels is written once as a template over a launcher,
//   launch(kernel, grid, block, dynamic_smem_bytes, args...),  launch.max_smem(),
//   launch.cooperative(kernel, grid, block, smem, args...)     (all blocks resident at once)
//   and launch.coresident_blocks(kernel, block, smem)           (the largest cooperative grid),
// so the same code runs the kernels on the current CUDA stream (StreamLauncher, here) and,
// in the tests, under the host emulator of tests/cuda_emu (which defines FUSEDGRU_CUDA_EMU).
#pragma once

#ifndef FUSEDGRU_CUDA_EMU
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <cooperative_groups.h>
#include <cuda_runtime.h>
#endif

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <type_traits>
#include <utility>

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
  using Bits = std::conditional_t<sizeof(T) == 2, unsigned short,
                                  std::conditional_t<sizeof(T) == 4, unsigned int,
                                                     unsigned long long>>;
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

template <typename T>
constexpr int kVecElems = 16 / static_cast<int>(sizeof(T));

constexpr size_t kDefaultSmem = 48 * 1024;  // dynamic shared memory without an opt-in

#ifndef FUSEDGRU_CUDA_EMU
// Launches on one stream; opts in to more than 48 KB of dynamic shared memory when asked.
struct StreamLauncher {
  cudaStream_t stream;

  size_t max_smem() const {
    int device = 0, bytes = 0;
    C10_CUDA_CHECK(cudaGetDevice(&device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    return static_cast<size_t>(bytes);
  }

  template <typename... KernelArgs, typename... Args>
  void operator()(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem,
                  Args&&... args) const {
    if (smem > kDefaultSmem) {
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(smem)));
    }
    kernel<<<grid, block, smem, stream>>>(std::forward<Args>(args)...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  // How many blocks of `kernel` can be resident at once on the device (0 when the device
  // cannot launch cooperatively): the largest grid launch.cooperative accepts.
  template <typename... KernelArgs>
  int64_t coresident_blocks(void (*kernel)(KernelArgs...), dim3 block, size_t smem) const {
    int device = 0, coop = 0, sms = 0, per_sm = 0;
    C10_CUDA_CHECK(cudaGetDevice(&device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    if (!coop) return 0;
    if (smem > kDefaultSmem) {
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(smem)));
    }
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
        &per_sm, kernel, static_cast<int>(block.x * block.y * block.z), smem));
    return static_cast<int64_t>(per_sm) * sms;
  }

  // A cooperative launch (all blocks resident at once; kernels may call grid_sync()), through
  // cudaLaunchKernelEx with the cooperative attribute, which stream capture records as a
  // cooperative kernel node (CUDA graphs).
  template <typename... KernelArgs, typename... Args>
  void cooperative(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem,
                   Args&&... args) const {
    if (smem > kDefaultSmem) {
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(smem)));
    }
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeCooperative;
    attr[0].val.cooperative = 1;
    cudaLaunchConfig_t config = {};
    config.gridDim = grid;
    config.blockDim = block;
    config.dynamicSmemBytes = smem;
    config.stream = stream;
    config.attrs = attr;
    config.numAttrs = 1;
    C10_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

inline StreamLauncher current_stream_launcher() {
  return StreamLauncher{c10::cuda::getCurrentCUDAStream().stream()};
}

// The device for an op's CUDA guard: x's when it is a CUDA tensor; otherwise none, and the op's
// own checks then say which argument is on the wrong device.
inline std::optional<c10::Device> cuda_device(const at::Tensor& x) {
  return x.is_cuda() ? std::make_optional(x.device()) : std::nullopt;
}
#endif

}  // namespace cuda
}  // namespace fusedgru
