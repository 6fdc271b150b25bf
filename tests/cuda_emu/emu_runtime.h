// The CUDA runtime and cuBLAS calls that csrc/cuda/launch.cuh's StreamLauncher makes, emulated
// over cuda_emu.h, so the launcher's own logic (shared-memory opt-in, occupancy, cooperative
// launches, the TF32 GEMM's cuBLAS arguments) runs in the CPU tests and meets a GPU's rules:
//   - a block has at most 1024 threads (x, y <= 1024, z <= 64); grid y, z <= 65535;
//   - dynamic shared memory above 48 KB needs cudaFuncSetAttribute first, and the attribute may
//     not exceed the device's opt-in maximum (227 KB on an H100);
//   - a cooperative grid may not exceed the co-resident block count (occupancy x SMs), and
//     needs a device that supports cooperative launches;
//   - occupancy counts threads, registers and shared memory (dynamic + static) per SM. Each
//     csrc kernel's registers per thread and static shared memory are ptxas's for the sm_90
//     build (the table tests/cuda_emu/ptxas_sm90.txt, which tests/test_cuda_build.py keeps equal
//     to nvcc's report), found by the kernel's mangled name (dladdr); a csrc kernel missing from
//     the table is an error. The tests' own kernels take emu::set_registers or kDefaultRegisters;
//   - static + dynamic shared memory may not exceed the opt-in maximum (so the opt-in attribute
//     is at most the maximum less the kernel's static shared memory), and 48 KB without it;
//   - cublasGemmEx checks its leading dimensions as cuBLAS does and computes in fp32, with the
//     operands rounded to TF32 (10-bit mantissa, round to nearest even) for the TF32 compute
//     type; calls are counted per compute type for the tests.
// Emulated devices are selected with emu::set_device (index = configuration), so launch code
// that caches per (device, kernel), as StreamLauncher does, sees a consistent device.
// Device memory is poisoned as compute-sanitizer's initcheck would flag it: every CPU allocation
// made under a PoisonedAllocations guard (the tests hold one around each emulated op) comes back
// filled with emu::kPoison.
#pragma once

#include <ATen/Context.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>

#include <dlfcn.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "cuda_emu.h"

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevice = 101,
  cudaErrorCooperativeLaunchTooLarge = 720,
  cudaErrorNotSupported = 801,
};

inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    case cudaErrorInvalidDevice:
      return "invalid device ordinal";
    case cudaErrorCooperativeLaunchTooLarge:
      return "too many blocks in cooperative launch";
    case cudaErrorNotSupported:
      return "operation not supported";
  }
  return "unknown error";
}

enum cudaDeviceAttr {
  cudaDevAttrMultiProcessorCount,
  cudaDevAttrCooperativeLaunch,
  cudaDevAttrMaxSharedMemoryPerBlockOptin,
  cudaDevAttrComputeCapabilityMajor,
};

enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize };

struct cudaFuncAttributes {
  size_t sharedSizeBytes;
  int numRegs;
  int maxThreadsPerBlock;
};

using cudaStream_t = struct EmuStream*;

enum cudaLaunchAttributeID { cudaLaunchAttributeCooperative = 2 };
struct cudaLaunchAttributeValue {
  int cooperative;
};
struct cudaLaunchAttribute {
  cudaLaunchAttributeID id;
  cudaLaunchAttributeValue val;
};
struct cudaLaunchConfig_t {
  dim3 gridDim, blockDim;
  size_t dynamicSmemBytes;
  cudaStream_t stream;
  cudaLaunchAttribute* attrs;
  unsigned int numAttrs;
};

namespace emu {

constexpr int kDefaultRegisters = 64;
constexpr int kStaticSmemLimit = 48 * 1024;  // shared memory per block without the opt-in
// Mangled-name prefix of the kernels in csrc (namespace fusedgru::cuda): each must be in the
// ptxas table.
constexpr const char* kCsrcKernelPrefix = "_ZN8fusedgru4cuda";

// A kernel's resources as ptxas reports them (or a test's own kernel's, see registers_of).
struct KernelResources {
  int registers;
  int static_smem;  // bytes
};

struct ResolvedKernel {
  std::string name;  // mangled, as nvcc's report names it
  KernelResources resources;
  std::string origin;  // "ptxas" (the table), "set" (emu::set_registers) or "default"
};

// An emulated GPU: per-SM resources are an H100's; the SM count is small so cooperative grids
// stay a few blocks of std::threads.
struct Device {
  int sms;
  bool cooperative;
  int smem_optin;                // bytes per block with the opt-in (H100: 227 KB)
  int smem_per_sm = 228 * 1024;  // H100: 228 KB per SM, 1 KB of it reserved per block
  int smem_reserved = 1024;
  int regs_per_sm = 64 * 1024;
  int threads_per_sm = 2048;
  int blocks_per_sm = 32;
  int major = 9;  // compute capability (an H100's 9.0)
};

struct Runtime {
  std::mutex mutex;
  std::vector<Device> devices;
  std::map<std::pair<int, const void*>, int> max_dynamic_smem;  // cudaFuncSetAttribute
  std::map<const void*, int> registers;                         // set_registers
  std::map<const void*, ResolvedKernel> resolved;               // resources_of, by kernel
  std::map<std::string, int64_t> gemm_calls;                    // compute type -> calls
  std::vector<std::tuple<int, const void*, int>> smem_sets;     // (device, kernel, bytes)
  bool fail_next_launch = false;                                // test hook
  int refuse_cooperative = 0;  // test hook: refuse this many cooperative launches (as MPS may)
  std::vector<int64_t> cooperative_grids;          // the blocks of every cooperative launch run
  std::optional<std::vector<int>> flags_at_start;  // snapshot_flags()
};

inline Runtime& runtime() {
  static Runtime r;
  return r;
}

inline thread_local int current_device = 0;
inline thread_local cudaError_t last_error = cudaSuccess;  // per host thread, as in CUDA

// Adds a device configuration; returns its index (for set_device).
inline int add_device(const Device& d) {
  Runtime& r = runtime();
  std::lock_guard<std::mutex> lock(r.mutex);
  r.devices.push_back(d);
  return static_cast<int>(r.devices.size()) - 1;
}

inline void set_device(int index) { current_device = index; }

inline Device device(int index) {
  Runtime& r = runtime();
  std::lock_guard<std::mutex> lock(r.mutex);
  TORCH_CHECK(index >= 0 && index < static_cast<int>(r.devices.size()), "emu: no emulated device ",
              index);
  return r.devices[index];
}

template <typename... KernelArgs>
void set_registers(void (*kernel)(KernelArgs...), int registers) {
  Runtime& r = runtime();
  std::lock_guard<std::mutex> lock(r.mutex);
  r.registers[reinterpret_cast<const void*>(kernel)] = registers;
  r.resolved.erase(reinterpret_cast<const void*>(kernel));
}

// The ptxas table, mangled name -> resources, read once: $FUSEDGRU_EMU_PTXAS_TABLE (the tests
// plant a wrong table through it), else ptxas_sm90.txt beside this header.
inline std::string default_ptxas_table() {
  const std::string here = __FILE__;
  return here.substr(0, here.find_last_of('/') + 1) + "ptxas_sm90.txt";
}

inline const std::map<std::string, KernelResources>& ptxas_table() {
  static const std::map<std::string, KernelResources> table = [] {
    const char* env = std::getenv("FUSEDGRU_EMU_PTXAS_TABLE");
    const std::string path = env && *env ? env : default_ptxas_table();
    std::ifstream in(path);
    TORCH_CHECK(in.good(), "emu: cannot read the ptxas table ", path);
    std::map<std::string, KernelResources> t;
    std::string line;
    while (std::getline(in, line)) {
      if (line.empty() || line[0] == '#') continue;
      std::istringstream fields(line);
      std::string source, name;
      KernelResources r{};
      TORCH_CHECK(static_cast<bool>(fields >> source >> name >> r.registers >> r.static_smem),
                  "emu: malformed line in ", path, ": ", line);
      t[name] = r;
    }
    return t;
  }();
  return table;
}

// A kernel's resources, resolved once per kernel: emu::set_registers first (the tests' probe
// kernels), then the ptxas table by the kernel's mangled name; kDefaultRegisters for a kernel of
// the tests' own that is in neither. A csrc kernel not in the table throws.
inline KernelResources resources_of(const void* kernel) {
  Runtime& r = runtime();
  std::lock_guard<std::mutex> lock(r.mutex);
  if (const auto it = r.resolved.find(kernel); it != r.resolved.end()) {
    return it->second.resources;
  }
  Dl_info info{};
  const bool named =
      dladdr(kernel, &info) != 0 && info.dli_sname != nullptr && info.dli_saddr == kernel;
  ResolvedKernel k{named ? info.dli_sname : "", {kDefaultRegisters, 0}, "default"};
  const auto& table = ptxas_table();
  if (const auto set = r.registers.find(kernel); set != r.registers.end()) {
    k.resources.registers = set->second;
    k.origin = "set";
  } else if (const auto row = table.find(k.name); row != table.end()) {
    k.resources = row->second;
    k.origin = "ptxas";
  } else {
    TORCH_CHECK(k.name.rfind(kCsrcKernelPrefix, 0) != 0, "emu: kernel ", k.name,
                " is not in the ptxas table (tests/cuda_emu/ptxas_sm90.txt): regenerate it with "
                "FUSEDGRU_UPDATE_PTXAS_TABLE=1 pytest tests/test_cuda_build.py");
  }
  r.resolved[kernel] = k;
  return k.resources;
}

inline int registers_of(const void* kernel) { return resources_of(kernel).registers; }

// Every kernel resolved so far (the tests check that each csrc kernel came from the table).
inline std::vector<ResolvedKernel> resolved_kernels() {
  Runtime& r = runtime();
  std::lock_guard<std::mutex> lock(r.mutex);
  std::vector<ResolvedKernel> out;
  for (const auto& [kernel, k] : r.resolved) out.push_back(k);
  return out;
}

inline int dynamic_smem_limit(int dev, const void* kernel) {
  const int static_smem = resources_of(kernel).static_smem;
  Runtime& r = runtime();
  std::lock_guard<std::mutex> lock(r.mutex);
  const auto it = r.max_dynamic_smem.find({dev, kernel});
  return it == r.max_dynamic_smem.end() ? kStaticSmemLimit - static_smem : it->second;
}

inline int64_t gemm_calls(const std::string& compute_type) {
  Runtime& r = runtime();
  std::lock_guard<std::mutex> lock(r.mutex);
  return r.gemm_calls[compute_type];
}

// The TF32-related precision flags, for checks that nothing writes them during an op.
inline std::vector<int> precision_flags() {
  const auto& ctx = at::globalContext();
  std::vector<int> v;
  for (at::Float32Op op :
       {at::Float32Op::ALL, at::Float32Op::CONV, at::Float32Op::RNN, at::Float32Op::MATMUL}) {
    v.push_back(static_cast<int>(ctx.float32Precision(at::Float32Backend::CUDA, op)));
  }
  v.push_back(
      static_cast<int>(ctx.float32Precision(at::Float32Backend::GENERIC, at::Float32Op::ALL)));
  v.push_back(at::NoTF32Guard::should_disable_tf32() ? 1 : 0);
  return v;
}

inline cudaError_t fail(cudaError_t e) {
  last_error = e;
  return e;
}

// While alive, c10's CPU allocator: the one it replaces allocates, then every byte is set to
// kPoison, so a kernel that leaves part of a tensor the launch code allocated unwritten, and
// whoever reads that part, show (NaN in every float type, -1 in every integer type). The real
// CPU ops outside emulated calls keep the plain allocator. The allocator is process-wide: hold
// one guard at a time, on the thread that calls the op.
class PoisonedAllocations final : public c10::Allocator {
 public:
  PoisonedAllocations() : inner_(c10::GetCPUAllocator()) {
    c10::SetCPUAllocator(this, kPriority);
    TORCH_CHECK(c10::GetCPUAllocator() == this,
                "emu: a higher-priority CPU allocator is installed; cannot poison allocations");
    held().fetch_add(1);
  }
  ~PoisonedAllocations() override { c10::SetCPUAllocator(inner_, kPriority); }
  PoisonedAllocations(const PoisonedAllocations&) = delete;
  PoisonedAllocations& operator=(const PoisonedAllocations&) = delete;

  c10::DataPtr allocate(size_t n) override {
    c10::DataPtr p = inner_->allocate(n);
    if (n > 0) std::memset(p.get(), kPoison, n);
    return p;
  }
  c10::DeleterFnPtr raw_deleter() const override { return inner_->raw_deleter(); }
  void copy_data(void* dest, const void* src, size_t count) const override {
    inner_->copy_data(dest, src, count);
  }
  // Guards held so far (the tests check that each emulated op holds one).
  static std::atomic<int64_t>& held() {
    static std::atomic<int64_t> n{0};
    return n;
  }

 private:
  static constexpr uint8_t kPriority = 0;  // c10's own CPU allocator's
  c10::Allocator* inner_;
};

// Blocks of `threads` threads with `smem` bytes of dynamic shared memory resident per SM.
inline int occupancy(const Device& d, const void* kernel, int threads, size_t smem) {
  const int warps = (threads + kWarp - 1) / kWarp;
  const KernelResources res = resources_of(kernel);
  const int regs = res.registers;
  smem += res.static_smem;
  // Registers are allocated per warp in units of 256.
  const int regs_per_warp = (regs * kWarp + 255) / 256 * 256;
  int blocks = std::min(d.blocks_per_sm, d.threads_per_sm / (warps * kWarp));
  blocks = std::min(blocks, d.regs_per_sm / (regs_per_warp * warps));
  blocks = std::min(blocks, static_cast<int>(d.smem_per_sm / (smem + d.smem_reserved)));
  return std::max(blocks, 0);
}

}  // namespace emu

inline cudaError_t cudaGetDevice(int* device) {
  *device = emu::current_device;
  return cudaSuccess;
}

inline cudaError_t cudaGetLastError() {
  const cudaError_t e = emu::last_error;
  emu::last_error = cudaSuccess;
  return e;
}

inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int dev) {
  const emu::Device d = emu::device(dev);
  switch (attr) {
    case cudaDevAttrMultiProcessorCount:
      *value = d.sms;
      break;
    case cudaDevAttrCooperativeLaunch:
      *value = d.cooperative ? 1 : 0;
      break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin:
      *value = d.smem_optin;
      break;
    case cudaDevAttrComputeCapabilityMajor:
      *value = d.major;
      break;
  }
  return cudaSuccess;
}

// Registers and static shared memory as ptxas reports them (emu::resources_of).
template <typename... KernelArgs>
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attrs, void (*kernel)(KernelArgs...)) {
  const emu::KernelResources res = emu::resources_of(reinterpret_cast<const void*>(kernel));
  attrs->sharedSizeBytes = static_cast<size_t>(res.static_smem);
  attrs->numRegs = res.registers;
  attrs->maxThreadsPerBlock = static_cast<int>(emu::kMaxThreads);
  return cudaSuccess;
}

template <typename... KernelArgs>
cudaError_t cudaFuncSetAttribute(void (*kernel)(KernelArgs...), cudaFuncAttribute, int value) {
  const emu::Device d = emu::device(emu::current_device);
  const int static_smem = emu::resources_of(reinterpret_cast<const void*>(kernel)).static_smem;
  if (value < 0 || value + static_smem > d.smem_optin) return emu::fail(cudaErrorInvalidValue);
  emu::Runtime& r = emu::runtime();
  std::lock_guard<std::mutex> lock(r.mutex);
  r.max_dynamic_smem[{emu::current_device, reinterpret_cast<const void*>(kernel)}] = value;
  r.smem_sets.emplace_back(emu::current_device, reinterpret_cast<const void*>(kernel), value);
  return cudaSuccess;
}

template <typename... KernelArgs>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks,
                                                          void (*kernel)(KernelArgs...),
                                                          int threads, size_t smem) {
  const emu::Device d = emu::device(emu::current_device);
  const void* k = reinterpret_cast<const void*>(kernel);
  *blocks = static_cast<int>(smem) > emu::dynamic_smem_limit(emu::current_device, k)
                ? 0
                : emu::occupancy(d, k, threads, smem);
  return cudaSuccess;
}

template <typename... KernelArgs, typename... Args>
cudaError_t cudaLaunchKernelEx(const cudaLaunchConfig_t* config, void (*kernel)(KernelArgs...),
                               Args&&... args) {
  const dim3 g = config->gridDim, b = config->blockDim;
  const unsigned long long threads = 1ull * b.x * b.y * b.z;
  if (threads == 0 || threads > emu::kMaxThreads || b.x > 1024 || b.y > 1024 || b.z > 64 ||
      g.x == 0 || g.y == 0 || g.z == 0 || g.x > 0x7fffffffu || g.y > 65535 || g.z > 65535) {
    return emu::fail(cudaErrorInvalidConfiguration);
  }
  {
    emu::Runtime& r = emu::runtime();
    std::lock_guard<std::mutex> lock(r.mutex);
    if (r.fail_next_launch) {
      r.fail_next_launch = false;
      return emu::fail(cudaErrorInvalidValue);
    }
  }
  const emu::Device d = emu::device(emu::current_device);
  const void* k = reinterpret_cast<const void*>(kernel);
  if (static_cast<long long>(config->dynamicSmemBytes) >
      emu::dynamic_smem_limit(emu::current_device, k)) {
    return emu::fail(cudaErrorInvalidValue);  // "too many resources requested for launch"
  }
  bool cooperative = false;
  for (unsigned int i = 0; i < config->numAttrs; ++i) {
    if (config->attrs[i].id == cudaLaunchAttributeCooperative && config->attrs[i].val.cooperative) {
      cooperative = true;
    }
  }
  if (cooperative) {
    if (!d.cooperative) return emu::fail(cudaErrorNotSupported);
    {
      emu::Runtime& r = emu::runtime();
      std::lock_guard<std::mutex> lock(r.mutex);
      if (r.refuse_cooperative > 0) {
        --r.refuse_cooperative;
        return emu::fail(cudaErrorCooperativeLaunchTooLarge);
      }
    }
    const long long fit =
        1ll * emu::occupancy(d, k, static_cast<int>(threads), config->dynamicSmemBytes) * d.sms;
    if (1ll * g.x * g.y * g.z > fit) return emu::fail(cudaErrorCooperativeLaunchTooLarge);
    {
      emu::Runtime& r = emu::runtime();
      std::lock_guard<std::mutex> lock(r.mutex);
      r.cooperative_grids.push_back(1ll * g.x * g.y * g.z);
    }
    emu::launch_cooperative(kernel, g, b, config->dynamicSmemBytes, std::forward<Args>(args)...);
  } else {
    emu::launch(kernel, g, b, config->dynamicSmemBytes, std::forward<Args>(args)...);
  }
  return cudaSuccess;
}

// As c10's: a failure clears the thread's last error (cudaGetLastError) before it throws.
#define C10_CUDA_CHECK(EXPR)                                                   \
  do {                                                                         \
    const cudaError_t fusedgru_emu_err = (EXPR);                               \
    if (fusedgru_emu_err != cudaSuccess) {                                     \
      (void)cudaGetLastError();                                                \
      TORCH_CHECK(false, "CUDA error: ", cudaGetErrorString(fusedgru_emu_err), \
                  " (emulated, from " #EXPR ")");                              \
    }                                                                          \
  } while (0)
#define C10_CUDA_KERNEL_LAUNCH_CHECK() C10_CUDA_CHECK(cudaGetLastError())

// ---- cuBLAS ----
enum cublasStatus_t { CUBLAS_STATUS_SUCCESS = 0, CUBLAS_STATUS_INVALID_VALUE = 7 };
enum cublasOperation_t { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 };
enum cudaDataType { CUDA_R_32F = 0 };
enum cublasComputeType_t { CUBLAS_COMPUTE_32F = 68, CUBLAS_COMPUTE_32F_FAST_TF32 = 77 };
enum cublasGemmAlgo_t { CUBLAS_GEMM_DEFAULT = -1 };
using cublasHandle_t = struct EmuCublas*;

namespace at {
namespace cuda {
inline cublasHandle_t getCurrentCUDABlasHandle() { return nullptr; }
}  // namespace cuda
}  // namespace at

namespace emu {
// fp32 rounded to TF32's 10-bit mantissa, to nearest even (NaN and inf kept).
inline float to_tf32(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  if ((bits & 0x7f800000u) != 0x7f800000u) {
    bits += 0xfffu + ((bits >> 13) & 1u);
    bits &= ~0x1fffu;
  }
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}
}  // namespace emu

inline cublasStatus_t cublasGemmEx(cublasHandle_t, cublasOperation_t transa,
                                   cublasOperation_t transb, int m, int n, int k, const void* alpha,
                                   const void* A, cudaDataType atype, int lda, const void* B,
                                   cudaDataType btype, int ldb, const void* beta, void* C,
                                   cudaDataType ctype, int ldc, cublasComputeType_t compute,
                                   cublasGemmAlgo_t) {
  const bool ta = transa == CUBLAS_OP_T, tb = transb == CUBLAS_OP_T;
  // cuBLAS's own argument checks (cublasGemmEx: "lda < max(1, transa ? k : m)" and so on).
  if (m < 0 || n < 0 || k < 0 || lda < std::max(1, ta ? k : m) || ldb < std::max(1, tb ? n : k) ||
      ldc < std::max(1, m) || atype != CUDA_R_32F || btype != CUDA_R_32F || ctype != CUDA_R_32F) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  const bool tf32 = compute == CUBLAS_COMPUTE_32F_FAST_TF32;
  {
    emu::Runtime& r = emu::runtime();
    std::lock_guard<std::mutex> lock(r.mutex);
    ++r.gemm_calls[tf32 ? "tf32" : "fp32"];
    TORCH_CHECK(!r.flags_at_start.has_value() || *r.flags_at_start == emu::precision_flags(),
                "emu: a precision flag changed during the op (read inside cublasGemmEx)");
  }
  const float al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);
  const auto* a = static_cast<const float*>(A);
  const auto* b = static_cast<const float*>(B);
  auto* c = static_cast<float*>(C);
  auto op = [tf32](float v) { return tf32 ? emu::to_tf32(v) : v; };
  for (int j = 0; j < n; ++j) {
    for (int i = 0; i < m; ++i) {
      float acc = 0;
      for (int l = 0; l < k; ++l) {
        const float av =
            ta ? a[l + static_cast<int64_t>(i) * lda] : a[i + static_cast<int64_t>(l) * lda];
        const float bv =
            tb ? b[j + static_cast<int64_t>(l) * ldb] : b[l + static_cast<int64_t>(j) * ldb];
        acc += op(av) * op(bv);
      }
      float& cij = c[i + static_cast<int64_t>(j) * ldc];
      cij = be == 0 ? al * acc : al * acc + be * cij;
    }
  }
  return CUBLAS_STATUS_SUCCESS;
}

#define TORCH_CUDABLAS_CHECK(EXPR)                                                          \
  do {                                                                                      \
    const cublasStatus_t fusedgru_emu_status = (EXPR);                                      \
    TORCH_CHECK(fusedgru_emu_status == CUBLAS_STATUS_SUCCESS, "CUDA error: cuBLAS status ", \
                static_cast<int>(fusedgru_emu_status), " (emulated, from " #EXPR ")");      \
  } while (0)
