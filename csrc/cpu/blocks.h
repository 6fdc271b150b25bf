// Helpers shared by the CPU GRU kernels: the split of hidden units
// into per-thread blocks that each thread keeps for a whole sequence, and each block's step
// products (GateBlocks forward, ColumnBlocks backward: packed GEMM or ATen).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/TensorIterator.h>

#include <algorithm>
#include <atomic>
#include <exception>
#include <vector>

#include "../align.h"
#include "../fusedgru.h"
#include "isa.h"
#include "packed_gemm.h"
#include "vec_math.h"

namespace fusedgru {
namespace cpu {

template <typename T>
inline T* at_offset(T* p, int64_t off) {
  return p == nullptr ? nullptr : p + off;
}

// Work (multiply-adds) below which a parallel_for task is not worth a thread: ATen's own grain
// (at::internal::GRAIN_SIZE, ATen/TensorIterator.h), used by the kernels' parallel_for calls.
constexpr int64_t kTaskGrain = at::internal::GRAIN_SIZE;

// A step's recurrent GEMM runs on one thread when it is cheaper than waking the others (~1 us
// per parallel region with OpenMP, benchmarks/NOTES.md): below ~1 MFLOP (6 N H^2), unless W_hh
// itself is large. At small N the step streams all of W_hh (3 H^2 elements) from L2, at ~26
// bytes per cycle on a Zen 4 core (8 us for H = 256 in fp32): from 192 KB on (~2 us), two
// cores' L2 halve that.
constexpr double kParallelStepFlops = 1e6;
constexpr double kParallelStepBytes = 192 * 1024;

// Block widths are multiples of one AVX-512 vector of floats.
constexpr int64_t kBlockUnits = 16;

struct Block {
  int64_t j0, j1;
};

// Split the hidden units among the intra-op threads when a step's recurrent GEMM is worth
// waking them for (kParallelStepFlops, kParallelStepBytes; elem: W_hh's element size); block
// widths are multiples of kBlockUnits.
inline std::vector<Block> plan_blocks(int64_t N, int64_t H, int64_t elem) {
  const int64_t threads = at::get_num_threads();
  const double step_flops = 6.0 * static_cast<double>(N) * H * H;
  const double w_bytes = 3.0 * static_cast<double>(H) * H * elem;
  int64_t nb = 1;
  if (threads > 1 && (step_flops >= kParallelStepFlops || w_bytes >= kParallelStepBytes)) {
    nb = std::min<int64_t>(threads, std::max<int64_t>(1, H / kBlockUnits));
  }
  const int64_t width = (H + nb - 1) / nb;
  const int64_t step = nb == 1 ? H : round_up(width, kBlockUnits);
  std::vector<Block> blocks;
  for (int64_t j0 = 0; j0 < H; j0 += step) blocks.push_back({j0, std::min(H, j0 + step)});
  return blocks;
}

// Whether every recurrent step product of a layer, as nn.GRU forms it (the step's active rows
// [prefix[t], or N for every step when prefix is empty] by K, times [K, cols]), keeps fp32 in
// ATen now (aten_product_rounds): forward K = H, cols = 3H; backward K = 3H, cols = H.
inline bool steps_keep_fp32(at::ScalarType dtype, const std::vector<int64_t>& prefix, int64_t N,
                            int64_t K, int64_t cols) {
  if (prefix.empty()) return !aten_product_rounds(dtype, N, K, cols);
  int64_t last = -1;  // prefix is non-increasing: each row count once
  for (const int64_t rows : prefix) {
    if (rows != last && rows > 0 && aten_product_rounds(dtype, rows, K, cols)) return false;
    last = rows;
  }
  return true;
}

// The blocks of units a layer's step products run in (plan_blocks; W_hh's element size, or
// fp32's where `pack`: packed panels are fp32 whatever the dtype). One block of all H units
// unless the products may be split: they keep fp32 (strict: steps_keep_fp32) and each block's
// product is ours (pack) or ATen's where no width rounds (no bf16 matmul precision). Under that
// precision an unpacked step product stays nn.GRU's own, all 3H columns in one call (backward,
// all H), the shape that was asked: ATen's choice to round depends on a product's width (torch
// 2.13 on a 2-core Xeon: a one-row product at K = 1024 rounds from 384 columns on, not at 192).
inline std::vector<Block> plan_step_blocks(int64_t N, int64_t H, const at::Tensor& weight_hh,
                                           bool strict, bool pack) {
  const bool split =
      strict && (pack || weight_hh.scalar_type() != at::kFloat || !fp32_products_in_bf16());
  if (!split) return {{0, H}};
  return plan_blocks(N, H, pack ? int64_t{sizeof(float)} : weight_hh.element_size());
}

// How the backward's all-steps products are shaped (BackwardProducts, fusedgru.h): as nn.GRU's
// autograd forms them in fp32 under torch's bf16 matmul precision, so each rounds where nn.GRU's
// does (cpu_matmul asks aten_product_rounds for each); prefix: active_prefix's rows per step.
inline BackwardProducts backward_products(at::ScalarType dtype,
                                          const std::vector<int64_t>& prefix) {
  if (dtype == at::kFloat && fp32_products_in_bf16()) return {true, prefix};
  return {};
}

// Run f(b) for every block: in the caller for one block, else one block per thread. Worker
// threads do not inherit the caller's dispatch state, so ATen calls there skip autograd
// explicitly, as they do in the calling kernel.
template <typename F>
void for_blocks(int64_t nb, const F& f) {
  if (nb == 1) {
    f(0);
    return;
  }
  at::parallel_for(0, nb, 1, [&](int64_t b0, int64_t b1) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    for (int64_t b = b0; b < b1; ++b) f(b);
  });
}

// Run f(b, s) for every block b < nb and step s < steps, all blocks of step s before any of step
// s + 1. Where ATen's threads are OpenMP's, one parallel region runs the whole loop with a
// barrier between steps: a region per step (for_blocks) pays OpenMP's fork and join each step,
// ~1.0 us against ~0.43 us for a barrier on two Zen 2 cores (benchmarks/NOTES.md). Like
// at::parallel_for the region takes all of ATen's threads (no num_threads clause: GOMP's pool
// misbehaves when it varies, pytorch#32008), splits the blocks into the same contiguous chunks
// (so each thread multiplies by the blocks it packed in pack_blocks, every step) and runs on the
// caller's thread alone inside another parallel region. An exception stops every thread after
// the barrier of the step that raised it and is rethrown here.
template <typename F>
void for_steps(int64_t nb, int64_t steps, const F& f) {
  if (steps <= 0) return;
  if (nb == 1 || at::in_parallel_region()) {
    for (int64_t s = 0; s < steps; ++s) {
      for (int64_t b = 0; b < nb; ++b) f(b, s);
    }
    return;
  }
#if AT_PARALLEL_OPENMP && defined(_OPENMP)
  std::exception_ptr error;
  std::atomic<int64_t> failed_at{steps};  // the first step that raised; steps when none did
  at::internal::lazy_init_num_threads();  // as at::parallel_for: torch's thread count applies
#pragma omp parallel
  {
    const int64_t tid = omp_get_thread_num();
    const int64_t workers = std::min<int64_t>(omp_get_num_threads(), nb);
    const int64_t chunk = (nb + workers - 1) / workers;
    const int64_t b0 = tid * chunk, b1 = std::min(nb, b0 + chunk);
    at::internal::ThreadIdGuard tid_guard(static_cast<int>(tid));
    c10::ParallelGuard parallel_guard(true);
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    for (int64_t s = 0; s < steps; ++s) {
      try {
        for (int64_t b = b0; b < b1; ++b) f(b, s);
      } catch (...) {
#pragma omp critical(fusedgru_for_steps)
        if (s < failed_at.load()) {
          error = std::current_exception();
          failed_at.store(s);
        }
      }
#pragma omp barrier
      // Every thread reads failed_at after the same barrier; a later step's failure (> s)
      // cannot make one thread stop while another goes on to wait at the next barrier.
      if (failed_at.load() <= s) break;
    }
  }
  if (error) std::rethrow_exception(error);
#else
  for (int64_t s = 0; s < steps; ++s) for_blocks(nb, [&](int64_t b) { f(b, s); });
#endif
}

inline at::Tensor rows_of(const at::Tensor& x, int64_t rows) {
  return rows == x.size(0) ? x : x.narrow(0, 0, rows);
}

// Pack each block's columns of a GEMM's B operand for gemm_packed, on the thread that owns the
// block (the one that multiplies by it): K rows, `per_unit` columns per hidden unit of the block,
// sk the stride between rows; col(j0, width, c) points at the block's column c.
template <typename Packed = PackedB, typename ColFn>
std::vector<Packed> pack_blocks(const std::vector<Block>& blocks, int64_t K, int64_t per_unit,
                                int64_t sk, const ColFn& col) {
  std::vector<Packed> packed(blocks.size());
  for_blocks(static_cast<int64_t>(blocks.size()), [&](int64_t b) {
    const int64_t j0 = blocks[b].j0, width = blocks[b].j1 - j0, cols = per_unit * width;
    packed[b] = Packed(K, (cols + kPanel - 1) / kPanel);
    packed[b].pack(0, cols, sk, [&](int64_t c) { return col(j0, width, c); });
  });
  return packed;
}

// Per block, the forward step's recurrent product gh_b [N, 3w] = h_{t-1} W_b, where W_b [H, 3w]
// holds the W_hh rows (r, z, n) of the block's units (gate g at column g w). With `packed`
// (step_packing_pays) W_b is packed once per call, by the thread that owns the block, for
// gemm_packed; otherwise it is an ATen operand (a copy per block, or W_hh^T itself for a single
// block) for at::mm. Packed bf16/fp16 products accumulate in fp32 and round gh_b once to the
// dtype, ATen's contract for a reduced-precision product: bf16 weights where the CPU has
// AVX512-BF16 are packed as bf16 pairs for its dot products where they pay (bf16_dot_pays: half
// the bytes per step; sums in the order 1, 0, 3, 2, ... of k), otherwise bf16 and fp16 weights as
// the fp32 values they hold (exact), each step widening the block's rows of h_{t-1} the same way
// (the fp32 path's order of the sum). Which one runs depends on N and H, so a sequence's last bits
// can differ between batch sizes, as they do between ATen's and the packed fp32 products.
struct GateBlocks {
  std::vector<at::Tensor> w, gh;
  std::vector<PackedB> packed;
  std::vector<PackedBf16> packed_bf16;
  // Per block, for bf16/fp16 packed: gh_b before rounding [N, 3w]; h_{t-1} widened [N, H]
  // for fp32 panels.
  std::vector<at::Tensor> gh32, h32;
  GateBlocks(const at::Tensor& weight_hh, const std::vector<Block>& blocks, int64_t N, bool pack) {
    const int64_t H = weight_hh.size(1);
    for (const Block& blk : blocks)
      gh.push_back(at::empty({N, 3 * (blk.j1 - blk.j0)}, weight_hh.options()));
    if (pack) {
      const bool reduced = weight_hh.scalar_type() != at::kFloat;
      const auto f32 = weight_hh.options().dtype(at::kFloat);
      if (reduced)
        for (const at::Tensor& g : gh) gh32.push_back(at::empty(g.sizes(), f32));
      if (weight_hh.scalar_type() == at::kBFloat16 && bf16_dot_enabled() && bf16_dot_pays(N, H)) {
        const uint16_t* wh = raw(weight_hh.const_data_ptr<c10::BFloat16>());
        const int64_t s0 = weight_hh.stride(0);
        packed_bf16 = pack_blocks<PackedBf16>(
            blocks, H, 3, weight_hh.stride(1), [&](int64_t j0, int64_t width, int64_t c) {
              return wh + ((c / width) * H + j0 + c % width) * s0;  // as below
            });
        return;
      }
      const at::Tensor w32 = reduced ? weight_hh.to(at::kFloat) : weight_hh;
      const float* wh = w32.const_data_ptr<float>();
      const int64_t s0 = w32.stride(0);
      packed = pack_blocks(blocks, H, 3, w32.stride(1), [&](int64_t j0, int64_t width, int64_t c) {
        return wh + ((c / width) * H + j0 + c % width) * s0;  // gate c / width, unit c % width
      });
      if (reduced)
        for (size_t b = 0; b < blocks.size(); ++b) h32.push_back(at::empty({N, H}, f32));
      return;
    }
    for (const Block& blk : blocks) {
      const int64_t width = blk.j1 - blk.j0;
      w.push_back(blocks.size() == 1 ? weight_hh.t()
                                     : at::cat({weight_hh.narrow(0, blk.j0, width),
                                                weight_hh.narrow(0, H + blk.j0, width),
                                                weight_hh.narrow(0, 2 * H + blk.j0, width)})
                                           .t());
    }
  }
  // gh_b[:rows] = h[:rows] W_b on the calling thread; h [N, H] contiguous.
  void product(int64_t b, const at::Tensor& h, int64_t rows) const {
    at::Tensor out = rows_of(gh[b], rows);
    TORCH_INTERNAL_ASSERT(gh32.empty() || h.is_contiguous());  // bf16/fp16 read flat rows
    if (!packed_bf16.empty()) {
      float* c = gh32[b].mutable_data_ptr<float>();
      gemm_packed_bf16(h.const_data_ptr<c10::BFloat16>(), h.size(1), rows, packed_bf16[b],
                       gh32[b].size(1), c, gh32[b].size(1));
      round_into<c10::BFloat16>(b, rows);
    } else if (packed.empty()) {
      aten_matmul(out, rows_of(h, rows), w[b], 0.0);
    } else if (gh32.empty()) {
      gemm_packed(h.const_data_ptr<float>(), h.stride(0), h.stride(1), rows, packed[b], 0,
                  packed[b].panels, out.size(1), out.mutable_data_ptr<float>(), out.stride(0),
                  false);
    } else if (h.scalar_type() == at::kBFloat16) {
      widened_product<c10::BFloat16>(b, h, rows);
    } else {
      widened_product<c10::Half>(b, h, rows);
    }
  }

 private:
  template <typename T>
  void widened_product(int64_t b, const at::Tensor& h, int64_t rows) const {
    const int64_t n = rows * h.size(1);
    const storage_t<T>* __restrict src = raw(h.const_data_ptr<T>());
    float* __restrict a = h32[b].mutable_data_ptr<float>();
    for (int64_t i = 0; i < n; ++i) a[i] = Elem<T>::load(src[i]);
    gemm_packed(a, h.size(1), 1, rows, packed[b], 0, packed[b].panels, gh32[b].size(1),
                gh32[b].mutable_data_ptr<float>(), gh32[b].size(1), false);
    round_into<T>(b, rows);
  }
  // gh_b[:rows] = gh32_b[:rows] rounded to T.
  template <typename T>
  void round_into(int64_t b, int64_t rows) const {
    const int64_t n = rows * gh[b].size(1);
    const float* __restrict c = gh32[b].const_data_ptr<float>();
    storage_t<T>* __restrict dst = raw(gh[b].mutable_data_ptr<T>());
    for (int64_t i = 0; i < n; ++i) dst[i] = Elem<T>::store(c[i]);
  }
};

// Per block, the backward step's product dh[:, j0:j1] += dg[:rows] W_hh[:, j0:j1] (dg [N, 3H]
// with a unit stride, dh [N, H] contiguous). Packed as GateBlocks, the thread that owns the
// block packing its columns of W_hh; otherwise ATen's addmm on column views. bf16/fp16 packed
// (step_packing_pays) as the fp32 values they hold: each step widens dg's rows, multiplies in
// fp32 and rounds dh + dg W once to the dtype, as ATen's reduced-precision addmm does.
struct ColumnBlocks {
  std::vector<at::Tensor> w, dh;
  std::vector<PackedB> packed;
  // Per block, for bf16/fp16 packed: dg widened [N, 3H] and the product [N, w] before the sum.
  std::vector<at::Tensor> dg32, prod32;
  ColumnBlocks(const at::Tensor& weight_hh, const at::Tensor& dh_all,
               const std::vector<Block>& blocks, bool pack) {
    for (const Block& blk : blocks) dh.push_back(dh_all.narrow(1, blk.j0, blk.j1 - blk.j0));
    if (pack) {
      const bool reduced = weight_hh.scalar_type() != at::kFloat;
      const at::Tensor w32 = reduced ? weight_hh.to(at::kFloat) : weight_hh;
      const float* wh = w32.const_data_ptr<float>();
      const int64_t s1 = w32.stride(1);
      packed = pack_blocks(blocks, w32.size(0), 1, w32.stride(0),
                           [&](int64_t j0, int64_t, int64_t c) { return wh + (j0 + c) * s1; });
      if (reduced) {
        const auto f32 = weight_hh.options().dtype(at::kFloat);
        for (const at::Tensor& d : dh) {
          dg32.push_back(at::empty({d.size(0), weight_hh.size(0)}, f32));
          prod32.push_back(at::empty(d.sizes(), f32));
        }
      }
      return;
    }
    for (const Block& blk : blocks) w.push_back(weight_hh.narrow(1, blk.j0, blk.j1 - blk.j0));
  }
  void accumulate(int64_t b, const at::Tensor& dg, int64_t rows) const {
    if (packed.empty()) {
      at::Tensor out = rows_of(dh[b], rows);
      aten_matmul(out, rows_of(dg, rows), w[b], 1.0);
    } else if (dg32.empty()) {
      gemm_packed(dg.const_data_ptr<float>(), dg.stride(0), dg.stride(1), rows, packed[b], 0,
                  packed[b].panels, dh[b].size(1), dh[b].mutable_data_ptr<float>(), dh[b].stride(0),
                  true);
    } else if (dg.scalar_type() == at::kBFloat16) {
      widened_accumulate<c10::BFloat16>(b, dg, rows);
    } else {
      widened_accumulate<c10::Half>(b, dg, rows);
    }
  }

 private:
  template <typename T>
  void widened_accumulate(int64_t b, const at::Tensor& dg, int64_t rows) const {
    TORCH_INTERNAL_ASSERT(dg.stride(1) == 1 && dh[b].stride(1) == 1);
    const int64_t G = dg32[b].size(1), w = dh[b].size(1), sd = dg.stride(0), sh = dh[b].stride(0);
    const storage_t<T>* src = raw(dg.const_data_ptr<T>());
    float* a = dg32[b].mutable_data_ptr<float>();
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t k = 0; k < G; ++k) a[i * G + k] = Elem<T>::load(src[i * sd + k]);
    float* c = prod32[b].mutable_data_ptr<float>();
    gemm_packed(a, G, 1, rows, packed[b], 0, packed[b].panels, w, c, w, false);
    storage_t<T>* d = raw(dh[b].mutable_data_ptr<T>());
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < w; ++j)
        d[i * sh + j] = Elem<T>::store(Elem<T>::load(d[i * sh + j]) + c[i * w + j]);
  }
};

}  // namespace cpu
}  // namespace fusedgru
