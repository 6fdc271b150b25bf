// Small kernels with planted bugs, one or more per emulator check (cuda_emu.h, emu_runtime.h),
// and the correct twins that each check must let through: tests/test_cuda_emu_checks.py runs
// them. They launch straight through the emulator (emu::launch, emu::launch_cooperative), and
// compile through emu_build.py's __shared__ rewrite like the real kernels (load_planted, also
// under ThreadSanitizer). Each entry point returns what its kernel wrote, or raises the
// emulator's KernelError as a RuntimeError.
#include "cuda_emu.h"
#include "emu_runtime.h"

#include <torch/extension.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

namespace {

using Result = std::vector<double>;

constexpr int kPlantedThreads = 64;  // two warps
constexpr unsigned int kFull = 0xffffffffu;
constexpr unsigned int kLowHalf = 0x0000ffffu, kHighHalf = 0xffff0000u;

void pause_ms(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

// ---- barrier discipline ----------------------------------------------------------------------

// Half the block meets one __syncthreads, half another.
__global__ void divergent_sync_kernel() {
  if (threadIdx.x < kPlantedThreads / 2) {
    __syncthreads();
  } else {
    __syncthreads();
  }
}

// Thread 0 returns while the rest go on to a barrier: after exit_delay_ms (so that, most likely,
// while they wait there), or they after sync_delay_ms (so that they arrive after it exited).
__global__ void exit_before_sync_kernel(int exit_delay_ms, int sync_delay_ms) {
  if (threadIdx.x == 0) {
    if (exit_delay_ms > 0) pause_ms(exit_delay_ms);
    return;
  }
  if (sync_delay_ms > 0) pause_ms(sync_delay_ms);
  __syncthreads();
}

// Thread 0 runs one more iteration, so one more __syncthreads, than its block-mates.
__global__ void uneven_loop_kernel() {
  const int iterations = threadIdx.x == 0 ? 2 : 1;
  for (int i = 0; i < iterations; ++i) __syncthreads();
}

// Correct early exits: odd blocks return whole; even blocks pass a barrier, then all but warp 0
// return and warp 0 reduces with shuffles. out[block] = sum of the lanes of warp 0 (0..31).
__global__ void legit_exits_kernel(double* out) {
  if (blockIdx.x % 2 == 1) return;
  double* s = static_cast<double*>(emu::dynamic_smem());
  s[threadIdx.x] = threadIdx.x;
  __syncthreads();
  if (threadIdx.x >= 32) return;
  double v = s[threadIdx.x];
  for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(kFull, v, off);
  if (threadIdx.x == 0) out[blockIdx.x] = v;
}

// Cooperative: thread 0 of block 1 returns while the grid goes on to grid_sync.
__global__ void grid_exit_kernel(int delay_ms) {
  if (blockIdx.x == 1 && threadIdx.x == 0) {
    if (delay_ms > 0) pause_ms(delay_ms);
    return;
  }
  emu::grid_sync();
}

// Cooperative: thread 0 of each block at grid_sync, its block-mates at __syncthreads.
__global__ void grid_vs_block_barrier_kernel() {
  if (threadIdx.x == 0) {
    emu::grid_sync();
  } else {
    __syncthreads();
  }
}

// Cooperative, correct: each round, every block publishes a value and reads its neighbour's.
// out[block] = the sum over rounds r of (neighbour + 1) * r.
__global__ void grid_rounds_kernel(double* slots, double* out) {
  const unsigned int b = blockIdx.x, next = (b + 1) % gridDim.x;
  double sum = 0;
  for (int r = 1; r <= 3; ++r) {
    if (threadIdx.x == 0) slots[b] = (b + 1.0) * r;
    emu::grid_sync();
    if (threadIdx.x == 0) sum += slots[next];
    emu::grid_sync();  // slots are rewritten next round
  }
  if (threadIdx.x == 0) out[b] = sum;
}

// ---- warp shuffles -----------------------------------------------------------------------------

// Half the warp shuffles at one call site, half at another, with the same mask.
__global__ void shuffle_sites_kernel(double* out) {
  double v = threadIdx.x;
  if (threadIdx.x < 16) {
    v = __shfl_xor_sync(kFull, v, 1);
  } else {
    v = __shfl_xor_sync(kFull, v, 1);
  }
  out[threadIdx.x] = v;
}

// Lane 31 returns; the rest shuffle with a mask that still names it.
__global__ void shuffle_exited_lane_kernel(double* out) {
  if (threadIdx.x == 31) return;
  out[threadIdx.x] = __shfl_xor_sync(kFull, static_cast<double>(threadIdx.x), 1);
}

// Lane 0 calls with a mask that leaves out lane 0.
__global__ void shuffle_without_own_lane_kernel(double* out) {
  const unsigned int mask = threadIdx.x == 0 ? kFull - 1u : kFull;
  out[threadIdx.x] = __shfl_xor_sync(mask, static_cast<double>(threadIdx.x), 1);
}

// Lanes 0..15 shuffle over lanes 0..16, lanes 16..31 over the whole warp. Neither shuffle can
// complete (lane 16 is in both masks and calls with the full one), so in every order of arrival
// the emulator meets two masks at one call site. (With the low half over only its own half, it
// could complete and exit first; the full mask then named exited lanes, a different report that
// made the test depend on the threads' schedule.)
__global__ void shuffle_mask_mismatch_kernel(double* out) {
  const unsigned int mask = threadIdx.x < 16 ? (kLowHalf | 1u << 16) : kFull;
  out[threadIdx.x] = __shfl_xor_sync(mask, static_cast<double>(threadIdx.x), 1);
}

// 40 threads: the second warp has 8 lanes, and shuffles with a full mask.
__global__ void shuffle_missing_lanes_kernel(double* out) {
  out[threadIdx.x] = __shfl_xor_sync(kFull, static_cast<double>(threadIdx.x), 1);
}

// Lane 0 at __syncthreads while lanes 1..31 shuffle with a mask naming lane 0.
__global__ void shuffle_vs_sync_kernel(double* out) {
  if (threadIdx.x == 0) {
    __syncthreads();
  } else {
    out[threadIdx.x] = __shfl_xor_sync(kFull, static_cast<double>(threadIdx.x), 1);
  }
}

// Reads from lanes outside the mask get the poison pattern. exited: the high half returns and
// the low half reads from it; otherwise both halves shuffle over their own half and read across
// (lane ^ 16). out[lane]: what lane read across; out[32 + lane]: from its neighbour (lane ^ 1)
// inside the mask, which must be the neighbour's value.
__global__ void shuffle_outside_mask_kernel(bool exited, double* out) {
  const int lane = threadIdx.x;
  if (exited && lane >= 16) return;
  const unsigned int mask = lane < 16 ? kLowHalf : kHighHalf;
  const double v = 100.0 + lane;
  out[lane] = __shfl_xor_sync(mask, v, 16);
  out[32 + lane] = __shfl_xor_sync(mask, v, 1);
}

// ---- poison ------------------------------------------------------------------------------------

// Each block first reads its static shared array (never written in this block), then fills it
// and reads a block-mate's slot after a barrier. out[2 * (block * 64 + t)]: the first read (must
// be poison in every block); out[... + 1]: the block-mate's value (must be this block's).
__global__ void static_shared_kernel(double* out) {
  __shared__ double s[kPlantedThreads];
  const int t = threadIdx.x;
  double* o = out + 2 * (blockIdx.x * kPlantedThreads + t);
  o[0] = s[t];
  __syncthreads();  // every read of the poison is done before the block writes
  s[t] = blockIdx.x;
  __syncthreads();
  o[1] = s[(t + 1) % kPlantedThreads];
}

// The same over dynamic shared memory.
__global__ void dynamic_shared_kernel(double* out) {
  double* s = static_cast<double*>(emu::dynamic_smem());
  const int t = threadIdx.x;
  double* o = out + 2 * (blockIdx.x * kPlantedThreads + t);
  o[0] = s[t];
  __syncthreads();
  s[t] = blockIdx.x;
  __syncthreads();
  o[1] = s[(t + 1) % kPlantedThreads];
}

// Writes the even entries of both outputs only.
__global__ void even_entries_kernel(double* values, int64_t* indices, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n || i % 2 == 1) return;
  values[i] = static_cast<double>(i);
  indices[i] = i;
}

// ---- block order -------------------------------------------------------------------------------

// A dependence between blocks: block b continues block b - 1's count. In order: out[b] = b + 1.
__global__ void block_chain_kernel(double* out) {
  if (threadIdx.x != 0) return;
  const unsigned int b = blockIdx.x;
  out[b] = b == 0 ? 1.0 : out[b - 1] + 1.0;
}

// Two blocks that wait for each other (up to a timeout): they meet only if they run at once.
// met[b] = 1 if block b saw the other; smem[b] = the address of block b's shared memory.
__global__ void meet_kernel(std::atomic<int>* flags, double* met, double* smem) {
  if (threadIdx.x != 0) return;
  const unsigned int b = blockIdx.x;
  smem[b] = static_cast<double>(reinterpret_cast<uintptr_t>(emu::dynamic_smem()));
  flags[b].store(1);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (flags[1 - b].load() == 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::yield();
  }
  met[b] = flags[1 - b].load();
}

// ---- data races (ThreadSanitizer) ------------------------------------------------------------

enum class Race { kBarrier, kNone, kShuffles };

// Each thread writes its shared slot and then reads the slot of a thread in the other warp:
// with the barrier between (kBarrier) that is correct; without it (kNone) it is a race; so it
// is when the warps only shuffle in between (kShuffles: a shuffle orders its own warp only).
// out[t]: the slot read; out[64 + t]: the warp's sum of t (kShuffles).
__global__ void race_kernel(Race mode, double* out) {
  double* s = static_cast<double*>(emu::dynamic_smem());
  const int t = threadIdx.x;
  s[t] = t;
  if (mode == Race::kBarrier) __syncthreads();
  if (mode == Race::kShuffles) {
    double v = t;
    for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(kFull, v, off);
    out[kPlantedThreads + t] = v;
  }
  out[t] = s[(t + kPlantedThreads / 2) % kPlantedThreads];
}

// ---- entry points ------------------------------------------------------------------------------

template <typename Kernel, typename... Args>
void plain(Kernel kernel, unsigned int blocks, unsigned int threads, size_t smem, Args... args) {
  emu::launch(kernel, dim3(blocks), dim3(threads), smem, args...);
}

template <typename Kernel, typename... Args>
void cooperative(Kernel kernel, unsigned int blocks, unsigned int threads, Args... args) {
  emu::launch_cooperative(kernel, dim3(blocks), dim3(threads), 0, args...);
}

Result run_barrier_case(const std::string& name, int delay_ms) {
  Result out(4 * kPlantedThreads, 0.0);
  if (name == "divergent_sync") {
    plain(divergent_sync_kernel, 1, kPlantedThreads, 0);
  } else if (name == "exit_before_sync") {
    plain(exit_before_sync_kernel, 1, kPlantedThreads, 0, delay_ms, 0);
  } else if (name == "sync_after_exit") {
    plain(exit_before_sync_kernel, 1, kPlantedThreads, 0, 0, delay_ms);
  } else if (name == "uneven_loop") {
    plain(uneven_loop_kernel, 1, kPlantedThreads, 0);
  } else if (name == "legit_exits") {
    plain(legit_exits_kernel, 4, kPlantedThreads, kPlantedThreads * sizeof(double), out.data());
  } else if (name == "grid_exit") {
    cooperative(grid_exit_kernel, 2, kPlantedThreads, delay_ms);
  } else if (name == "grid_sync_in_plain_launch") {
    plain(grid_exit_kernel, 2, kPlantedThreads, 0, 0);
  } else if (name == "grid_vs_block_barrier") {
    cooperative(grid_vs_block_barrier_kernel, 2, kPlantedThreads);
  } else if (name == "grid_rounds") {
    Result slots(3, 0.0);
    cooperative(grid_rounds_kernel, 3, kPlantedThreads, slots.data(), out.data());
  } else {
    TORCH_CHECK(false, "no barrier case ", name);
  }
  return out;
}

// ---- warp mma (emu::mma_sync) --------------------------------------------------------------

// Every lane's fragments in, every lane's D out: a[32][4], b[32][2], c[32][4] -> d[32][4].
template <emu::MmaType kType>
__global__ void mma_kernel(const uint32_t* a, const uint32_t* b, const float* c, float* d) {
  const int lane = threadIdx.x;
  uint32_t ra[4], rb[2];
  float rc[4], rd[4];
  for (int i = 0; i < 4; ++i) ra[i] = a[lane * 4 + i], rc[i] = c[lane * 4 + i];
  for (int i = 0; i < 2; ++i) rb[i] = b[lane * 2 + i];
  emu::mma_sync<kType>(rd, ra, rb, rc);
  for (int i = 0; i < 4; ++i) d[lane * 4 + i] = rd[i];
}

// Only the low half-warp reaches the mma; the high half exits (a GPU: undefined, or a hang).
__global__ void mma_half_warp_kernel() {
  if (threadIdx.x >= 16) return;
  uint32_t a[4] = {}, b[2] = {};
  float c[4] = {}, d[4];
  emu::mma_sync<emu::MmaType::kBf16>(d, a, b, c);
}

// The low half-warp at an mma, the high half at a shuffle.
__global__ void mma_vs_shuffle_kernel() {
  uint32_t a[4] = {}, b[2] = {};
  float c[4] = {}, d[4];
  if (threadIdx.x < 16) {
    emu::mma_sync<emu::MmaType::kBf16>(d, a, b, c);
  } else {
    (void)__shfl_xor_sync(kFull, 1.0, 1);
  }
}

std::vector<double> run_mma(const std::string& type, const std::vector<int64_t>& a,
                            const std::vector<int64_t>& b, const std::vector<double>& c) {
  TORCH_CHECK(a.size() == 128 && b.size() == 64 && c.size() == 128, "mma: 32 lanes' fragments");
  std::vector<uint32_t> ra(a.begin(), a.end()), rb(b.begin(), b.end());
  std::vector<float> rc(c.begin(), c.end()), rd(128);
  if (type == "bf16") {
    plain(mma_kernel<emu::MmaType::kBf16>, 1, 32, 0, ra.data(), rb.data(), rc.data(), rd.data());
  } else if (type == "fp16") {
    plain(mma_kernel<emu::MmaType::kF16>, 1, 32, 0, ra.data(), rb.data(), rc.data(), rd.data());
  } else {
    plain(mma_kernel<emu::MmaType::kTf32>, 1, 32, 0, ra.data(), rb.data(), rc.data(), rd.data());
  }
  return {rd.begin(), rd.end()};
}

void run_mma_case(const std::string& name) {
  if (name == "half_warp") {
    plain(mma_half_warp_kernel, 1, 32, 0);
  } else if (name == "vs_shuffle") {
    plain(mma_vs_shuffle_kernel, 1, 32, 0);
  } else {
    TORCH_CHECK(false, "no mma case ", name);
  }
}

Result run_shuffle_case(const std::string& name) {
  Result out(64, 0.0);
  if (name == "sites") {
    plain(shuffle_sites_kernel, 1, 32, 0, out.data());
  } else if (name == "exited_lane") {
    plain(shuffle_exited_lane_kernel, 1, 32, 0, out.data());
  } else if (name == "without_own_lane") {
    plain(shuffle_without_own_lane_kernel, 1, 32, 0, out.data());
  } else if (name == "mask_mismatch") {
    plain(shuffle_mask_mismatch_kernel, 1, 32, 0, out.data());
  } else if (name == "missing_lanes") {
    plain(shuffle_missing_lanes_kernel, 1, 40, 0, out.data());
  } else if (name == "vs_sync") {
    plain(shuffle_vs_sync_kernel, 1, 32, 0, out.data());
  } else if (name == "outside_mask_exited" || name == "outside_mask_live") {
    plain(shuffle_outside_mask_kernel, 1, 32, 0, name == "outside_mask_exited", out.data());
  } else {
    TORCH_CHECK(false, "no shuffle case ", name);
  }
  return out;
}

// Every block's first read of its shared memory, then of a block-mate's slot (see the kernels).
Result run_shared_memory(bool dynamic, int blocks) {
  Result out(2 * blocks * kPlantedThreads, 0.0);
  if (dynamic) {
    plain(dynamic_shared_kernel, blocks, kPlantedThreads, kPlantedThreads * sizeof(double),
          out.data());
  } else {
    plain(static_shared_kernel, blocks, kPlantedThreads, 0, out.data());
  }
  return out;
}

// As launch code does: outputs from at::empty (under the guard each emulated op holds).
std::tuple<at::Tensor, at::Tensor> even_entries(int64_t n) {
  const emu::PoisonedAllocations poison;
  at::Tensor values = at::empty({n}, at::kDouble), indices = at::empty({n}, at::kLong);
  const auto blocks = static_cast<unsigned int>((n + kPlantedThreads - 1) / kPlantedThreads);
  plain(even_entries_kernel, blocks, kPlantedThreads, 0, values.data_ptr<double>(),
        indices.data_ptr<int64_t>(), n);
  return {values, indices};
}

Result block_chain(int blocks) {
  Result out(blocks, 0.0);
  plain(block_chain_kernel, blocks, 32, 0, out.data());
  return out;
}

// (met[0], met[1], smem address of block 0, of block 1).
Result meet() {
  std::atomic<int> flags[2] = {0, 0};
  Result met(2, 0.0), smem(2, 0.0);
  plain(meet_kernel, 2, 32, 16, flags, met.data(), smem.data());
  return {met[0], met[1], smem[0], smem[1]};
}

Result race(const std::string& mode) {
  const Race r = mode == "barrier" ? Race::kBarrier
                 : mode == "none"  ? Race::kNone
                                   : Race::kShuffles;
  TORCH_CHECK(mode == "barrier" || mode == "none" || mode == "shuffles", "no race mode ", mode);
  Result out(2 * kPlantedThreads, 0.0);
  plain(race_kernel, 1, kPlantedThreads, kPlantedThreads * sizeof(double), r, out.data());
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("barrier_case", &run_barrier_case, pybind11::arg("name"), pybind11::arg("delay_ms") = 0);
  m.def("shuffle_case", &run_shuffle_case);
  m.def("mma", &run_mma);
  m.def("mma_case", &run_mma_case);
  m.def("shared_memory", &run_shared_memory);
  m.def("even_entries", &even_entries);
  m.def("cpu_allocator", [] { return reinterpret_cast<uintptr_t>(c10::GetCPUAllocator()); });
  m.def("block_chain", &block_chain);
  m.def("meet", &meet);
  m.def("race", &race);
  m.def("block_permutation", &emu::BlockOrder::permutation);
  m.def("block_order_seed", [] { return emu::block_order().current_seed(); });
  m.def("seed_block_order",
        [](uint64_t seed, uint64_t stream) { emu::block_order().seed(seed, stream); });
}
