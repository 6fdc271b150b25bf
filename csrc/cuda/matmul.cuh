// The GEMMs of the CUDA GRU ops, and the math they run in.
//
// fp32 math follows nn.GRU on CUDA. cuDNN's RNN takes TF32 exactly when
// at::Context::allowTF32CuDNN(Float32Op::RNN) says so (aten/src/ATen/native/cudnn/RNN.cpp): the
// cuDNN RNN precision, torch.backends.cudnn.rnn.fp32_precision, which the legacy
// torch.backends.cudnn.allow_tf32 sets too. We make the same per-op call, which never raises
// (the op-less allowTF32CuDNN() and allowTF32CuBLAS() do when legacy and new flags were mixed),
// once per op, and act on it for this call only, writing no flag anywhere:
//   - TF32 on: the fp32 GEMMs run through cuBLAS with the CUBLAS_COMPUTE_32F_FAST_TF32 compute
//     type on ATen's handle for this thread and stream (launch.tf32_gemm: StreamLauncher in
//     launch.cuh; the emulator rounds the operands to TF32 and multiplies on the CPU);
//   - TF32 off: ATen's GEMMs under at::NoTF32Guard, a thread-local override that makes ATen set
//     the handle's math mode to CUBLAS_DEFAULT_MATH (strict fp32) for them.
// Other dtypes run ATen's GEMMs (bf16/fp16 accumulate in fp32). Deterministic mode where ATen
// would refuse cuBLAS: gemm_kernels.cuh's fixed-order kernel (strict fp32 FMAs, also when the
// RNN flag allows TF32: more precise than asked, never less).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Context.h>

#include "../fusedgru.h"
#include "gemm_kernels.cuh"

namespace fusedgru {
namespace cuda {

// Whether fp32 GEMMs of the GRU ops may use TF32 tensor cores: nn.GRU's own test on CUDA.
inline bool rnn_allows_tf32() { return at::globalContext().allowTF32CuDNN(at::Float32Op::RNN); }

// How a row-major [R, K] view of a tensor is stored, in cuBLAS's terms.
struct StoredAs {
  bool row_major;  // stored as the column-major K x R matrix (its transpose), else as R x K
  int64_t ld;
};

// nullopt when the view has no unit stride (or a column stride cuBLAS can't take): copy it.
inline std::optional<StoredAs> stored_as(const at::Tensor& t) {
  const int64_t R = t.size(0), K = t.size(1);
  if (t.stride(1) == 1 || K == 1) {
    const int64_t ld = R == 1 ? std::max<int64_t>(K, 1) : t.stride(0);
    if (ld >= std::max<int64_t>(K, 1)) return StoredAs{true, ld};
  }
  if (t.stride(0) == 1 || R == 1) {
    const int64_t ld = K == 1 ? std::max<int64_t>(R, 1) : t.stride(1);
    if (ld >= std::max<int64_t>(R, 1)) return StoredAs{false, ld};
  }
  return std::nullopt;
}

// out [M, N] = beta * out + a [M, K] @ b [K, N] (fp32, any strides), as one column-major GEMM
// `run(ColumnMajorGemm)`. A row-major C is the column-major C^T = B^T A^T; a column-major C is
// C = A B. Operands without a unit stride are copied first; so is out (then copied back).
template <typename Run>
void column_major_matmul(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, double beta,
                         const Run& run) {
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  if (M == 0 || N == 0) return;
  if (K == 0) {
    beta == 0 ? out.zero_() : out.mul_(beta);
    return;
  }
  const std::optional<StoredAs> so = stored_as(out);
  if (!so.has_value()) {
    at::Tensor tmp = out.contiguous();
    column_major_matmul(tmp, a, b, beta, run);
    out.copy_(tmp);
    return;
  }
  const at::Tensor ac = stored_as(a).has_value() ? a : a.contiguous();
  const at::Tensor bc = stored_as(b).has_value() ? b : b.contiguous();
  const StoredAs sa = *stored_as(ac), sb = *stored_as(bc);
  ColumnMajorGemm g{};
  g.c = out.data_ptr<float>();
  g.ldc = so->ld;
  g.beta = static_cast<float>(beta);
  if (so->row_major) {  // C^T [N, M] = B^T [N, K] A^T [K, M]
    g.m = N;
    g.n = M;
    g.k = K;
    g.a = bc.const_data_ptr<float>();
    g.trans_a = !sb.row_major;
    g.lda = sb.ld;
    g.b = ac.const_data_ptr<float>();
    g.trans_b = !sa.row_major;
    g.ldb = sa.ld;
  } else {  // C [M, N] = A [M, K] B [K, N]
    g.m = M;
    g.n = N;
    g.k = K;
    g.a = ac.const_data_ptr<float>();
    g.trans_a = sa.row_major;
    g.lda = sa.ld;
    g.b = bc.const_data_ptr<float>();
    g.trans_b = sb.row_major;
    g.ldb = sb.ld;
  }
  run(g);
}

// The GEMMs one GRU op runs on `dtype`, with the math chosen above for this call.
template <typename Launch>
Matmul matmul_for(const Launch& launch, at::ScalarType dtype) {
  if (gemm::cublas_refuses()) {
    return [launch](at::Tensor& out, const at::Tensor& a, const at::Tensor& b, double beta) {
      gemm::matmul(out, a, b, beta, launch);
    };
  }
  if (dtype != at::kFloat) return aten_matmul;
  if (rnn_allows_tf32()) {
    return [launch](at::Tensor& out, const at::Tensor& a, const at::Tensor& b, double beta) {
      column_major_matmul(out, a, b, beta, [&](const ColumnMajorGemm& g) { launch.tf32_gemm(g); });
    };
  }
  return [](at::Tensor& out, const at::Tensor& a, const at::Tensor& b, double beta) {
    const at::NoTF32Guard strict_fp32;
    aten_matmul(out, a, b, beta);
  };
}

}  // namespace cuda
}  // namespace fusedgru
