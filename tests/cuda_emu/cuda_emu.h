// A host emulator of the small CUDA subset our kernels use, so that their index math, tiling,
// halos, barriers, warp shuffles and reductions run on machines without a GPU, and fail there
// the way compute-sanitizer (synccheck, initcheck, racecheck) would make them fail on one.
//
// Execution. A block's threads are std::threads. A non-cooperative launch runs kBlocksInFlight
// blocks at a time on slots (each with its own shared memory and barriers), taking its blocks in
// a seeded random order (BlockOrder), so a result that depends on the order of the blocks of one
// launch, or on one block seeing another's writes, shows. A cooperative launch
// (launch_cooperative) runs all its blocks at once, so grid_sync() is a barrier over the grid.
//
// Barrier discipline. Each violation throws KernelError out of the launch, naming the block, the
// threads and the call sites (file:line:column); on a GPU it hangs or is undefined:
//   - __syncthreads: every thread of the block arrives, all at the same call site, in each
//     barrier generation. So a thread may not exit while block-mates wait at a __syncthreads,
//     and once a thread of the block has exited, no thread of it may wait at one again (that
//     generation could never complete). Threads may exit early when no block-mate ever waits for
//     them: the whole block at once, or threads past the block's last barrier.
//   - grid_sync (cooperative launches only): the same over the grid. Its call site is always the
//     one in launch.cuh, so sites are not compared.
//   - warp shuffles: the mask names the caller's own lane, and every lane it names exists, is
//     live and arrives at the same call site with the same mask. A lane that reads from a lane
//     outside the mask (exited or not) gets the poison pattern, not stale data.
//   - any mix that deadlocks a GPU: a thread arriving at one kind of barrier while threads it
//     must meet wait at another (a shuffle naming a lane that waits at __syncthreads, threads of
//     one block at __syncthreads and at grid_sync).
//
// Poison (kPoison bytes: NaN in every float type, -1 in every integer type): dynamic and static
// shared memory, refilled for every block; shuffle reads of lanes outside the mask. Tensors that
// launch code allocates are poisoned by emu_runtime.h's PoisonedAllocations.
//
// Static __shared__ arrays are per block: a macro cannot turn `__shared__ T name[dims];` into a
// reference (the name follows the type), so the emulator build (emu_build.py) compiles the
// kernels from a copy of csrc/ in which each such declaration reads
// FUSEDGRU_EMU_SHARED(name, dims, T), the block's own copy; any other use of __shared__ fails to
// compile.
//
// ThreadSanitizer (FUSEDGRU_EMU_TSAN builds). The emulator's own bookkeeping is hidden from TSan
// (Quiet), so the only happens-before edges among the threads of a launch are a GPU's:
// __syncthreads over the block, a shuffle over the lanes of its mask, grid_sync over the grid;
// and, since a slot reuses its memory, from each block to the next one on the same slot. A
// missing barrier is then a data race in every interleaving. (A dependence between blocks shows
// through the random order instead.)
//
// Not emulated: warp-synchronous code without shuffles (__syncwarp, __syncthreads_count and the
// like are not provided), the GPU's weaker memory model (the host's applies, with the edges
// above), and launch rules beyond the checks in check_launch() and emu_runtime.h.
#pragma once

#include <math.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <numeric>
#include <random>
#include <source_location>
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
#define __grid_constant__
#define __align__(n) alignas(n)
#define __shared__ \
  static_assert(false, "emu: __shared__ other than `__shared__ T name[dims];` (emu_build.py)");

// `__shared__ T name dims;` as emu_build.py rewrites it: a reference to this block's copy.
#define FUSEDGRU_EMU_SHARED(name, dims, ...)           \
  using fusedgru_emu_##name##_t = __VA_ARGS__ dims;    \
  static constexpr char fusedgru_emu_##name##_tag = 0; \
  fusedgru_emu_##name##_t& name =                      \
      ::emu::static_shared<fusedgru_emu_##name##_t>(&fusedgru_emu_##name##_tag)

#if defined(__SANITIZE_THREAD__)
extern "C" {
void AnnotateIgnoreReadsBegin(const char* file, int line);
void AnnotateIgnoreReadsEnd(const char* file, int line);
void AnnotateIgnoreWritesBegin(const char* file, int line);
void AnnotateIgnoreWritesEnd(const char* file, int line);
void AnnotateIgnoreSyncBegin(const char* file, int line);
void AnnotateIgnoreSyncEnd(const char* file, int line);
void __tsan_acquire(void* addr);
void __tsan_release(void* addr);
}
#endif

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
constexpr int kMaxCooperativeBlocks = 64;  // all at once, as std::threads
constexpr int kBlocksInFlight = 2;         // non-cooperative launches
constexpr uint64_t kMaxEmulatedBlocks = 1u << 24;
constexpr unsigned char kPoison = 0xff;
constexpr size_t kShuffleBytes = 16;  // the largest type a shuffle moves
constexpr size_t kLaneBytes = 48;     // the most one lane brings to a warp collective (mma)
constexpr size_t kSmemAlign = 16;
constexpr uint64_t kNever = ~uint64_t{0};  // a barrier generation no thread waits at

// A kernel broke a CUDA rule: the launch throws it.
class KernelError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Thrown in the threads that another thread's error woke; not an error of its own.
struct Aborted {};

// Hides the emulator's bookkeeping (its locks, waits and state) from ThreadSanitizer: begin it
// before taking a lock, so that it ends after the lock is released, and never nest it. Inside,
// release() and acquire() tell TSan the happens-before edges that a GPU barrier gives: every
// thread that reaches the barrier releases into the sync object of its generation, every thread
// that the generation lets through acquires it.
class Quiet {
 public:
#if defined(__SANITIZE_THREAD__)
  Quiet() {
    AnnotateIgnoreReadsBegin(__FILE__, __LINE__);
    AnnotateIgnoreWritesBegin(__FILE__, __LINE__);
    AnnotateIgnoreSyncBegin(__FILE__, __LINE__);
  }
  ~Quiet() {
    AnnotateIgnoreSyncEnd(__FILE__, __LINE__);
    AnnotateIgnoreWritesEnd(__FILE__, __LINE__);
    AnnotateIgnoreReadsEnd(__FILE__, __LINE__);
  }
  void release(void* sync) {
    AnnotateIgnoreSyncEnd(__FILE__, __LINE__);
    __tsan_release(sync);
    AnnotateIgnoreSyncBegin(__FILE__, __LINE__);
  }
  void acquire(void* sync) {
    AnnotateIgnoreSyncEnd(__FILE__, __LINE__);
    __tsan_acquire(sync);
    AnnotateIgnoreSyncBegin(__FILE__, __LINE__);
  }
#else
  Quiet() = default;
  void release(void*) {}
  void acquire(void*) {}
#endif
  Quiet(const Quiet&) = delete;
  Quiet& operator=(const Quiet&) = delete;
};

// The sync objects of a barrier's generations for Quiet::release / acquire. Two alternate: a
// thread acquires generation g before any thread can release into g + 2 (that needs the
// thread's own arrival at g + 1), whereas with one object a thread slow to wake from g could
// acquire what threads already past g released into g + 1, and hide their race with it.
class Clock {
 public:
  void* at(uint64_t gen) { return &phase_[gen % 2]; }

 private:
  char phase_[2] = {0, 0};
};

inline std::string site_name(const std::source_location& s) {
  return std::string(s.file_name()) + ":" + std::to_string(s.line()) + ":" +
         std::to_string(s.column());
}

inline bool same_site(const std::source_location& a, const std::source_location& b) {
  return a.line() == b.line() && a.column() == b.column() &&
         std::strcmp(a.file_name(), b.file_name()) == 0;
}

inline std::string coords(dim3 d) {
  return "(" + std::to_string(d.x) + ", " + std::to_string(d.y) + ", " + std::to_string(d.z) + ")";
}

inline dim3 unflatten(uint64_t i, dim3 extent) {
  return dim3(static_cast<unsigned int>(i % extent.x),
              static_cast<unsigned int>(i / extent.x % extent.y),
              static_cast<unsigned int>(i / (1ull * extent.x * extent.y)));
}

// The order in which non-cooperative launches take their blocks: a permutation drawn from
// (seed, stream, launch number). The seed is FUSEDGRU_TEST_SEED's (else a random one) until
// seed() sets one; the tests set (FUSEDGRU_TEST_SEED, a hash of the test) before each test, so
// a test's launches replay from the seed in its report. A launch's errors name all three.
class BlockOrder {
 public:
  void seed(uint64_t seed, uint64_t stream) {
    std::lock_guard<std::mutex> lock(mutex_);
    seed_ = seed;
    stream_ = stream;
    launches_ = 0;
  }
  uint64_t current_seed() {
    std::lock_guard<std::mutex> lock(mutex_);
    return seed_;
  }
  static std::vector<uint32_t> permutation(uint64_t seed, uint64_t stream, uint64_t launch,
                                           uint32_t blocks) {
    std::vector<uint32_t> order(blocks);
    std::iota(order.begin(), order.end(), 0u);
    std::seed_seq seq{static_cast<uint32_t>(seed),   static_cast<uint32_t>(seed >> 32),
                      static_cast<uint32_t>(stream), static_cast<uint32_t>(stream >> 32),
                      static_cast<uint32_t>(launch), static_cast<uint32_t>(launch >> 32)};
    std::mt19937_64 rng(seq);
    std::shuffle(order.begin(), order.end(), rng);
    return order;
  }
  // The next launch's order of `blocks` blocks, and its name for error messages.
  std::pair<std::vector<uint32_t>, std::string> next(uint32_t blocks) {
    uint64_t seed, stream, launch;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      seed = seed_;
      stream = stream_;
      launch = launches_++;
    }
    return {permutation(seed, stream, launch, blocks),
            "blocks in random order: FUSEDGRU_TEST_SEED=" + std::to_string(seed) + ", stream " +
                std::to_string(stream) + ", launch " + std::to_string(launch)};
  }

 private:
  static uint64_t initial_seed() {
    if (const char* env = std::getenv("FUSEDGRU_TEST_SEED")) return std::strtoull(env, nullptr, 10);
    std::random_device rd;
    return (static_cast<uint64_t>(rd()) << 32) ^ rd();
  }
  std::mutex mutex_;
  uint64_t seed_ = initial_seed();
  uint64_t stream_ = 0;
  uint64_t launches_ = 0;
};

inline BlockOrder& block_order() {
  static BlockOrder order;
  return order;
}

// Exactly `size` bytes, 16-byte aligned, so AddressSanitizer sees any overrun.
struct Bytes {
  explicit Bytes(size_t size_)
      : size(size_),
        data(new (std::align_val_t(kSmemAlign)) unsigned char[std::max<size_t>(size_, 1)]) {}
  void poison() { std::memset(data.get(), kPoison, size); }
  struct AlignedDelete {
    void operator()(unsigned char* p) const {
      ::operator delete[](p, std::align_val_t(kSmemAlign));
    }
  };
  size_t size;
  std::unique_ptr<unsigned char[], AlignedDelete> data;
};

using Word = std::array<unsigned char, kLaneBytes>;
using LaneWords = std::array<Word, kWarp>;

// Computes every lane's result of a warp collective from every lane's operands (mma).
using Combine = void (*)(const LaneWords& in, LaneWords& out);

// One shuffle call of the lanes of `mask` (or another warp collective: an mma, whose `combine`
// computes the results): collects every lane's value and source lane, then hands each lane its
// result. Each call is a fresh object, freed when its last lane has taken its result, so that
// its address is also its own sync object for ThreadSanitizer.
struct Shuffle {
  Shuffle(unsigned int mask_, const std::source_location& site_, Combine combine_)
      : mask(mask_), site(site_), combine(combine_) {}
  std::string kind() const { return combine == nullptr ? "shuffle" : "mma"; }
  void complete() {
    if (combine != nullptr) {
      combine(value, result);
      unread = std::popcount(mask);
      done = true;
      return;
    }
    for (int lane = 0; lane < kWarp; ++lane) {
      if ((mask >> lane & 1u) == 0) continue;
      const int s = src[lane];
      if (s >= 0 && s < kWarp && (mask >> s & 1u) != 0) {
        result[lane] = value[s];
      } else {
        result[lane].fill(kPoison);  // a lane outside the mask: exited or not participating
      }
    }
    unread = std::popcount(mask);
    done = true;
  }
  const unsigned int mask;
  const std::source_location site;
  const Combine combine;
  unsigned int arrived = 0;
  int unread = 0;
  bool done = false;
  std::array<int, kWarp> src{};
  LaneWords value{}, result{};
};

struct Warp {
  // The shuffle in flight that still collects lanes and names any lane of `lanes`.
  Shuffle* collecting(unsigned int lanes) {
    for (auto& s : in_flight) {
      if (!s->done && (s->mask & lanes) != 0) return s.get();
    }
    return nullptr;
  }
  Shuffle& open(unsigned int mask, const std::source_location& site, Combine combine) {
    in_flight.push_back(std::make_unique<Shuffle>(mask, site, combine));
    return *in_flight.back();
  }
  // A lane has taken its result; the last one frees the shuffle.
  void taken(Shuffle& s) {
    if (--s.unread > 0) return;
    for (auto it = in_flight.begin(); it != in_flight.end(); ++it) {
      if (it->get() == &s) {
        in_flight.erase(it);
        return;
      }
    }
  }
  unsigned int lanes = 0;   // lanes that exist (a partial last warp has fewer)
  unsigned int exited = 0;  // lanes that have exited
  std::condition_variable cv;
  std::vector<std::unique_ptr<Shuffle>> in_flight;
};

// The grid barrier of a cooperative launch.
struct Grid {
  explicit Grid(int threads) : total(threads) {}
  std::mutex mutex;
  std::condition_variable cv;
  // Generations completed; read under a block's lock too. The emulator's atomics are relaxed:
  // its locks order them (and relaxed ones give ThreadSanitizer no edges of their own).
  uint64_t completed() const { return gen.load(std::memory_order_relaxed); }
  std::atomic<uint64_t> gen{0};
  int arrived = 0;
  const int total;
  int exited = 0;
  std::string first_exited;
  Clock clock;
};

class Launch;

// One block: its threads' barrier state, its shared memory. `grid` is null outside cooperative
// launches.
struct Block {
  Block(Launch& launch_, dim3 dims_, size_t smem_bytes, Grid* grid_)
      : launch(launch_),
        dims(dims_),
        nthreads(static_cast<int>(dims_.x * dims_.y * dims_.z)),
        grid(grid_),
        sync_stamp(nthreads, kNever),
        grid_stamp(nthreads, kNever),
        warps((nthreads + kWarp - 1) / kWarp),
        smem(smem_bytes) {
    for (size_t w = 0; w < warps.size(); ++w) {
      const int n = std::min(kWarp, nthreads - static_cast<int>(w) * kWarp);
      warps[w].lanes = n == kWarp ? ~0u : (1u << n) - 1u;
    }
  }

  // Makes this the grid's block `index`, fresh: barriers reset, shared memory poisoned.
  void arm(dim3 index_) {
    index = index_;
    sync_gen = 0;
    sync_arrived = 0;
    sync_first = -1;
    std::fill(sync_stamp.begin(), sync_stamp.end(), kNever);
    std::fill(grid_stamp.begin(), grid_stamp.end(), kNever);
    grid_wait_gen = kNever;
    grid_waiters = 0;
    exited = 0;
    first_exited = -1;
    for (Warp& w : warps) w.exited = 0;
    smem.poison();
    for (auto& entry : statics) entry.second.poison();
  }

  std::string thread_name(int tid) const {
    return "block " + coords(index) + " thread " + coords(unflatten(tid, dims));
  }

  // Throws when a shuffle in flight in tid's warp waits for tid, which went elsewhere (what()).
  template <typename What>
  void check_no_shuffle_waits_for(int tid, const What& what) {
    Warp& w = warps[tid / kWarp];
    const unsigned int bit = 1u << (tid % kWarp);
    if (Shuffle* s = w.collecting(bit); s != nullptr && (s->arrived & bit) == 0) {
      throw KernelError("emu: " + thread_name(tid) + " " + what() + " while lanes " +
                        lanes_of(s->arrived) + " of its warp wait for it at the shuffle at " +
                        site_name(s->site) + " (a GPU hangs)");
    }
  }

  // Whether block-mates wait at the grid barrier now.
  bool grid_waiting() const {
    return grid != nullptr && grid_waiters > 0 && grid_wait_gen == grid->completed();
  }

  static std::string lanes_of(unsigned int bits) {
    std::string out;
    for (int lane = 0; lane < kWarp; ++lane) {
      if ((bits >> lane & 1u) != 0) out += (out.empty() ? "" : ",") + std::to_string(lane);
    }
    return "{" + out + "}";
  }

  Launch& launch;
  const dim3 dims;
  const int nthreads;
  Grid* const grid;
  dim3 index;
  std::mutex mutex;  // guards everything below but the shared memory
  // __syncthreads: the generation in progress (completed generations: sync_gen).
  std::condition_variable sync_cv;
  uint64_t sync_gen = 0;
  int sync_arrived = 0, sync_first = -1;
  std::source_location sync_site;
  std::vector<uint64_t> sync_stamp;  // per thread: the generation it waits at
  // grid_sync: per thread the grid generation it waits at; how many wait at which.
  std::vector<uint64_t> grid_stamp;
  uint64_t grid_wait_gen = kNever;
  int grid_waiters = 0;
  int exited = 0, first_exited = -1;
  std::vector<Warp> warps;
  Clock sync_clock;
  Bytes smem;                            // dynamic shared memory
  std::map<const void*, Bytes> statics;  // static __shared__ arrays, by declaration
};

// What all threads of one launch share: the first error, which wakes and ends every thread.
class Launch {
 public:
  explicit Launch(std::string name) : name_(std::move(name)) {}
  // Before the threads start.
  void add(Block* b) { blocks_.push_back(b); }
  void set_grid(Grid* g) { grid_ = g; }

  bool aborted() const { return aborted_.load(std::memory_order_relaxed); }
  void check() const {
    if (aborted()) throw Aborted{};
  }
  void fail(std::exception_ptr e) {
    Quiet quiet;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!error_) error_ = e;
      aborted_.store(true, std::memory_order_relaxed);
    }
    for (Block* b : blocks_) {
      std::lock_guard<std::mutex> lock(b->mutex);
      b->sync_cv.notify_all();
      for (Warp& w : b->warps) w.cv.notify_all();
    }
    if (grid_ != nullptr) {
      std::lock_guard<std::mutex> lock(grid_->mutex);
      grid_->cv.notify_all();
    }
  }
  // After the threads have joined: the first error, a KernelError with the launch's name.
  void rethrow() const {
    if (!error_) return;
    try {
      std::rethrow_exception(error_);
    } catch (const KernelError& e) {
      throw KernelError(std::string(e.what()) + " [" + name_ + "]");
    }
  }

 private:
  std::string name_;
  std::vector<Block*> blocks_;
  Grid* grid_ = nullptr;
  std::atomic<bool> aborted_{false};
  std::mutex mutex_;
  std::exception_ptr error_;
};

inline thread_local Block* current = nullptr;
inline thread_local int linear_tid = 0;

inline void* dynamic_smem() { return current->smem.data.get(); }

template <typename T>
T& static_shared(const void* tag) {
  static_assert(alignof(T) <= kSmemAlign, "static shared array alignment");
  Block& b = *current;
  Quiet quiet;
  std::lock_guard<std::mutex> lock(b.mutex);
  auto it = b.statics.find(tag);
  if (it == b.statics.end()) {
    it = b.statics.emplace(tag, Bytes(sizeof(T))).first;
    it->second.poison();
  }
  return *reinterpret_cast<T*>(it->second.data.get());
}

inline void syncthreads(const std::source_location& site) {
  Block& b = *current;
  const int tid = linear_tid;
  Quiet quiet;
  std::unique_lock<std::mutex> lock(b.mutex);
  b.launch.check();
  const auto at = [&] { return "reached __syncthreads at " + site_name(site); };
  if (b.exited > 0) {
    throw KernelError("emu: " + b.thread_name(tid) + " " + at() + " after " +
                      b.thread_name(b.first_exited) +
                      " exited: that barrier can never complete (a GPU hangs)");
  }
  if (b.sync_arrived > 0 && !same_site(b.sync_site, site)) {
    throw KernelError("emu: divergent __syncthreads: " + b.thread_name(tid) + " " + at() +
                      ", but " + b.thread_name(b.sync_first) + " waits at " +
                      site_name(b.sync_site));
  }
  b.check_no_shuffle_waits_for(tid, at);
  if (b.grid_waiting()) {
    throw KernelError("emu: " + b.thread_name(tid) + " " + at() +
                      " while block-mates wait at grid_sync (a GPU hangs)");
  }
  if (b.sync_arrived == 0) {
    b.sync_site = site;
    b.sync_first = tid;
  }
  const uint64_t gen = b.sync_gen;
  b.sync_stamp[tid] = gen;
  quiet.release(b.sync_clock.at(gen));
  if (++b.sync_arrived == b.nthreads) {
    b.sync_arrived = 0;
    ++b.sync_gen;
    b.sync_cv.notify_all();
  } else {
    b.sync_cv.wait(lock, [&] { return b.sync_gen != gen || b.launch.aborted(); });
    if (b.sync_gen == gen) throw Aborted{};
  }
  quiet.acquire(b.sync_clock.at(gen));
}

inline void grid_sync() {
  Block& b = *current;
  const int tid = linear_tid;
  if (b.grid == nullptr) {
    throw KernelError("emu: " + b.thread_name(tid) +
                      " called grid_sync() in a launch that is not cooperative");
  }
  Grid& g = *b.grid;
  Quiet quiet;
  {
    std::unique_lock<std::mutex> block_lock(b.mutex);
    b.launch.check();
    if (b.sync_arrived > 0) {
      throw KernelError("emu: " + b.thread_name(tid) + " reached grid_sync while " +
                        b.thread_name(b.sync_first) + " waits at __syncthreads at " +
                        site_name(b.sync_site) + " (a GPU hangs)");
    }
    b.check_no_shuffle_waits_for(tid, [] { return std::string("reached grid_sync"); });
    std::unique_lock<std::mutex> lock(g.mutex);
    if (g.exited > 0) {
      throw KernelError("emu: " + b.thread_name(tid) + " reached grid_sync after " +
                        g.first_exited + " exited: that barrier can never complete (a GPU hangs)");
    }
    const uint64_t gen = g.completed();
    b.grid_stamp[tid] = gen;
    if (b.grid_wait_gen != gen) {
      b.grid_wait_gen = gen;
      b.grid_waiters = 0;
    }
    ++b.grid_waiters;
    block_lock.unlock();
    quiet.release(g.clock.at(gen));
    if (++g.arrived == g.total) {
      g.arrived = 0;
      g.gen.fetch_add(1, std::memory_order_relaxed);
      g.cv.notify_all();
    } else {
      g.cv.wait(lock, [&] { return g.completed() != gen || b.launch.aborted(); });
      if (g.completed() == gen) throw Aborted{};
    }
    quiet.acquire(g.clock.at(gen));
  }
}

// The lanes of a warp collective over `mask` from the calling lane must all meet it, at one call
// site with one mask (and one kind: a shuffle, or an mma with its `combine`). A shuffle
// (combine == nullptr) hands the caller the value of src_lane (poison if outside the mask).
template <typename In, typename Out>
Out exchange(unsigned int mask, const In& v, int src_lane, Combine combine,
             const std::source_location& site) {
  static_assert(sizeof(In) <= kLaneBytes && sizeof(Out) <= kLaneBytes &&
                    std::is_trivially_copyable<In>::value && std::is_trivially_copyable<Out>::value,
                "warp collective operand type");
  Block& b = *current;
  const int tid = linear_tid, lane = tid % kWarp, base = tid - lane;
  const unsigned int bit = 1u << lane;
  Warp& w = b.warps[tid / kWarp];
  Out out;
  {
    Quiet quiet;
    std::unique_lock<std::mutex> lock(b.mutex);
    b.launch.check();
    const std::string kind = combine == nullptr ? "shuffle" : "mma";
    const auto who = [&] {
      return "emu: " + b.thread_name(tid) + " (lane " + std::to_string(lane) + "): " + kind +
             " at " + site_name(site) + " with mask " + Block::lanes_of(mask);
    };
    if ((mask & bit) == 0) throw KernelError(who() + " leaves out the caller's own lane");
    if ((mask & ~w.lanes) != 0) {
      throw KernelError(who() + " names lanes that do not exist (" + std::to_string(b.nthreads) +
                        " threads per block)");
    }
    if ((mask & w.exited) != 0) {
      throw KernelError(who() + " names lanes " + Block::lanes_of(mask & w.exited) +
                        " that have exited (a GPU hangs or reads garbage)");
    }
    for (int k = 0; k < kWarp; ++k) {
      if ((mask >> k & 1u) == 0 || k == lane) continue;
      if (b.sync_stamp[base + k] == b.sync_gen) {
        throw KernelError(who() + " while lane " + std::to_string(k) +
                          " waits at __syncthreads at " + site_name(b.sync_site) +
                          " (a GPU hangs)");
      }
      if (b.grid != nullptr && b.grid_stamp[base + k] == b.grid->completed()) {
        throw KernelError(who() + " while lane " + std::to_string(k) +
                          " waits at grid_sync (a GPU hangs)");
      }
    }
    Shuffle* s = w.collecting(bit);
    if (s != nullptr && (s->mask != mask || !same_site(s->site, site) || s->combine != combine)) {
      throw KernelError(who() + ", but lanes " + Block::lanes_of(s->arrived) +
                        " wait for it at the " + s->kind() + " at " + site_name(s->site) +
                        " with mask " + Block::lanes_of(s->mask));
    }
    if (s == nullptr) {
      if (Shuffle* other = w.collecting(mask)) {
        throw KernelError(who() + ", but lanes " + Block::lanes_of(other->arrived) +
                          " of that mask wait at the " + other->kind() + " at " +
                          site_name(other->site) + " with mask " + Block::lanes_of(other->mask));
      }
      s = &w.open(mask, site, combine);
    }
    std::memcpy(s->value[lane].data(), &v, sizeof(In));
    s->src[lane] = src_lane;
    s->arrived |= bit;
    quiet.release(s);
    if (s->arrived == mask) {
      s->complete();
      w.cv.notify_all();
    } else {
      w.cv.wait(lock, [&] { return s->done || b.launch.aborted(); });
      if (!s->done) throw Aborted{};
    }
    quiet.acquire(s);
    std::memcpy(&out, s->result[lane].data(), sizeof(Out));
    w.taken(*s);
  }
  return out;
}

template <typename T>
T shuffle(unsigned int mask, T v, int src_lane, const std::source_location& site) {
  static_assert(sizeof(T) <= kShuffleBytes, "shuffle type");
  return exchange<T, T>(mask, v, src_lane, nullptr, site);
}

inline void check_width(int width) {
  if (width < 1 || width > kWarp || !std::has_single_bit(static_cast<unsigned int>(width))) {
    throw KernelError("emu: shuffle width " + std::to_string(width) +
                      " is not a power of two in [1, 32]");
  }
}

// The lane a shuffle over segments of `width` lanes reads when it asks for `src`: src, or the
// caller's own lane when src lies past the caller's segment (as CUDA defines it).
inline int segment_source(int lane, int src, int width) {
  const int end = (lane / width + 1) * width;
  return src >= 0 && src < end ? src : lane;
}

// The end of a thread's run through the kernel: an exit under the barrier rules.
inline void exit_thread(Block& b, int tid) {
  Quiet quiet;
  std::lock_guard<std::mutex> lock(b.mutex);
  if (b.launch.aborted()) return;
  if (b.sync_arrived > 0) {
    throw KernelError("emu: " + b.thread_name(tid) + " exited while " +
                      b.thread_name(b.sync_first) + " waits at __syncthreads at " +
                      site_name(b.sync_site) + ": that barrier can never complete (a GPU hangs)");
  }
  b.check_no_shuffle_waits_for(tid, [] { return std::string("exited"); });
  if (b.grid != nullptr) {
    std::lock_guard<std::mutex> grid_lock(b.grid->mutex);
    if (b.grid->arrived > 0) {
      throw KernelError("emu: " + b.thread_name(tid) + " exited while " +
                        std::to_string(b.grid->arrived) + " threads wait at grid_sync: that " +
                        "barrier can never complete (a GPU hangs)");
    }
    if (b.grid->exited++ == 0) b.grid->first_exited = b.thread_name(tid);
  }
  if (b.exited++ == 0) b.first_exited = tid;
  b.warps[tid / kWarp].exited |= 1u << (tid % kWarp);
}

// Runs thread tid of block b through the kernel. An exception ends the launch (the other threads
// wake with Aborted); a return is an exit under the barrier rules.
template <typename Kernel, typename Params>
void run_thread(Block& b, int tid, dim3 grid, Kernel kernel, const Params& params) {
  current = &b;
  linear_tid = tid;
  threadIdx = unflatten(tid, b.dims);
  blockIdx = b.index;
  blockDim = b.dims;
  gridDim = grid;
  try {
    std::apply(kernel, params);
    exit_thread(b, tid);
  } catch (const Aborted&) {
  } catch (...) {
    b.launch.fail(std::current_exception());
  }
}

// A slot of a non-cooperative launch: a block's worth of threads running the launch's blocks one
// after another, each block fresh (Block::arm).
struct Slot {
  Slot(Launch& launch, dim3 block, size_t smem_bytes) : block(launch, block, smem_bytes, nullptr) {}
  // Every thread of the slot calls this between blocks; the last to arrive runs pick(), which
  // sets `next` (the grid-linear index of the next block, -1 when the slot is done).
  template <typename Pick>
  void between_blocks(const Pick& pick) {
    Quiet quiet;
    std::unique_lock<std::mutex> lock(mutex);
    const uint64_t r = round;
    quiet.release(clock.at(r));
    if (++arrived == block.nthreads) {
      arrived = 0;
      pick();
      ++round;
      cv.notify_all();
    } else {
      cv.wait(lock, [&] { return round != r; });
    }
    quiet.acquire(clock.at(r));
  }
  Block block;
  std::mutex mutex;
  std::condition_variable cv;
  int arrived = 0;
  uint64_t round = 0;
  int64_t next = -1;
  Clock clock;
};

inline void check_launch(dim3 grid, dim3 block, size_t smem_bytes) {
  const unsigned long long threads = 1ull * block.x * block.y * block.z;
  if (threads == 0 || threads > kMaxThreads || block.z > 64) {
    throw std::invalid_argument("emu::launch: bad block size " + std::to_string(threads));
  }
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535 ||
      1ull * grid.x * grid.y * grid.z > kMaxEmulatedBlocks) {
    throw std::invalid_argument("emu::launch: bad grid (or too many blocks to emulate)");
  }
  if (smem_bytes > kMaxDynamicSmem) {
    throw std::invalid_argument("emu::launch: dynamic shared memory over the limit: " +
                                std::to_string(smem_bytes));
  }
}

// Runs kernel over grid x block with smem_bytes of dynamic shared memory: kBlocksInFlight
// blocks at a time, in the order block_order() draws.
template <typename... KernelArgs, typename... Args>
void launch(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem_bytes,
            Args&&... args) {
  check_launch(grid, block, smem_bytes);
  const std::tuple<std::decay_t<KernelArgs>...> params(std::forward<Args>(args)...);
  const auto blocks = static_cast<uint32_t>(1ull * grid.x * grid.y * grid.z);
  auto [order, name] = block_order().next(blocks);
  Launch run(name);
  std::vector<std::unique_ptr<Slot>> slots;
  for (uint32_t s = 0; s < std::min<uint32_t>(kBlocksInFlight, blocks); ++s) {
    slots.push_back(std::make_unique<Slot>(run, block, smem_bytes));
    run.add(&slots.back()->block);
  }
  std::atomic<uint32_t> cursor{0};
  auto body = [&](Slot& slot, int tid) {
    for (;;) {
      slot.between_blocks([&] {
        const uint32_t i = cursor.fetch_add(1, std::memory_order_relaxed);
        slot.next = run.aborted() || i >= blocks ? int64_t{-1} : int64_t{order[i]};
        if (slot.next >= 0) slot.block.arm(unflatten(slot.next, grid));
      });
      if (slot.next < 0) return;
      run_thread(slot.block, tid, grid, kernel, params);
    }
  };
  std::vector<std::thread> pool;
  for (auto& slot : slots) {
    for (int t = 0; t < slot->block.nthreads; ++t) pool.emplace_back(body, std::ref(*slot), t);
  }
  for (auto& t : pool) t.join();
  run.rethrow();
}

// A cooperative launch: all blocks run at once (each with its own shared memory and barriers),
// so grid_sync() is a barrier over every thread of the grid. Use small grids.
template <typename... KernelArgs, typename... Args>
void launch_cooperative(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem_bytes,
                        Args&&... args) {
  check_launch(grid, block, smem_bytes);
  const int threads = static_cast<int>(block.x * block.y * block.z);
  const int blocks = static_cast<int>(grid.x * grid.y * grid.z);
  if (blocks > kMaxCooperativeBlocks) {
    throw std::invalid_argument("emu::launch_cooperative: more blocks than the emulator runs");
  }
  const std::tuple<std::decay_t<KernelArgs>...> params(std::forward<Args>(args)...);
  Grid grid_barrier(blocks * threads);
  Launch run("cooperative launch of " + std::to_string(blocks) + " blocks");
  run.set_grid(&grid_barrier);
  std::vector<std::unique_ptr<Block>> bs;
  for (int b = 0; b < blocks; ++b) {
    bs.push_back(std::make_unique<Block>(run, block, smem_bytes, &grid_barrier));
    bs.back()->arm(unflatten(b, grid));
    run.add(bs.back().get());
  }
  std::vector<std::thread> pool;
  for (auto& b : bs) {
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&, t, blk = b.get()] { run_thread(*blk, t, grid, kernel, params); });
    }
  }
  for (auto& t : pool) t.join();
  run.rethrow();
}

}  // namespace emu

inline void __syncthreads(std::source_location site = std::source_location::current()) {
  emu::syncthreads(site);
}

template <typename T>
T __shfl_xor_sync(unsigned int mask, T v, int lane_mask, int width = emu::kWarp,
                  std::source_location site = std::source_location::current()) {
  emu::check_width(width);
  const int lane = emu::linear_tid % emu::kWarp;
  return emu::shuffle(mask, v, emu::segment_source(lane, lane ^ lane_mask, width), site);
}

template <typename T>
T __shfl_sync(unsigned int mask, T v, int src_lane, int width = emu::kWarp,
              std::source_location site = std::source_location::current()) {
  emu::check_width(width);
  const int lane = emu::linear_tid % emu::kWarp;
  return emu::shuffle(mask, v, lane - lane % width + (src_lane % width + width) % width, site);
}

template <typename T>
T __shfl_down_sync(unsigned int mask, T v, unsigned int delta, int width = emu::kWarp,
                   std::source_location site = std::source_location::current()) {
  emu::check_width(width);
  const int lane = emu::linear_tid % emu::kWarp;
  return emu::shuffle(mask, v, emu::segment_source(lane, lane + static_cast<int>(delta), width),
                      site);
}

// ---- Warp matrix multiply-accumulate (mma.sync.aligned.m16n8k16 / m16n8k8, fp32 accumulators) --
// A warp collective like a shuffle over the full warp: every lane brings its fragments, and the
// result follows the fragment layouts the PTX ISA documents ("Matrix Fragments for mma.m16n8k16
// with floating point type" and "... mma.m16n8k8", .tf32), with groupID g = lane / 4 and
// threadID_in_group q = lane % 4:
//   16-bit types (m16n8k16): A (16 x 16, row) in 4 registers of 2 elements, register
//     (r >= 8) + 2 (k >= 8) holding A[r][k] of lane (r % 8) 4 + (k % 8) / 2, element k % 2 (low
//     half first); B (16 x 8, col) in 2 registers, register (k >= 8) holding B[k][n] of lane
//     4 n + (k % 8) / 2, element k % 2.
//   .tf32 (m16n8k8): A (16 x 8) register (r >= 8) + 2 (k >= 4) of lane (r % 8) 4 + k % 4;
//     B (8 x 8) register (k >= 4) of lane 4 n + k % 4. A tensor core reads the top 19 bits of a
//     .tf32 operand (the kernels round with cvt.rna.tf32.f32 first).
//   C and D (16 x 8, fp32): element 2 (r >= 8) + n % 2 of lane (r % 8) 4 + n / 2.
// Products of bf16, fp16 or tf32 operands are exact in fp32; the emulator adds them to C in k
// order in fp32 (a GPU's order and rounding of the sum are its own: tests compare with bounds).
namespace emu {

enum class MmaType { kBf16, kF16, kTf32 };

struct MmaOperands {
  uint32_t a[4];
  uint32_t b[2];
  float c[4];
};
struct MmaResult {
  float d[4];
};

inline float float_of_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// IEEE binary16 -> float (exact).
inline float half_bits_to_float(uint32_t h) {
  const uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  if (exp == 0x1f) return float_of_bits(sign | 0x7f800000u | (man << 13));  // inf, NaN
  if (exp != 0) return float_of_bits(sign | ((exp + 112) << 23) | (man << 13));
  const float sub = std::ldexp(static_cast<float>(man), -24);  // zero or subnormal
  return sign != 0 ? -sub : sub;
}

template <MmaType kType>
float mma_element(uint32_t reg, int half) {
  if constexpr (kType == MmaType::kTf32) {
    return float_of_bits(reg & 0xffffe000u);
  } else {
    const uint32_t bits = half == 0 ? (reg & 0xffffu) : (reg >> 16);
    return kType == MmaType::kBf16 ? float_of_bits(bits << 16) : half_bits_to_float(bits);
  }
}

template <MmaType kType>
void mma_combine(const LaneWords& in, LaneWords& out) {
  constexpr bool k16 = kType != MmaType::kTf32;
  constexpr int K = k16 ? 16 : 8, kHalfK = K / 2;
  std::array<MmaOperands, kWarp> ops;
  for (int lane = 0; lane < kWarp; ++lane) std::memcpy(&ops[lane], in[lane].data(), sizeof(ops[0]));
  const auto A = [&](int r, int k) {
    const int lane = (r % 8) * 4 + (k16 ? (k % 8) / 2 : k % 4);
    const int reg = (r >= 8 ? 1 : 0) + (k >= kHalfK ? 2 : 0);
    return mma_element<kType>(ops[lane].a[reg], k % 2);
  };
  const auto B = [&](int k, int n) {
    const int lane = n * 4 + (k16 ? (k % 8) / 2 : k % 4);
    return mma_element<kType>(ops[lane].b[k >= kHalfK ? 1 : 0], k % 2);
  };
  std::array<MmaResult, kWarp> res;
  for (int r = 0; r < 16; ++r) {
    for (int n = 0; n < 8; ++n) {
      const int lane = (r % 8) * 4 + n / 2, e = (r >= 8 ? 2 : 0) + n % 2;
      float sum = ops[lane].c[e];
      for (int k = 0; k < K; ++k) sum += A(r, k) * B(k, n);
      res[lane].d[e] = sum;
    }
  }
  for (int lane = 0; lane < kWarp; ++lane)
    std::memcpy(out[lane].data(), &res[lane], sizeof(res[0]));
}

// d = A B + c over the warp (mma.sync.aligned: all 32 lanes, one call site).
template <MmaType kType>
void mma_sync(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4],
              const std::source_location& site = std::source_location::current()) {
  MmaOperands in;
  std::memcpy(in.a, a, sizeof(in.a));
  std::memcpy(in.b, b, sizeof(in.b));
  std::memcpy(in.c, c, sizeof(in.c));
  const MmaResult r = exchange<MmaOperands, MmaResult>(0xffffffffu, in, linear_tid % kWarp,
                                                       &mma_combine<kType>, site);
  std::memcpy(d, r.d, sizeof(r.d));
}

// cvt.rna.tf32.f32: round to the nearest TF32 value (10 mantissa bits), ties away from zero.
inline uint32_t float_to_tf32_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  if ((u & 0x7f800000u) == 0x7f800000u) return u;  // inf, NaN: kept
  return (u + 0x1000u) & 0xffffe000u;
}

}  // namespace emu

// CUDA's 16-byte vector type (vector_types.h), for 16-byte loads and stores.
struct alignas(16) uint4 {
  unsigned int x, y, z, w;
};

template <typename T>
T __ldg(const T* p) {
  return *p;
}

template <typename T>
T __ldcg(const T* p) {
  return *p;
}

// Relaxed, as a GPU's: no ordering with the thread's other accesses.
template <typename T>
T atomicAdd(T* address, T value) {
  std::atomic_ref<T> ref(*address);
  T old = ref.load(std::memory_order_relaxed);
  while (!ref.compare_exchange_weak(old, static_cast<T>(old + value), std::memory_order_relaxed)) {
  }
  return old;
}
