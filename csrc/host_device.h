// FUSEDGRU_HOST_DEVICE: marks arithmetic written once for both devices, an inline function that
// the CPU loops and the CUDA kernels both call (under nvcc a __host__ __device__ function; in
// the C++ build, and under the host CUDA emulator, always inlined like the CPU's own helpers,
// so the CPU loops that call it still vectorize). Such a function takes and returns values
// (or writes through the caller's pointers only where the caller would): no allocation, no
// ATen calls.
#pragma once

#if defined(__CUDACC__)
#define FUSEDGRU_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FUSEDGRU_HOST_DEVICE inline __attribute__((always_inline))
#endif
