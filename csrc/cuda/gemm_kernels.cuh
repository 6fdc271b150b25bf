// A plain tiled GEMM with a fixed summation order, for deterministic mode.
//
// Under torch.use_deterministic_algorithms(True), ATen refuses cuBLAS GEMMs unless the user sets
// CUBLAS_WORKSPACE_CONFIG before starting the process. The GRU ops then run their GEMMs here
// instead (no environment variable needed; matmul.cuh chooses): bitwise reproducible, fp32
// accumulation (fp64 for double), no tensor cores, so slower than cuBLAS on large products.
//
// C [M, N] = beta * C + A [M, K] B [K, N]; any strides for all three. A block computes a 64 x 64
// tile of C with 16 x 16 threads (4 x 4 outputs each) over K in steps of 16 staged in shared
// memory; grid (ceil(M / 64), ceil(N / 64)).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <cstdlib>
#include <cstring>

#include "../fusedgru.h"
#include "launch.cuh"

namespace fusedgru {
namespace cuda {
namespace gemm {

using at::Tensor;

constexpr int kTile = 64, kStep = 16, kThreads = 256;

struct GemmParams {
  const void* a;  // [M, K] strides (a_m, a_k)
  const void* b;  // [K, N] strides (b_k, b_n)
  void* c;        // [M, N] strides (c_m, c_n)
  int64_t M, N, K, a_m, a_k, b_k, b_n, c_m, c_n;
  double beta;
};

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) gemm_kernel(GemmParams p) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t as[kStep][kTile + 1];
  __shared__ acc_t bs[kStep][kTile + 1];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kTile;
  const auto* a = static_cast<const scalar_t*>(p.a);
  const auto* b = static_cast<const scalar_t*>(p.b);
  const bool a_k_fast = p.a_k == 1, b_n_fast = p.b_n == 1;  // coalesced order of the loads
  acc_t acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = acc_t(0);
  }
  for (int64_t k0 = 0; k0 < p.K; k0 += kStep) {
    for (int e = threadIdx.x; e < kTile * kStep; e += kThreads) {
      const int mm = a_k_fast ? e / kStep : e % kTile, kk = a_k_fast ? e % kStep : e / kTile;
      const int64_t m = m0 + mm, k = k0 + kk;
      as[kk][mm] = m < p.M && k < p.K ? acc_t(a[m * p.a_m + k * p.a_k]) : acc_t(0);
    }
    for (int e = threadIdx.x; e < kTile * kStep; e += kThreads) {
      const int nn = b_n_fast ? e % kTile : e / kStep, kk = b_n_fast ? e / kTile : e % kStep;
      const int64_t n = n0 + nn, k = k0 + kk;
      bs[kk][nn] = n < p.N && k < p.K ? acc_t(b[k * p.b_k + n * p.b_n]) : acc_t(0);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kStep; ++kk) {
      acc_t av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        av[i] = as[kk][ty + 16 * i];
        bv[i] = bs[kk][tx + 16 * i];
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += av[i] * bv[j];
      }
    }
    __syncthreads();
  }
  auto* c = static_cast<scalar_t*>(p.c);
  const acc_t beta = static_cast<acc_t>(p.beta);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t m = m0 + ty + 16 * i, n = n0 + tx + 16 * j;
      if (m < p.M && n < p.N) {
        scalar_t* cp = c + m * p.c_m + n * p.c_n;
        *cp = scalar_t(p.beta == 0 ? acc[i][j] : beta * acc_t(*cp) + acc[i][j]);
      }
    }
  }
}

// out = beta * out + a @ b, the Matmul contract of fusedgru.h, through gemm_kernel.
template <typename Launch>
void matmul(Tensor& out, const Tensor& a, const Tensor& b, double beta, const Launch& launch) {
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  TORCH_CHECK(b.size(0) == K && out.size(0) == M && out.size(1) == N,
              "fusedgru gemm: shape mismatch ", a.sizes(), " @ ", b.sizes(), " -> ", out.sizes());
  if (M == 0 || N == 0) return;
  GemmParams p{
      a.data_ptr(), b.data_ptr(),  out.data_ptr(), M,   N, K, a.stride(0), a.stride(1), b.stride(0),
      b.stride(1),  out.stride(0), out.stride(1),  beta};
  const dim3 grid(static_cast<unsigned int>((M + kTile - 1) / kTile),
                  static_cast<unsigned int>((N + kTile - 1) / kTile));
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, out.scalar_type(), "fusedgru_gemm",
      [&] { launch(gemm_kernel<scalar_t>, grid, dim3(kThreads), 0, p); });
}

// Whether ATen's cuBLAS GEMMs would refuse to run, decided as ATen decides it
// (at::Context::alertCuBLASConfigNotDeterministic): deterministic algorithms requested without
// warn_only (with it, ATen runs cuBLAS and warns, and so do we), and CUBLAS_WORKSPACE_CONFIG not
// one of the deterministic workspace configurations when first read (ATen reads it once).
inline bool cublas_refuses() {
  const auto& ctx = at::globalContext();
  if (!ctx.deterministicAlgorithms() || ctx.deterministicAlgorithmsWarnOnly()) return false;
  static const bool config_deterministic = [] {
    const char* cfg = std::getenv("CUBLAS_WORKSPACE_CONFIG");
    return cfg != nullptr && (std::strcmp(cfg, ":4096:8") == 0 || std::strcmp(cfg, ":16:8") == 0);
  }();
  return !config_deterministic;
}

}  // namespace gemm
}  // namespace cuda
}  // namespace fusedgru
