// Pieces every CUDA kernel file shares: dynamic shared memory, 16-byte vectors and the launcher.
//
// Host code that launches kernels is written once as a template over a launcher,
//   launch(kernel, grid, block, dynamic_smem_bytes, args...)   and   launch.max_smem(),
// so the same code runs the kernels on the current CUDA stream (StreamLauncher, here) and,
// in the tests, under the host emulator of tests/cuda_emu (which defines FUSEDGRU_CUDA_EMU).
#pragma once

#ifndef FUSEDGRU_CUDA_EMU
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#endif

#include <cstddef>
#include <optional>
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
