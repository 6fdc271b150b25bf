// A host emulator of the small CUDA subset our kernels use, so their index math, tiling, halos,
// barriers, warp shuffles and reductions run and are checked on machines without a GPU.
//
// A launch runs its blocks one after another; each block runs blockDim threads as std::threads
// (the same threads for every block of a launch). __syncthreads is a barrier over the block's
// live threads, a warp shuffle a barrier over the warp's live threads around a shared exchange
// slot, and a thread that returns leaves both barriers (as exited threads do on the GPU).
// __shared__ arrays are function statics (one block runs at a time); dynamic shared memory is a
// buffer filled with a NaN pattern before every block, so a read of a slot no thread wrote shows
// up in the results. An exception thrown in a kernel thread is rethrown by the launch.
//
// Cooperative launches (launch_cooperative) run all blocks at once, so grid_sync() is a barrier
// over the whole grid; their kernels must use dynamic shared memory only.
//
// Not emulated: warp-synchronous execution without shuffles, memory-model races (blocks and
// threads interleave in one legal order), launch limits beyond the checks below.
#pragma once

#include <math.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#define FUSEDGRU_CUDA_EMU 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) alignas(n)

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1)
      : x(x_), y(y_), z(z_) {}
};

inline thread_local dim3 threadIdx{0, 0, 0};
inline thread_local dim3 blockIdx{0, 0, 0};
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

using std::max;
using std::min;

namespace emu {

constexpr int kWarp = 32;
constexpr size_t kMaxDynamicSmem = 227 * 1024;  // H100's opt-in limit per block
constexpr unsigned int kMaxThreads = 1024;

// A reusable barrier whose party count shrinks when a party leaves.
class Barrier {
 public:
  void reset(int parties) {
    std::lock_guard<std::mutex> lock(mutex_);
    parties_ = parties;
    arrived_ = 0;
  }
  // Blocks until every remaining party has arrived; the last arrival runs on_complete first.
  void wait(const std::function<void()>& on_complete = nullptr) {
    std::unique_lock<std::mutex> lock(mutex_);
    const uint64_t gen = generation_;
    if (++arrived_ == parties_) {
      if (on_complete) on_complete();
      release();
    } else {
      cv_.wait(lock, [&] { return generation_ != gen; });
    }
  }
  void leave() {
    std::lock_guard<std::mutex> lock(mutex_);
    --parties_;
    if (arrived_ > 0 && arrived_ == parties_) release();
  }

 private:
  void release() {
    arrived_ = 0;
    ++generation_;
    cv_.notify_all();
  }
  std::mutex mutex_;
  std::condition_variable cv_;
  int parties_ = 0;
  int arrived_ = 0;
  uint64_t generation_ = 0;
};

struct Block {
  explicit Block(int threads, size_t smem_bytes)
      : nthreads(threads),
        warps((threads + kWarp - 1) / kWarp),
        exchange(threads),
        smem_size(smem_bytes),
        smem(new (std::align_val_t(16)) unsigned char[std::max<size_t>(smem_bytes, 1)]) {}
  void arm() {
    sync.reset(nthreads);
    for (size_t w = 0; w < warps.size(); ++w) {
      warps[w].reset(std::min(kWarp, nthreads - static_cast<int>(w) * kWarp));
    }
    std::memset(smem.get(), 0xff, smem_size);  // NaN in every float type
  }
  int nthreads;
  Barrier sync;
  std::vector<Barrier> warps;
  std::vector<std::array<unsigned char, 16>> exchange;
  size_t smem_size;
  // Exactly the launch's bytes (16-byte aligned), so an address sanitizer sees overruns.
  struct AlignedDelete {
    void operator()(unsigned char* p) const { ::operator delete[](p, std::align_val_t(16)); }
  };
  std::unique_ptr<unsigned char[], AlignedDelete> smem;
  std::mutex atomic_mutex;
};

inline thread_local Block* current = nullptr;
inline thread_local int linear_tid = 0;
inline thread_local Barrier* current_grid = nullptr;  // cooperative launches only

inline void* dynamic_smem() { return current->smem.get(); }

template <typename T>
T shuffle(T v, int src_lane, int width) {
  static_assert(sizeof(T) <= 16 && std::is_trivially_copyable<T>::value, "shuffle type");
  Block& b = *current;
  const int warp = linear_tid / kWarp, lane = linear_tid % kWarp;
  std::memcpy(b.exchange[linear_tid].data(), &v, sizeof(T));
  b.warps[warp].wait();
  T out = v;
  const int segment = lane - lane % width;
  const int src = warp * kWarp + segment + src_lane;
  if (src_lane >= 0 && src_lane < width && src < b.nthreads) {
    std::memcpy(&out, b.exchange[src].data(), sizeof(T));
  }
  b.warps[warp].wait();
  return out;
}

// Runs kernel over grid x block with smem_bytes of dynamic shared memory.
template <typename... KernelArgs, typename... Args>
void launch(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem_bytes,
            Args&&... args) {
  const unsigned long long threads = 1ull * block.x * block.y * block.z;
  if (threads == 0 || threads > kMaxThreads || block.z > 64) {
    throw std::invalid_argument("emu::launch: bad block size " + std::to_string(threads));
  }
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535) {
    throw std::invalid_argument("emu::launch: bad grid");
  }
  if (smem_bytes > kMaxDynamicSmem) {
    throw std::invalid_argument("emu::launch: dynamic shared memory over the limit: " +
                                std::to_string(smem_bytes));
  }
  const std::tuple<std::decay_t<KernelArgs>...> params(std::forward<Args>(args)...);
  Block b(static_cast<int>(threads), smem_bytes);
  b.arm();
  Barrier block_end;
  block_end.reset(static_cast<int>(threads));
  std::vector<std::exception_ptr> errors(threads);
  auto body = [&](int tid) {
    current = &b;
    linear_tid = tid;
    threadIdx = dim3(tid % block.x, (tid / block.x) % block.y, tid / (block.x * block.y));
    blockDim = block;
    gridDim = grid;
    for (unsigned int bz = 0; bz < grid.z; ++bz) {
      for (unsigned int by = 0; by < grid.y; ++by) {
        for (unsigned int bx = 0; bx < grid.x; ++bx) {
          blockIdx = dim3(bx, by, bz);
          if (!errors[tid]) {
            try {
              std::apply(kernel, params);
            } catch (...) {
              errors[tid] = std::current_exception();
            }
          }
          b.sync.leave();
          b.warps[tid / kWarp].leave();
          block_end.wait([&] { b.arm(); });
        }
      }
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(threads);
  for (int t = 0; t < static_cast<int>(threads); ++t) pool.emplace_back(body, t);
  for (auto& t : pool) t.join();
  for (auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

// A cooperative launch: all blocks run at once (each with its own shared memory and barriers),
// so grid_sync() can be a barrier over every live thread of the grid. Use small grids.
template <typename... KernelArgs, typename... Args>
void launch_cooperative(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem_bytes,
                        Args&&... args) {
  const int threads = static_cast<int>(block.x * block.y * block.z);
  const int blocks = static_cast<int>(grid.x * grid.y * grid.z);
  if (threads <= 0 || threads > static_cast<int>(kMaxThreads) || blocks <= 0 || blocks > 64 ||
      smem_bytes > kMaxDynamicSmem) {
    throw std::invalid_argument("emu::launch_cooperative: bad configuration");
  }
  const std::tuple<std::decay_t<KernelArgs>...> params(std::forward<Args>(args)...);
  std::vector<std::unique_ptr<Block>> bs;
  for (int b = 0; b < blocks; ++b) {
    bs.push_back(std::make_unique<Block>(threads, smem_bytes));
    bs.back()->arm();
  }
  Barrier grid_barrier;
  grid_barrier.reset(blocks * threads);
  std::vector<std::exception_ptr> errors(static_cast<size_t>(blocks) * threads);
  auto body = [&](int b, int tid) {
    current = bs[b].get();
    current_grid = &grid_barrier;
    linear_tid = tid;
    threadIdx = dim3(tid % block.x, (tid / block.x) % block.y, tid / (block.x * block.y));
    blockIdx = dim3(b % grid.x, (b / grid.x) % grid.y, b / (grid.x * grid.y));
    blockDim = block;
    gridDim = grid;
    try {
      std::apply(kernel, params);
    } catch (...) {
      errors[static_cast<size_t>(b) * threads + tid] = std::current_exception();
    }
    current->sync.leave();
    current->warps[tid / kWarp].leave();
    grid_barrier.leave();
  };
  std::vector<std::thread> pool;
  for (int b = 0; b < blocks; ++b) {
    for (int t = 0; t < threads; ++t) pool.emplace_back(body, b, t);
  }
  for (auto& t : pool) t.join();
  for (auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

inline void grid_sync() { current_grid->wait(); }

}  // namespace emu

inline void __syncthreads() { emu::current->sync.wait(); }

template <typename T>
T __shfl_xor_sync(unsigned int, T v, int lane_mask, int width = emu::kWarp) {
  return emu::shuffle(v, (emu::linear_tid % width) ^ lane_mask, width);
}

template <typename T>
T __shfl_sync(unsigned int, T v, int src_lane, int width = emu::kWarp) {
  return emu::shuffle(v, src_lane % width, width);
}

template <typename T>
T __shfl_down_sync(unsigned int, T v, unsigned int delta, int width = emu::kWarp) {
  const int lane = emu::linear_tid % width;
  return lane + static_cast<int>(delta) < width ? emu::shuffle(v, lane + delta, width)
                                                : emu::shuffle(v, lane, width);
}

template <typename T>
T __ldg(const T* p) {
  return *p;
}

template <typename T>
T __ldcg(const T* p) {
  return *p;
}

template <typename T>
T atomicAdd(T* address, T value) {
  std::lock_guard<std::mutex> lock(emu::current->atomic_mutex);
  const T old = *address;
  *address = old + value;
  return old;
}
