// Helpers shared by the CPU GRU kernels: function multiversioning, and the split of hidden
// units into per-thread blocks that each thread keeps for a whole sequence.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/TensorIterator.h>

#include <algorithm>
#include <vector>

#include "../align.h"

// On x86, clone a hot loop for AVX-512, AVX2 and the baseline; the loader picks one.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FUSEDGRU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FUSEDGRU_CLONES
#endif
#define FUSEDGRU_INLINE inline __attribute__((always_inline))

namespace fusedgru {
namespace cpu {

template <typename T>
inline T* at_offset(T* p, int64_t off) {
  return p == nullptr ? nullptr : p + off;
}

// Work (multiply-adds) below which a parallel_for task is not worth a thread: ATen's own grain
// (at::internal::GRAIN_SIZE, ATen/TensorIterator.h), used by the kernels' parallel_for calls.
constexpr int64_t kTaskGrain = at::internal::GRAIN_SIZE;

// Flops of a step's recurrent GEMM (6 N H^2) below which the step runs on one thread: waking
// the others costs a few microseconds per parallel region, what ~1 MFLOP takes one core.
constexpr double kParallelStepFlops = 1e6;

// Block widths are multiples of one AVX-512 vector of floats.
constexpr int64_t kBlockUnits = 16;

struct Block {
  int64_t j0, j1;
};

// Split the hidden units among the intra-op threads when a step's recurrent GEMM is worth
// waking them for (kParallelStepFlops); block widths are multiples of kBlockUnits.
inline std::vector<Block> plan_blocks(int64_t N, int64_t H) {
  const int64_t threads = at::get_num_threads();
  const double step_flops = 6.0 * static_cast<double>(N) * H * H;
  int64_t nb = 1;
  if (threads > 1 && step_flops >= kParallelStepFlops) {
    nb = std::min<int64_t>(threads, std::max<int64_t>(1, H / kBlockUnits));
  }
  const int64_t width = (H + nb - 1) / nb;
  const int64_t step = nb == 1 ? H : round_up(width, kBlockUnits);
  std::vector<Block> blocks;
  for (int64_t j0 = 0; j0 < H; j0 += step) blocks.push_back({j0, std::min(H, j0 + step)});
  return blocks;
}

// Per block: the W_hh rows (r, z, n) of its units as one [H, 3w] operand of the step's GEMM
// (h_{t-1} w[b]; W_hh^T itself for a single block), and its gh buffer [N, 3w] (gate g at g * w).
struct GateBlocks {
  std::vector<at::Tensor> w, gh;
};
inline GateBlocks gate_blocks(const at::Tensor& weight_hh, const std::vector<Block>& blocks,
                              int64_t N) {
  const int64_t H = weight_hh.size(1);
  GateBlocks g;
  for (const Block& blk : blocks) {
    const int64_t w = blk.j1 - blk.j0;
    g.w.push_back(blocks.size() == 1
                      ? weight_hh.t()
                      : at::cat({weight_hh.narrow(0, blk.j0, w), weight_hh.narrow(0, H + blk.j0, w),
                                 weight_hh.narrow(0, 2 * H + blk.j0, w)})
                            .t());
    g.gh.push_back(at::empty({N, 3 * w}, weight_hh.options()));
  }
  return g;
}

// Per block, columns [j0, j1) of t (the backward's slices of W_hh and dh).
inline std::vector<at::Tensor> column_blocks(const at::Tensor& t,
                                             const std::vector<Block>& blocks) {
  std::vector<at::Tensor> cols;
  for (const Block& blk : blocks) cols.push_back(t.narrow(1, blk.j0, blk.j1 - blk.j0));
  return cols;
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

inline at::Tensor rows_of(const at::Tensor& x, int64_t rows) {
  return rows == x.size(0) ? x : x.narrow(0, 0, rows);
}

}  // namespace cpu
}  // namespace fusedgru
