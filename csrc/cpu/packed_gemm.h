// fp32 GEMM for the CPU GRU with the right operand packed once per call into column panels:
//   C[M, cols] = A[M, K] B[K, cols]  (or C += A B)
// MKL, which ATen calls for fp32 products, reaches about half of an AVX-512 core's FMA rate on
// the GRU's small-M step products (M = N rows: 56-60 GFLOP/s of ~117 on one Zen 4 core, see
// benchmarks/NOTES.md) and ~165 GFLOP/s of ~234 on two cores on the input projection. Here B is
// copied once per call into panels of kPanel = 16 columns (one AVX-512 vector of floats, two
// AVX2 vectors), stored [panel][K][16] so a panel streams sequentially, and a micro-tile keeps
// its accumulators in registers: with AVX-512F up to 8 rows x 3 panels (per k, 3 vector loads
// of B and 8 broadcasts of A feed 24 FMAs); with AVX2 + FMA up to 6 rows x 1 panel (2 loads of
// B and 6 broadcasts feed 12 FMAs; fewer rows take more panels).
// Every output element is one chain over k = 0, 1, ..., K - 1 with one FMA per term, so the
// result does not depend on the tiling, on M, on the split over threads, on the thread count
// or on which of the two instruction sets ran (bitwise equal).
// x86-64 with AVX-512F or AVX2 + FMA only (checked at run time); elsewhere, and when
// FUSEDGRU_PACKED_GEMM=0, callers use ATen. FUSEDGRU_PACKED_GEMM=avx2 takes the AVX2 tiles on
// an AVX-512 CPU too (so tests there cover them). Read at every call: tests and benchmarks
// compare the paths in one process. Shape legend: M rows, K the reduction, cols output columns.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cstdint>

namespace fusedgru {
namespace cpu {

// One AVX-512 vector of floats (two AVX2 vectors): the width of a panel.
constexpr int64_t kPanel = 16;

// One panel: dst[k kPanel + l] = src[l][k sk] for k < K, l < w <= kPanel; columns l >= w zero.
// The panels of the GRU's weights are a transpose (sk = 1: each column is a row of W, read 8
// floats at a time and transposed in registers where the CPU has AVX2) or rows of 16
// consecutive floats (copied per k); anything else element by element.
void pack_panel(const float* const* src, int64_t w, int64_t K, int64_t sk, float* dst);

// The micro-tiles a product runs on.
enum class PackedIsa { kAvx512, kAvx2 };

// B [K, cols] in panels [panel][K][kPanel] (64-byte aligned); a partial last panel's padding
// columns are zero. Every panel must be packed before use. isa: the tiles gemm_packed runs on
// it, chosen when it is made (packed_isa).
struct PackedB {
  at::Tensor buf;
  int64_t K = 0, panels = 0;
  PackedIsa isa = PackedIsa::kAvx512;
  PackedB() = default;
  PackedB(int64_t K, int64_t panels);
  // Columns [0, cols) from panel p0 on: element (k, c) at col(c)[k sk], the columns past cols
  // of the last panel zero. Run by the thread that will use the panels (its memory, its cache).
  template <typename ColFn>
  void pack(int64_t p0, int64_t cols, int64_t sk, const ColFn& col) {
    float* dst = buf.mutable_data_ptr<float>() + p0 * K * kPanel;
    for (int64_t c0 = 0; c0 < cols; c0 += kPanel, dst += K * kPanel) {
      const float* src[kPanel];
      const int64_t w = std::min(kPanel, cols - c0);
      for (int64_t l = 0; l < w; ++l) src[l] = col(c0 + l);
      pack_panel(src, w, K, sk, dst);
    }
  }
  const float* data() const { return buf.const_data_ptr<float>(); }
};

// bf16 B [K, cols] for AVX512-BF16's dot products, which multiply pairs of consecutive k: panels
// of kPanel columns stored [panel][pair][kPanel][2] (one 64-byte vector per pair of k), an odd
// K's last pair and a last panel's padding columns zero. Made only where bf16_dot_enabled().
struct PackedBf16 {
  at::Tensor buf;
  int64_t K = 0, pairs = 0, panels = 0;
  PackedBf16() = default;
  PackedBf16(int64_t K, int64_t panels);
  // Columns [0, cols): element (k, c) at col(c)[k sk], as PackedB::pack (p0 = 0 only).
  template <typename ColFn>
  void pack(int64_t p0, int64_t cols, int64_t sk, const ColFn& col) {
    TORCH_CHECK(p0 == 0, "fusedgru: PackedBf16 packs from its first panel");
    uint16_t* dst = reinterpret_cast<uint16_t*>(buf.mutable_data_ptr<c10::BFloat16>());
    for (int64_t c0 = 0; c0 < cols; c0 += kPanel, dst += pairs * 2 * kPanel) {
      const uint16_t* src[kPanel];
      const int64_t w = std::min(kPanel, cols - c0);
      for (int64_t l = 0; l < w; ++l) src[l] = col(c0 + l);
      pack_panel_bf16(src, w, sk, dst);
    }
  }
  const uint16_t* data() const {
    return reinterpret_cast<const uint16_t*>(buf.const_data_ptr<c10::BFloat16>());
  }

 private:
  void pack_panel_bf16(const uint16_t* const* src, int64_t w, int64_t sk, uint16_t* dst) const;
};

// Whether bf16 weights can be packed as bf16 pairs for AVX512-BF16 (cpu_multiplies(bf16), which
// FUSEDGRU_PACKED_GEMM=fp32 or =avx2 turns off, and packed_gemm_enabled()); otherwise bf16 and
// fp16 weights are packed as the fp32 values they hold.
bool bf16_dot_enabled();
// Whether a step of N rows at hidden size H runs faster on bf16 pairs than on fp32 panels.
// The pairs halve the bytes a step streams but, on the one CPU with AVX512-BF16 measured (a
// 2-core Xeon with AMX, T = 128), multiply no faster than fp32 FMAs: they win while the step
// streams its weights (N = 1: 1.25x at H = 256, 2.06x at H = 1024; N = 4: 1.10x at H = 512,
// 1.44x at H = 1024) and lose once it computes (N = 4 at H = 256: 0.95x; N = 8: 0.84-0.90x;
// benchmarks/NOTES.md, "bf16 recurrent products on packed panels").
constexpr int64_t kMaxBf16DotRows = 2, kMaxBf16DotRowsFromH512 = 4;
inline bool bf16_dot_pays(int64_t N, int64_t H) {
  return N <= kMaxBf16DotRows || (N <= kMaxBf16DotRowsFromH512 && H >= 512);
}

// C[i, c] = sum_k A[i sam + k] B(k, c) on the calling thread, rows [0, M), columns c < ncols:
// A bf16 rows (unit stride), C fp32. Each output is one chain of fp32 fused multiply-adds
// over k in the order 1, 0, 3, 2, ... (vdpbf16ps takes a pair's odd term first), with the
// instruction's flushing of denormal inputs and results (bf16 products are exact in fp32).
void gemm_packed_bf16(const c10::BFloat16* a, int64_t sam, int64_t M, const PackedBf16& b,
                      int64_t ncols, float* c, int64_t ldc);

// Whether gemm_packed can run here (x86-64 with AVX-512F or AVX2 + FMA) and is not switched off by
// FUSEDGRU_PACKED_GEMM=0.
bool packed_gemm_enabled();
// The tiles for a new PackedB: AVX-512F where the CPU has it, unless FUSEDGRU_PACKED_GEMM=avx2.
PackedIsa packed_isa();

// Whether torch multiplies fp32 matrices on this CPU with bf16 operands (fp32 accumulation):
// the fp32 matmul precision of its oneDNN backend is "bf16" (torch.backends.mkldnn.matmul.
// fp32_precision, which torch.set_float32_matmul_precision("medium") sets too), oneDNN is
// enabled and the CPU takes bf16 by torch's own test (mkldnn::_is_mkldnn_bf16_supported).
// nn.GRU's products (at::linear) may then round; whether one does is oneDNN's choice by shape
// (aten_product_rounds). Read at every call, as torch reads it.
bool fp32_products_in_bf16();

// Whether ATen's product of an [M, K] and a [K, N] matrix in `dtype` may round its operands to
// bf16 now; false only where it surely keeps fp32. Only fp32 under fp32_products_in_bf16 can
// round, and then oneDNN picks a bf16 kernel or not by shape, by no simple rule (2-core Xeon with
// AMX, torch 2.13, one row: K = 256 by 768 columns stays fp32, K = 128 by 384 rounds, K = 128 by
// 128 stays fp32; two rows at K = 64: 64 columns stay fp32, 192 round), the same for either
// layout of B, with or without beta, at 1 or 2 threads (benchmarks/NOTES.md). So each shape of
// at most kMaxProbedProduct multiply-adds is asked once, by a product whose exact fp32 result is
// not what bf16 operands give, and the answer is kept; larger ones are taken to round without
// asking (a probe costs as much as the product). A product that may round is ATen's, which rounds
// exactly where nn.GRU's product of that shape does; one that keeps fp32 the GRU ops form as in
// strict fp32 (packed panels, the cell step's dot products, per-thread blocks): nn.GRU's
// precision, not its bits. Call it outside parallel regions (it may run an ATen product).
bool aten_product_rounds(at::ScalarType dtype, int64_t M, int64_t K, int64_t N);
// A step product of 8 rows at H = 1024 ([8, 1024] x [1024, 3072], 25 M) is asked; the
// all-steps products of a sequence, which round from 16 rows on in every shape measured, are not.
constexpr int64_t kMaxProbedProduct = int64_t{1} << 25;

// Packing B costs about as much as computing a few rows of C: worth it for fp32 when the packed
// panels serve at least this many rows of A (over all the calls that reuse them). A product that
// ATen would round (aten_product_rounds) is ATen's whatever this says.
constexpr int64_t kMinPackedRows = 32;
inline bool packing_pays(at::ScalarType dtype, int64_t rows) {
  return dtype == at::kFloat && rows >= kMinPackedRows && packed_gemm_enabled();
}

// Rows per step up to which a bf16/fp16 GRU's forward runs its recurrent products in fp32 on
// packed panels (W_hh widened once per call, exactly) instead of through ATen, on a CPU that
// multiplies the dtype in hardware (cpu_multiplies). ATen's reduced-precision product (oneDNN;
// AMX tiles where the CPU has them) costs tens of us per call at N = 1 on a 2-core Xeon with
// AMX, 4.5x our fp32 step at H = 256, and wins from N = 16 on (benchmarks/NOTES.md, "bf16
// recurrent products on packed panels", 2026-12-06).
constexpr int64_t kMaxReducedPackedStepRows = 8;
// Whether the CPU multiplies bf16 (AVX512-BF16; every CPU with AMX-BF16 has it) or fp16
// (AVX512-FP16) in hardware, where oneDNN's products in that dtype are fast; false under
// FUSEDGRU_PACKED_GEMM=fp32 or avx2 (as on a CPU without them). Elsewhere ATen's bf16 and fp16
// products have no instructions for the dtype: on a 2-core Ice Lake Xeon (AVX-512F only)
// [N, 1024] x [1024, 3072] took 1.7-2.6x (bf16) and 2.3-6.9x (fp16) the time of fp32's at N = 4
// to 64, so there the GRU's bf16/fp16 products run in fp32 on widened operands (cpu_matmul) and
// its recurrent steps on fp32 panels at every N (benchmarks/NOTES.md, twenty-second session).
bool cpu_multiplies(at::ScalarType dtype);
// Whether a GRU layer of T steps of N rows packs W_hh for its recurrent products; strict: no
// step product rounds in ATen (steps_keep_fp32, blocks.h).
inline bool step_packing_pays(at::ScalarType dtype, int64_t T, int64_t N, bool strict) {
  if (dtype == at::kBFloat16 || dtype == at::kHalf)
    return (N <= kMaxReducedPackedStepRows || !cpu_multiplies(dtype)) && T * N >= kMinPackedRows &&
           packed_gemm_enabled();
  return strict && packing_pays(dtype, T * N);
}

// On the calling thread, rows [0, M) and panels [p0, p1) of B:
//   C[i, c] (+)= sum_k A[i sam + k sak] B(k, 16 p0 + c),  c < ncols <= 16 (p1 - p0)
// (columns c >= ncols of the last panel are not written).
void gemm_packed(const float* a, int64_t sam, int64_t sak, int64_t M, const PackedB& b, int64_t p0,
                 int64_t p1, int64_t ncols, float* c, int64_t ldc, bool accumulate);

// The CPU's Matmul (fusedgru.h): out = a b + beta out. Products over a few terms (up to 2 in
// fp32 where ATen keeps fp32, 8 in bf16, 16 in fp16) are sums of outer products in fp32
// (packed_gemm.cpp); other bf16/fp16 products, where the CPU does not multiply the dtype
// (cpu_multiplies), the fp32 product of the widened operands rounded once; fp32 products worth
// the packing run through gemm_packed over the intra-op threads; the rest through ATen.
void cpu_matmul(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, double beta);

}  // namespace cpu
}  // namespace fusedgru
