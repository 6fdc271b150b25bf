// The per-call choice between a persistent kernel (one cooperative launch for all T steps) and
// the per-step path (a recurrent GEMM and a pointwise kernel per step): a cost model, not "take
// the persistent kernel whenever it fits". Host code only; the model and its figures are in
// benchmarks/NOTES.md ("The planner's cost model"). Shape legend: ../fusedgru.h.
//
// Predicted time of a layer direction, in microseconds (H100 / H200 figures; on other GPUs the
// absolute numbers move, the choice between the two far less):
//   persistent: kCooperativeLaunchUs + T * (kGridBarrierUs + staging + chunks * (gate pass +
//               products)), staging = max(the step's fixed latency, the bytes every block
//               stages / L2 bandwidth);
//   per-step:   T * (kKernelUs + max(kGemmStepUs, W_hh bytes / a thin GEMM's streaming rate,
//               GEMM flops / peak)).
// The latencies are fitted to the first GPU measurements (below), not derived.
// FUSEDGRU_PERSISTENT=1 takes a persistent kernel wherever one fits and =0 never (benchmarks and
// the kernel tests force either); unset, the cheaper prediction wins.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "gru_persistent.cuh"
#include "gru_persistent_tc.cuh"
#include "matmul.cuh"

namespace fusedgru {
namespace cuda {
namespace gru {

// Measured on an H100 (../shared/BASELINES.md): one grid-wide barrier; a step of tiny dependent
// kernels replayed from a CUDA graph (a launch's floor); the per-step GEMM at N = 16, H = 1024
// ([16, 1024] x [1024, 3072]) in cuBLAS, 8.8 us bf16 and 24.3 us fp32, i.e. W_hh (6.3 MB,
// 12.6 MB) streamed at 0.715 and 0.518 bytes per ps; GEMM peaks, bf16 741 and strict fp32 52
// TFLOP/s (TF32 taken as half of bf16's, fp64 as fp32's).
constexpr double kGridBarrierUs = 1.18;
constexpr double kKernelUs = 1.33;
constexpr double kThinGemmBytesPerUs16 = 0.715e6;
constexpr double kThinGemmBytesPerUs32 = 0.518e6;
constexpr double kPeakMflopPerUs16 = 741.0;
constexpr double kPeakMflopPerUsTf32 = kPeakMflopPerUs16 / 2;
constexpr double kPeakMflopPerUs32 = 52.0;
// Fitted to the first GPU measurements (H200, 2026-12-04: benchmarks/results/2026-12-04-h200.json,
// T = 256 forward, both paths timed in one process; benchmarks/NOTES.md "GPU bring-up"), where
// the estimates these replace were 2-20x low:
//   - a step of the per-step path costs 24 us where W_hh's streaming and the flops do not bound
//     it (the median of 19-37 us measured at N <= 64 for every H and dtype: host-bound, the
//     GEMM and pointwise launches; cuDNN's per-step algorithm took 17-26 us there). The
//     estimate was cuDNN's best step on an H100, 10 us;
//   - a persistent step's fixed latency beyond the barrier (staging's L2 round trip and the
//     rest): 1.2 us; and a gate pass with its two __syncthreads, per batch chunk: 2.5 us. Fitted
//     to the tensor-core kernel: 4.6-5.0 us a step with one chunk (N <= 16, H <= 256), 7.7 with
//     two (N = 64, H = 128), 23.7 with eight (N = 256). Estimated: 0.5 and 0.4 us;
//   - the FMA kernel's products: 0.8 us per batch row of a chunk (a chunk of 8 rows took about
//     8.8 us with its gate pass at N = 16 and 64, for any H; one row ~3.3 us at N = 1). The
//     cycle count of its multiply-adds predicted 15-20x less; the cause is not known yet (no
//     profiler run);
constexpr double kPerStepUs = 24.0;
constexpr double kGemmStepUs = kPerStepUs - kKernelUs;
constexpr double kStepLatencyUs = 1.2;
constexpr double kGatePassUs = 2.5;
constexpr double kFmaRowUs = 0.8;
constexpr double kL2BytesPerUs = 2.4e6;
// Estimates (NOTES.md): a cooperative launch; the SM clock (cycles per us); a dependent
// mma.sync's latency.
constexpr double kCooperativeLaunchUs = 5.0;
constexpr double kCyclesPerUs = 1755.0;
constexpr double kMmaLatencyCycles = 33.0;

struct PathCost {
  double persistent_us, per_step_us;
};

// How the per-step path's GEMM runs: tensor cores in 16 bits, TF32, or FMA (strict fp32, fp64).
enum class GemmKind { kHalf, kTf32, kFma };

// The per-step path: a GEMM [N, K] x [K, 3H] (forward K = H; the backward's [N, 3H] x [3H, H]
// has the same flops and operand) and one pointwise kernel per step. The GEMM costs the most of
// its floor, streaming W_hh, and its flops at peak.
inline double per_step_path_us(int64_t T, int64_t N, int64_t H, int64_t elem, GemmKind kind) {
  const double mflop = 2.0 * static_cast<double>(N) * 3.0 * H * H / 1e6;
  const double w_bytes = 3.0 * static_cast<double>(H) * H * elem;
  const double peak = kind == GemmKind::kHalf   ? kPeakMflopPerUs16
                      : kind == GemmKind::kTf32 ? kPeakMflopPerUsTf32
                                                : kPeakMflopPerUs32;
  const double stream = w_bytes / (elem == 2 ? kThinGemmBytesPerUs16 : kThinGemmBytesPerUs32);
  return static_cast<double>(T) * (kKernelUs + std::max({kGemmStepUs, stream, mflop / peak}));
}

// One persistent step: the barrier, staging the reduced vector ([N, K] of elem bytes) in every
// block, then `chunks` batch chunks of products and gate pass.
inline double persistent_step_us(int64_t blocks, int64_t N, int64_t K, int64_t elem, int64_t chunks,
                                 double products_per_chunk_us) {
  const double staged = static_cast<double>(blocks) * N * K * elem;
  return kGridBarrierUs + std::max(kStepLatencyUs, staged / kL2BytesPerUs) +
         static_cast<double>(chunks) * (kGatePassUs + products_per_chunk_us);
}

// The FMA kernels (gru_persistent.cuh): chunks of up to kPBatch rows, each costing kFmaRowUs
// per row (measured; the forward's, taken for the backward too). directions: 2 when both
// directions of a layer share the launch (twice the blocks staging).
template <typename scalar_t>
double persistent_cost_us(const PersistentPlan& plan, int64_t T, int64_t N, int64_t H,
                          bool backward, int directions = 1) {
  const int64_t K = backward ? 3 * H : H;
  const double products = kFmaRowUs * static_cast<double>(std::min<int64_t>(N, kPBatch));
  const int64_t chunks = (N + kPBatch - 1) / kPBatch;
  return kCooperativeLaunchUs +
         static_cast<double>(T) * persistent_step_us(directions * plan.blocks, N, K,
                                                     static_cast<int64_t>(sizeof(scalar_t)), chunks,
                                                     products);
}

// The tensor-core kernels (gru_persistent_tc.cuh): per chunk of 8 NT rows a warp runs a
// dependent chain of KTW mma.sync per batch tile.
template <typename scalar_t>
double persistent_cost_us(const TcPlan& plan, int64_t T, int64_t N, int directions = 1) {
  const double products =
      static_cast<double>(plan.KTW) * plan.NT * kMmaLatencyCycles / kCyclesPerUs;
  const int64_t chunks = plan.rows / (plan.NT * kTcTileBatch);
  return kCooperativeLaunchUs +
         static_cast<double>(T) * persistent_step_us(directions * plan.blocks, N, plan.Kp,
                                                     static_cast<int64_t>(sizeof(scalar_t)), chunks,
                                                     products);
}

enum class PathChoice { kByCost, kPersistent, kPerStep };

inline PathChoice path_choice() {
  const char* env = std::getenv("FUSEDGRU_PERSISTENT");
  if (env == nullptr) return PathChoice::kByCost;
  const std::string v(env);
  return v == "0" ? PathChoice::kPerStep : v == "1" ? PathChoice::kPersistent : PathChoice::kByCost;
}

// Whether a persistent plan that fits is taken.
inline bool take_persistent(const PathCost& cost) {
  switch (path_choice()) {
    case PathChoice::kPersistent:
      return true;
    case PathChoice::kPerStep:
      return false;
    default:
      return cost.persistent_us <= cost.per_step_us;
  }
}

// The per-step path's GEMM for scalar_t: fp32 in TF32 where nn.GRU would take it (matmul.cuh).
template <typename scalar_t>
GemmKind gemm_kind() {
  if (sizeof(scalar_t) == 2) return GemmKind::kHalf;
  return std::is_same_v<scalar_t, float> && rnn_allows_tf32() ? GemmKind::kTf32 : GemmKind::kFma;
}

template <typename scalar_t>
double per_step_path_us(int64_t T, int64_t N, int64_t H) {
  return per_step_path_us(T, N, H, static_cast<int64_t>(sizeof(scalar_t)), gemm_kind<scalar_t>());
}

// The persistent plan against the per-step path, for `directions` directions (2: one launch
// for both against the per-step path run twice).
template <typename scalar_t>
PathCost path_cost(const TcPlan& plan, int64_t T, int64_t N, int64_t H, int directions) {
  return {persistent_cost_us<scalar_t>(plan, T, N, directions),
          directions * per_step_path_us<scalar_t>(T, N, H)};
}

template <typename scalar_t>
PathCost path_cost(const PersistentPlan& plan, int64_t T, int64_t N, int64_t H, bool backward,
                   int directions) {
  return {persistent_cost_us<scalar_t>(plan, T, N, H, backward, directions),
          directions * per_step_path_us<scalar_t>(T, N, H)};
}

// One layer direction's path (or both directions' in one launch): the tensor-core plan where
// one fits (bf16, fp16; fp32 where nn.GRU would take TF32), else the FMA kernel's; `persistent`
// when a plan fits and take_persistent says so (the per-step path otherwise).
struct PathPlan {
  TcPlan tc;           // tc.J != 0: the tensor-core kernel
  PersistentPlan fma;  // fma.J != 0: the FMA kernel (only where no tensor-core plan fits)
  PathCost cost{};     // of the plan that fits; zero when none does
  bool persistent = false;
};

// The path from the two planners (each returns a plan with J == 0 where it does not fit).
template <typename scalar_t, typename TcPlanner, typename FmaPlanner>
PathPlan choose_path(int64_t T, int64_t N, int64_t H, bool backward, int directions,
                     const TcPlanner& tc_plan, const FmaPlanner& fma_plan) {
  PathPlan path;
  path.tc = tc_plan();
  if (path.tc.J != 0) {
    path.cost = path_cost<scalar_t>(path.tc, T, N, H, directions);
  } else {
    path.fma = fma_plan();
    if (path.fma.J != 0) path.cost = path_cost<scalar_t>(path.fma, T, N, H, backward, directions);
  }
  path.persistent = (path.tc.J != 0 || path.fma.J != 0) && take_persistent(path.cost);
  return path;
}

// The path of `directions` layer directions from plan(directions) (a choose_path): 2 plans both
// directions of a bidirectional layer in one launch, taken (by cost) only where it beats both
// the per-step path and each direction on its own persistent kernel (the joint plan may need
// more units per block, hence more work per block and step).
template <typename Planner>
PathPlan plan_directions(int directions, const Planner& plan) {
  PathPlan path = plan(directions);
  if (directions > 1 && path.persistent && path_choice() == PathChoice::kByCost) {
    const PathPlan alone = plan(1);
    if (alone.persistent) {
      path.persistent = path.cost.persistent_us <= directions * alone.cost.persistent_us;
    }
  }
  return path;
}

template <typename scalar_t, typename Launch>
PathPlan forward_path(int64_t T, int64_t N, int64_t H, const Launch& launch, int directions = 1) {
  return plan_directions(directions, [&](int d) {
    return choose_path<scalar_t>(
        T, N, H, false, d, [&] { return tc_forward_plan<scalar_t>(T, N, H, launch, d); },
        [&] { return persistent_forward_plan<scalar_t>(T, N, H, launch, d); });
  });
}

template <typename scalar_t, typename Launch>
PathPlan backward_path(int64_t T, int64_t N, int64_t H, bool hprev, bool grad_ws,
                       const Launch& launch, int directions = 1) {
  return plan_directions(directions, [&](int d) {
    return choose_path<scalar_t>(
        T, N, H, true, d,
        [&] { return tc_backward_plan<scalar_t>(T, N, H, hprev, grad_ws, launch, d); },
        [&] { return persistent_backward_plan<scalar_t>(T, N, H, hprev, grad_ws, launch, d); });
  });
}

}  // namespace gru
}  // namespace cuda
}  // namespace fusedgru
