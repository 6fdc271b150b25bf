// Pieces shared by the CUDA GRU kernels.
#pragma once

#include <ATen/Context.h>

#include <optional>

namespace fusedgru {
namespace cuda {

template <typename T>
__device__ __forceinline__ T sigmoid_(T x) {
  return T(1) / (T(1) + exp(-x));
}

// ATen's GEMMs (cuBLAS) follow torch.backends.cuda.matmul.allow_tf32; nn.GRU's float32 math on
// CUDA follows torch.backends.cudnn.allow_tf32. For the scope of one op, make the former match
// the latter: TF32 off through at::NoTF32Guard (thread-local), or on by raising the cuBLAS flag
// and restoring it on exit (a process-wide flag, held only while the op runs).
class CudnnTf32Policy {
 public:
  CudnnTf32Policy() {
    auto& ctx = at::globalContext();
    if (!ctx.allowTF32CuDNN()) {
      no_tf32_.emplace();
    } else if (!ctx.allowTF32CuBLAS()) {
      ctx.setAllowTF32CuBLAS(true);
      restore_ = true;
    }
  }
  ~CudnnTf32Policy() {
    if (restore_) at::globalContext().setAllowTF32CuBLAS(false);
  }
  CudnnTf32Policy(const CudnnTf32Policy&) = delete;
  CudnnTf32Policy& operator=(const CudnnTf32Policy&) = delete;

 private:
  std::optional<at::NoTF32Guard> no_tf32_;
  bool restore_ = false;
};

}  // namespace cuda
}  // namespace fusedgru
