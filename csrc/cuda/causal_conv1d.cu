// CUDA kernels of the causal depthwise conv1d ops (forward, backward, streaming update).
//
// Forward, (N, C, L) layout: a block owns kTile consecutive outputs of one (n, c) row; it stages
//   the kTile + S inputs it needs (S = (W-1)*d history, from x, the initial state or zeros) in
//   shared memory in fp32, then each thread computes kVec outputs. When kTile + S does not fit in
//   shared memory, a direct kernel (one thread per output, taps read through L1) takes over.
// Forward, channel-last layout: one thread per output, threads adjacent in channels, so every
//   tap is a coalesced read of the channel-contiguous time step.
// Backward: (1) gz = dL/dy * act'(z) in fp32 (z recomputed), (2) grad_x and grad_initial_state,
//   each the taps mirrored in time over gz, (3) weight and bias gradients: per channel, fixed
//   thread-to-element assignment and a fixed-order shared-memory tree, so they are deterministic
//   and accumulated in fp32 (fp64 for double).
// All launches on the current stream under a device guard, checked after each launch.
// Shape legend: ../causal_conv1d.h.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../causal_conv1d.h"

namespace fusedgru {
namespace cuda {
namespace {

using at::Tensor;

constexpr int kThreads = 128;
constexpr int kVec = 4;
constexpr int kTile = kThreads * kVec;
constexpr int kMaxSmemFloats = 12 * 1024;  // 48 KB
constexpr int kGroup = 8;                   // weight taps reduced per block in the backward

template <typename T>
__device__ __forceinline__ T activate(T v, int64_t act) {
  if (act == kActSilu) return v / (T(1) + exp(-v));
  if (act == kActRelu) return v < T(0) ? T(0) : v;
  return v;
}

template <typename T>
__device__ __forceinline__ T activate_grad(T v, int64_t act) {
  if (act == kActSilu) {
    const T s = T(1) / (T(1) + exp(-v));
    return s * (T(1) + v * (T(1) - s));
  }
  if (act == kActRelu) return v > T(0) ? T(1) : T(0);
  return T(1);
}

// Input of row (n, c) at time t (t < 0: initial state or zero).
template <typename scalar_t>
__device__ __forceinline__ at::opmath_type<scalar_t> input_at(const CausalConvParams& p, int64_t n,
                                                              int64_t c, int64_t t) {
  using acc_t = at::opmath_type<scalar_t>;
  if (t >= 0) return acc_t(static_cast<const scalar_t*>(p.x)[n * p.x_sn + c * p.x_sc + t * p.x_sl]);
  if (p.init == nullptr) return acc_t(0);
  const int64_t S = (p.W - 1) * p.dilation;
  return acc_t(static_cast<const scalar_t*>(p.init)[n * p.i_sn + c * p.i_sc + (S + t) * p.i_ss]);
}

// Pre-activation of output (n, c, t), taps read directly.
template <typename scalar_t>
__device__ __forceinline__ at::opmath_type<scalar_t> preact(const CausalConvParams& p, int64_t n,
                                                            int64_t c, int64_t t) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto* w = static_cast<const scalar_t*>(p.weight) + c * p.W;
  acc_t acc = p.bias != nullptr ? acc_t(static_cast<const scalar_t*>(p.bias)[c]) : acc_t(0);
  for (int64_t k = 0; k < p.W; ++k) {
    acc += acc_t(w[k]) * input_at<scalar_t>(p, n, c, t - (p.W - 1 - k) * p.dilation);
  }
  return acc;
}

// (n, c, t) of a linear index with the contiguous dim fastest.
__device__ __forceinline__ void unravel(const CausalConvParams& p, int64_t idx, int64_t& n,
                                        int64_t& c, int64_t& t) {
  if (p.channels_last) {
    c = idx % p.C;
    t = (idx / p.C) % p.L;
  } else {
    t = idx % p.L;
    c = (idx / p.L) % p.C;
  }
  n = idx / (p.C * p.L);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) conv_fwd_direct_kernel(CausalConvParams p) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= p.N * p.C * p.L) return;
  int64_t n, c, t;
  unravel(p, idx, n, c, t);
  static_cast<scalar_t*>(p.y)[n * p.y_sn + c * p.y_sc + t * p.y_sl] =
      scalar_t(activate(preact<scalar_t>(p, n, c, t), p.activation));
}

// grid: (tiles of the row, N * C). Dynamic shared memory: (kTile + S) floats.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) conv_fwd_tiled_kernel(CausalConvParams p) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ float tile[];
  const int64_t row = blockIdx.y, n = row / p.C, c = row % p.C;
  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int64_t S = (p.W - 1) * p.dilation;
  const int64_t span = min(static_cast<int64_t>(kTile), p.L - t0) + S;
  for (int64_t i = threadIdx.x; i < span; i += kThreads) {
    tile[i] = static_cast<float>(input_at<scalar_t>(p, n, c, t0 - S + i));
  }
  __syncthreads();
  const auto* w = static_cast<const scalar_t*>(p.weight) + c * p.W;
  const acc_t b = p.bias != nullptr ? acc_t(static_cast<const scalar_t*>(p.bias)[c]) : acc_t(0);
  auto* y = static_cast<scalar_t*>(p.y) + n * p.y_sn + c * p.y_sc;
#pragma unroll
  for (int v = 0; v < kVec; ++v) {
    const int64_t i = threadIdx.x + v * kThreads;  // output t0 + i, coalesced across the block
    if (t0 + i >= p.L) break;
    acc_t acc = b;
    for (int64_t k = 0; k < p.W; ++k) acc += acc_t(w[k]) * acc_t(tile[i + k * p.dilation]);
    y[(t0 + i) * p.y_sl] = scalar_t(activate(acc, p.activation));
  }
}

// gz = dL/dy * act'(z), fp32 (fp64 for double), stored in x's native order.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) conv_gz_kernel(CausalConvBackwardParams q,
                                                           at::opmath_type<scalar_t>* gz) {
  using acc_t = at::opmath_type<scalar_t>;
  const CausalConvParams& p = q.fwd;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= p.N * p.C * p.L) return;
  int64_t n, c, t;
  unravel(p, idx, n, c, t);
  const acc_t g = acc_t(static_cast<const scalar_t*>(q.grad_y)[n * q.gy_sn + c * q.gy_sc +
                                                               t * q.gy_sl]);
  gz[idx] = p.activation == kActNone ? g : g * activate_grad(preact<scalar_t>(p, n, c, t),
                                                             p.activation);
}

// Index of (n, c, t) in the native-order gz buffer.
__device__ __forceinline__ int64_t gz_index(const CausalConvParams& p, int64_t n, int64_t c,
                                            int64_t t) {
  return p.channels_last ? (n * p.L + t) * p.C + c : (n * p.C + c) * p.L + t;
}

// grad_x[n, c, u] (u >= 0) and grad_init[n, c, S + u] (u < 0) = sum_k w[c, k] gz[n, c, u + off_k].
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) conv_grad_x_kernel(
    CausalConvBackwardParams q, const at::opmath_type<scalar_t>* gz) {
  using acc_t = at::opmath_type<scalar_t>;
  const CausalConvParams& p = q.fwd;
  const int64_t S = (p.W - 1) * p.dilation, Lx = p.L + S;  // extended time axis [-S, L)
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= p.N * p.C * Lx) return;
  int64_t n, c, u;
  if (p.channels_last) {
    c = idx % p.C;
    u = (idx / p.C) % Lx - S;
  } else {
    u = idx % Lx - S;
    c = (idx / Lx) % p.C;
  }
  n = idx / (p.C * Lx);
  if (u < 0 && q.grad_init == nullptr) return;
  const auto* w = static_cast<const scalar_t*>(p.weight) + c * p.W;
  acc_t acc = 0;
  for (int64_t k = 0; k < p.W; ++k) {
    const int64_t t = u + (p.W - 1 - k) * p.dilation;
    if (t >= 0 && t < p.L) acc += acc_t(w[k]) * gz[gz_index(p, n, c, t)];
  }
  if (u >= 0) {
    static_cast<scalar_t*>(q.grad_x)[n * q.gx_sn + c * q.gx_sc + u * q.gx_sl] = scalar_t(acc);
  } else {
    static_cast<scalar_t*>(q.grad_init)[(n * p.C + c) * S + S + u] = scalar_t(acc);
  }
}

// Weight (and bias) gradients of kGroup taps for kLanes channels per block; blockDim
// (kLanes, kThreads * ... / kLanes). Tap k = W is the bias. Deterministic: fixed strides, tree.
template <typename scalar_t, int kLanes>
__global__ void conv_grad_w_kernel(CausalConvBackwardParams q,
                                   const at::opmath_type<scalar_t>* gz) {
  using acc_t = at::opmath_type<scalar_t>;
  const CausalConvParams& p = q.fwd;
  constexpr int kRows = 256 / kLanes;
  __shared__ acc_t partial[kGroup][kRows][kLanes];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kLanes + threadIdx.x;
  const int64_t k0 = static_cast<int64_t>(blockIdx.y) * kGroup;
  acc_t acc[kGroup];
#pragma unroll
  for (int g = 0; g < kGroup; ++g) acc[g] = 0;
  if (c < p.C) {
    for (int64_t j = threadIdx.y; j < p.N * p.L; j += kRows) {
      const int64_t n = j / p.L, t = j % p.L;
      const acc_t g_val = gz[gz_index(p, n, c, t)];
#pragma unroll
      for (int g = 0; g < kGroup; ++g) {
        const int64_t k = k0 + g;
        if (k < p.W) {
          acc[g] += g_val * input_at<scalar_t>(p, n, c, t - (p.W - 1 - k) * p.dilation);
        } else if (k == p.W) {
          acc[g] += g_val;
        }
      }
    }
  }
#pragma unroll
  for (int g = 0; g < kGroup; ++g) partial[g][threadIdx.y][threadIdx.x] = acc[g];
  __syncthreads();
  for (int stride = kRows / 2; stride > 0; stride /= 2) {
    if (threadIdx.y < stride) {
#pragma unroll
      for (int g = 0; g < kGroup; ++g) {
        partial[g][threadIdx.y][threadIdx.x] += partial[g][threadIdx.y + stride][threadIdx.x];
      }
    }
    __syncthreads();
  }
  if (threadIdx.y == 0 && c < p.C) {
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      const int64_t k = k0 + g;
      if (k < p.W) {
        static_cast<acc_t*>(q.grad_weight)[c * p.W + k] = partial[g][0][threadIdx.x];
      } else if (k == p.W && q.grad_bias != nullptr) {
        static_cast<acc_t*>(q.grad_bias)[c] = partial[g][0][threadIdx.x];
      }
    }
  }
}

// One thread per (n, c): y = act(b + taps over [state, x]); state shifted left, x appended.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) conv_update_kernel(
    const scalar_t* x, int64_t x_sn, int64_t x_sc, scalar_t* state, int64_t s_sn, int64_t s_sc,
    int64_t s_ss, const scalar_t* w, const scalar_t* bias, scalar_t* y, int64_t N, int64_t C,
    int64_t W, int64_t dilation, int64_t activation) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= N * C) return;
  const int64_t n = idx / C, c = idx % C, S = (W - 1) * dilation;
  scalar_t* st = state + n * s_sn + c * s_sc;
  const scalar_t xv = x[n * x_sn + c * x_sc];
  acc_t acc = bias != nullptr ? acc_t(bias[c]) : acc_t(0);
  for (int64_t k = 0; k < W; ++k) {
    const int64_t off = (W - 1 - k) * dilation;
    acc += acc_t(w[c * W + k]) * acc_t(off == 0 ? xv : st[(S - off) * s_ss]);
  }
  y[idx] = scalar_t(activate(acc, activation));
  for (int64_t s = 0; s + 1 < S; ++s) st[s * s_ss] = st[(s + 1) * s_ss];
  if (S > 0) st[(S - 1) * s_ss] = xv;
}

unsigned int blocks_for(int64_t n) {
  return static_cast<unsigned int>((n + kThreads - 1) / kThreads);
}

Tensor causal_conv1d_fwd(const Tensor& x_in, const Tensor& weight,
                         const std::optional<Tensor>& bias,
                         const std::optional<Tensor>& initial_state, int64_t dilation,
                         int64_t activation) {
  check_causal_conv_args(x_in, weight, bias, initial_state, dilation, activation);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const Tensor x = conv_input_layout(x_in);
  const Tensor w = weight.contiguous();
  const std::optional<Tensor> b =
      bias.has_value() ? std::optional<Tensor>(bias->contiguous()) : std::nullopt;
  Tensor y = conv_empty_like(x);
  if (y.numel() == 0) return y;
  CausalConvParams p = conv_params(x, w, b, initial_state, dilation, activation);
  p.y = y.data_ptr();
  p.y_sn = y.stride(0);
  p.y_sc = y.stride(1);
  p.y_sl = y.stride(2);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t S = (p.W - 1) * dilation;
  const bool tiled = !p.channels_last && kTile + S <= kMaxSmemFloats && p.N * p.C <= 65535;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                  "causal_conv1d_fwd_cuda", [&] {
    if (tiled) {
      const dim3 grid(static_cast<unsigned int>((p.L + kTile - 1) / kTile),
                      static_cast<unsigned int>(p.N * p.C));
      conv_fwd_tiled_kernel<scalar_t>
          <<<grid, kThreads, (kTile + S) * sizeof(float), stream>>>(p);
    } else {
      conv_fwd_direct_kernel<scalar_t><<<blocks_for(y.numel()), kThreads, 0, stream>>>(p);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> causal_conv1d_bwd(
    const Tensor& grad_y, const Tensor& x_in, const Tensor& weight,
    const std::optional<Tensor>& bias, const std::optional<Tensor>& initial_state,
    int64_t dilation, int64_t activation) {
  check_causal_conv_bwd_args(grad_y, x_in, weight, bias, initial_state, dilation, activation);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const Tensor x = conv_input_layout(x_in);
  const Tensor w = weight.contiguous();
  const std::optional<Tensor> b =
      bias.has_value() ? std::optional<Tensor>(bias->contiguous()) : std::nullopt;
  const int64_t N = x.size(0), C = x.size(1), L = x.size(2), W = w.size(1);
  const int64_t S = (W - 1) * dilation;
  const auto acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  Tensor gx = conv_empty_like(x);
  Tensor g_init = initial_state.has_value() ? at::zeros({N, C, S}, x.options())
                                            : at::empty({0}, x.options());
  Tensor gw = at::zeros({C, W}, x.options().dtype(acc_type));
  Tensor gb = at::zeros({bias.has_value() ? C : 0}, x.options().dtype(acc_type));
  if (x.numel() > 0) {
    const CausalConvBackwardParams q = conv_backward_params(
        grad_y, x, w, b, initial_state, dilation, activation, gx, g_init, gw, gb);
    Tensor gz = at::empty({x.numel()}, x.options().dtype(acc_type));
    const auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                    "causal_conv1d_bwd_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      acc_t* gzp = gz.data_ptr<acc_t>();
      conv_gz_kernel<scalar_t><<<blocks_for(x.numel()), kThreads, 0, stream>>>(q, gzp);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      conv_grad_x_kernel<scalar_t><<<blocks_for(N * C * (L + S)), kThreads, 0, stream>>>(q, gzp);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      const unsigned int groups = static_cast<unsigned int>((W + 1 + kGroup - 1) / kGroup);
      if (q.fwd.channels_last) {
        const dim3 grid(static_cast<unsigned int>((C + 31) / 32), groups), block(32, 8);
        conv_grad_w_kernel<scalar_t, 32><<<grid, block, 0, stream>>>(q, gzp);
      } else {
        const dim3 grid(static_cast<unsigned int>(C), groups), block(1, 256);
        conv_grad_w_kernel<scalar_t, 1><<<grid, block, 0, stream>>>(q, gzp);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {gx, gw.to(weight.scalar_type()), gb.to(weight.scalar_type()), g_init};
}

Tensor causal_conv1d_update(const Tensor& x, Tensor& conv_state, const Tensor& weight,
                            const std::optional<Tensor>& bias, int64_t dilation,
                            int64_t activation) {
  check_causal_conv_update_args(x, conv_state, weight, bias, dilation, activation);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t N = x.size(0), C = x.size(1), W = weight.size(1);
  const Tensor w = weight.contiguous();
  const std::optional<Tensor> b =
      bias.has_value() ? std::optional<Tensor>(bias->contiguous()) : std::nullopt;
  Tensor y = at::empty({N, C}, x.options());
  if (y.numel() == 0) return y;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                  "causal_conv1d_update_cuda", [&] {
    conv_update_kernel<scalar_t><<<blocks_for(N * C), kThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), x.stride(0), x.stride(1),
        conv_state.mutable_data_ptr<scalar_t>(), conv_state.stride(0), conv_state.stride(1),
        conv_state.stride(2), w.const_data_ptr<scalar_t>(),
        b.has_value() ? b->const_data_ptr<scalar_t>() : nullptr, y.mutable_data_ptr<scalar_t>(),
        N, C, W, dilation, activation);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(fusedgru, CUDA, m) {
  m.impl("causal_conv1d_fwd", &cuda::causal_conv1d_fwd);
  m.impl("causal_conv1d_bwd", &cuda::causal_conv1d_bwd);
  m.impl("causal_conv1d_update", &cuda::causal_conv1d_update);
}

}  // namespace fusedgru
