// CPU kernels of the causal depthwise conv1d ops: one fused pass over x.
//   (N, C, L) layout: one task per (n, c) row. Filters of up to 4 taps in float / double sum
//     each output's taps in registers (fp32 at dilation 1 on AVX-512F: a sliding window, one
//     load per 16 outputs); longer filters and the 16-bit types accumulate the W taps over the
//     row in an fp32 buffer (vectorized over time), then bias + activation on the way out.
//   channel-last layout: up to 4 taps in float / double, one task per (n, vector of channels)
//     walking all steps; otherwise one task per (n, time chunk), each step accumulating the W
//     taps over a channel-contiguous fp32 buffer (vectorized over channels).
// Backward, (N, C, L): one task per channel c: per batch row, the activation gradient, grad_x
//   (the taps mirrored in time), grad_initial_state and the weight/bias sums.
// Backward, channel-last: one task per (n, time chunk), vectorized over channels: gz for the
//   chunk and its S-step future halo, grad_x, grad_initial_state (first chunk) and weight/bias
//   partial sums, per slot of consecutive tasks, added over the slots in a fixed order.
// Both are deterministic (fixed summation orders whatever the thread count).
// Shape legend: ../causal_conv1d.h.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <type_traits>
#include <vector>

#include "../causal_conv1d.h"
#include "blocks.h"
#include "isa.h"
#include "vec_math.h"

#ifdef FUSEDGRU_X86
#include <immintrin.h>
#endif

namespace fusedgru {
namespace cpu {
namespace {

using at::Tensor;

template <typename T>
FUSEDGRU_INLINE T activate(T v, int64_t act) {
  if (act == kActSilu) return v * sigmoid(v);
  if (act == kActRelu) return v < T(0) ? T(0) : v;
  return v;
}

// y[i] = act(z[i]) with the activation a compile-time constant, so the loop vectorizes.
template <int64_t kAct, typename acc_t, typename scalar_t>
FUSEDGRU_INLINE void store_activated(scalar_t* __restrict y, const acc_t* __restrict z, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = scalar_t(activate(z[i], kAct));
}

// y[i] = act(y[i]), a compile-time activation over a buffer in L1 (vectorizes).
template <int64_t kAct, typename T>
FUSEDGRU_INLINE void activate_in_place(T* __restrict y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = activate(y[i], kAct);
}

template <typename acc_t, typename scalar_t>
FUSEDGRU_CLONES void store_activated(scalar_t* y, const acc_t* z, int64_t n, int64_t act) {
  if (act == kActSilu) {
    store_activated<kActSilu>(y, z, n);
  } else if (act == kActRelu) {
    store_activated<kActRelu>(y, z, n);
  } else {
    store_activated<kActNone>(y, z, n);
  }
}

// d act / d v at the pre-activation v.
template <typename T>
FUSEDGRU_INLINE T activate_grad(T v, int64_t act) {
  if (act == kActSilu) {
    const T s = sigmoid(v);
    return s * (T(1) + v * (T(1) - s));
  }
  if (act == kActRelu) return v > T(0) ? T(1) : T(0);
  return T(1);
}

// acc[i] += w * src[i]
template <typename acc_t, typename scalar_t>
FUSEDGRU_INLINE void axpy(acc_t* __restrict acc, const scalar_t* __restrict src, acc_t w,
                          int64_t n) {
  for (int64_t i = 0; i < n; ++i) acc[i] += w * acc_t(src[i]);
}

// acc[i] += w[i] * src[i]
template <typename acc_t, typename scalar_t>
FUSEDGRU_INLINE void fma_rows(acc_t* __restrict acc, const acc_t* __restrict w,
                              const scalar_t* __restrict src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) acc[i] += w[i] * acc_t(src[i]);
}

// Input at time t of row (n, c): x for t >= 0, the initial state (or zero) before.
template <typename scalar_t>
FUSEDGRU_INLINE at::opmath_type<scalar_t> tap(const CausalConvParams& p, const scalar_t* x_row,
                                              const scalar_t* init_row, int64_t t, int64_t S) {
  using acc_t = at::opmath_type<scalar_t>;
  if (t >= 0) return acc_t(x_row[t * p.x_sl]);
  return init_row != nullptr ? acc_t(init_row[(S + t) * p.i_ss]) : acc_t(0);
}

// Pre-activations z[0, L) of row (n, c); x must be time-contiguous (x_sl == 1).
template <typename scalar_t>
FUSEDGRU_CLONES void conv_row(const CausalConvParams& p, int64_t n, int64_t c,
                              at::opmath_type<scalar_t>* z) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t L = p.L, W = p.W, d = p.dilation, S = (W - 1) * d;
  const auto* x = static_cast<const scalar_t*>(p.x) + n * p.x_sn + c * p.x_sc;
  const auto* init =
      p.init != nullptr ? static_cast<const scalar_t*>(p.init) + n * p.i_sn + c * p.i_sc : nullptr;
  const auto* w = static_cast<const scalar_t*>(p.weight) + c * W;
  const acc_t b = p.bias != nullptr ? acc_t(static_cast<const scalar_t*>(p.bias)[c]) : acc_t(0);
  const int64_t head = std::min(S, L);  // steps that reach back before t = 0
  for (int64_t t = 0; t < head; ++t) {
    acc_t acc = b;
    for (int64_t k = 0; k < W; ++k) acc += acc_t(w[k]) * tap(p, x, init, t - (W - 1 - k) * d, S);
    z[t] = acc;
  }
  std::fill(z + head, z + L, b);
  for (int64_t k = 0; k < W; ++k) {
    const int64_t off = (W - 1 - k) * d;
    axpy(z + head, x + head - off, acc_t(w[k]), L - head);
  }
}

// A short filter (W <= kMaxFusedTaps) in one pass over the row: each output's taps summed in
// registers in conv_row's order (bias, then k = 0, ..., W - 1), activated and stored (the same
// sums; with SiLU an output may differ from the two-pass version by an ulp, as the compiler
// contracts the activation's products differently). conv_row's accumulate-then-store passes
// over a row buffer took 4-5x a copy of the same bytes at W = 4 (benchmarks/NOTES.md). float
// and double rows (the 16-bit types' structs would not vectorize here; they keep conv_row).
constexpr int64_t kMaxFusedTaps = 4;

// y[t] = act(b + sum_k w[k] x[t - (kW - 1 - k) d]) for t in [0, n); x at the span's t = 0.
template <int kW, int64_t kAct, typename T>
FUSEDGRU_INLINE void conv_span(T* __restrict y, const T* __restrict x, const T* __restrict w, T b,
                               int64_t d, int64_t n) {
  T wk[kW];
  for (int k = 0; k < kW; ++k) wk[k] = w[k];
  for (int64_t t = 0; t < n; ++t) {
    T acc = b;
    for (int k = 0; k < kW; ++k) acc += wk[k] * x[t - (kW - 1 - k) * d];
    y[t] = activate(acc, kAct);
  }
}

#ifdef FUSEDGRU_X86
// conv_span at dilation 1 for float, with AVX-512F intrinsics: one load per 16 outputs. The
// taps' shifted inputs x[t - o, t - o + 16) come from the vector just loaded and the one before
// it by a lane shift (valignd) instead of W - 1 more loads that straddle cache lines (the
// auto-vectorized conv_span issues W unaligned loads per vector, and ran at 60-70% of a copy of
// the same bytes; benchmarks/NOTES.md). The sums are conv_span's: bias, then one FMA per tap
// k = 0, ..., W - 1, in every lane (the row's ends are masked, not left to a scalar loop). The
// activation runs over each chunk of kSlideChunk outputs while it is in L1, through activate.
constexpr int64_t kSlideChunk = 512;

// x[t - kOff, t - kOff + 16) from cur = x[t, t + 16) and prev = x[t - 16, t).
template <int kOff>
FUSEDGRU_AVX512 FUSEDGRU_INLINE __m512 shifted(__m512 cur, __m512 prev) {
  if constexpr (kOff == 0) {
    return cur;
  } else {
    return _mm512_castsi512_ps(
        _mm512_alignr_epi32(_mm512_castps_si512(cur), _mm512_castps_si512(prev), 16 - kOff));
  }
}

// bias + sum over taps k, ..., kW - 1 of w[k] x[t - (kW - 1 - k)], one FMA per tap in order.
template <int kW, int k = 0>
FUSEDGRU_AVX512 FUSEDGRU_INLINE __m512 tap_sums(const __m512* wk, __m512 cur, __m512 prev,
                                                __m512 acc) {
  if constexpr (k == kW) {
    return acc;
  } else {
    acc = _mm512_fmadd_ps(wk[k], shifted<kW - 1 - k>(cur, prev), acc);
    return tap_sums<kW, k + 1>(wk, cur, prev, acc);
  }
}

// Outputs [t0, L) of a row (t0 = kW - 1 <= 15: the steps before it reach back before t = 0 and
// are the caller's): vectors at multiples of 16 from the row's start, so that rows whose start
// is 64-byte aligned (L a multiple of 16) load and store whole cache lines; the first vector is
// stored from lane t0 on, the last masked at L (nothing past the row is read).
template <int kW, int64_t kAct>
FUSEDGRU_AVX512 void conv_row_slide(float* __restrict y, const float* __restrict x,
                                    const float* __restrict w, float b, int64_t t0, int64_t L) {
  static_assert(kW >= 2 && kW <= 16, "taps reach into one previous vector, at least one of them");
  __m512 wk[kW];
  for (int k = 0; k < kW; ++k) wk[k] = _mm512_set1_ps(w[k]);
  const __m512 bv = _mm512_set1_ps(b);
  __m512 prev = _mm512_setzero_ps();  // read only by lanes below t0 of the first vector
  for (int64_t c0 = 0; c0 < L; c0 += kSlideChunk) {
    const int64_t c1 = std::min(L, c0 + kSlideChunk);
    for (int64_t t = c0; t < c1; t += 16) {
      const int64_t lanes = std::min<int64_t>(16, c1 - t);
      const auto in = static_cast<__mmask16>((1u << lanes) - 1u);
      const __m512 cur = lanes == 16 ? _mm512_loadu_ps(x + t) : _mm512_maskz_loadu_ps(in, x + t);
      const __m512 z = tap_sums<kW>(wk, cur, prev, bv);
      if (lanes == 16 && t >= t0) {
        _mm512_storeu_ps(y + t, z);
      } else {
        const auto out = static_cast<__mmask16>(t >= t0 ? in : in & (0xFFFFu << (t0 - t)));
        _mm512_mask_storeu_ps(y + t, out, z);
      }
      prev = cur;
    }
    if constexpr (kAct != kActNone) {
      for (int64_t i = std::max(c0, t0); i < c1; ++i) y[i] = activate(y[i], kAct);
    }
  }
}
#endif

template <int kW, int64_t kAct, typename T>
FUSEDGRU_CLONES void conv_row_fused(const CausalConvParams& p, int64_t n, int64_t c, bool slide) {
  const int64_t L = p.L, d = p.dilation, S = (kW - 1) * d;
  const auto* x = static_cast<const T*>(p.x) + n * p.x_sn + c * p.x_sc;
  const auto* init =
      p.init != nullptr ? static_cast<const T*>(p.init) + n * p.i_sn + c * p.i_sc : nullptr;
  const auto* w = static_cast<const T*>(p.weight) + c * kW;
  const T b = p.bias != nullptr ? static_cast<const T*>(p.bias)[c] : T(0);
  T* y = static_cast<T*>(p.y) + n * p.y_sn + c * p.y_sc;
  const int64_t head = std::min(S, L);  // steps that reach back before t = 0
  for (int64_t t = 0; t < head; ++t) {
    T acc = b;
    for (int64_t k = 0; k < kW; ++k) acc += w[k] * tap(p, x, init, t - (kW - 1 - k) * d, S);
    y[t] = activate(acc, kAct);
  }
#ifdef FUSEDGRU_X86
  if constexpr (std::is_same_v<T, float> && kW >= 2) {
    if (slide) return conv_row_slide<kW, kAct>(y, x, w, b, head, L);
  }
#endif
  conv_span<kW, kAct>(y + head, x + head, w, b, d, L - head);
}

template <int kW, int64_t kAct, typename T>
void forward_rows_fused(const CausalConvParams& p, int64_t grain) {
  // The sliding window needs a previous input per tap (kW >= 2) at dilation 1.
  const bool slide = std::is_same_v<T, float> && kW >= 2 && p.dilation == 1 && cpu_has_avx512f();
  at::parallel_for(0, p.N * p.C, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) conv_row_fused<kW, kAct, T>(p, r / p.C, r % p.C, slide);
  });
}

// f(kW, kAct), both as std::integral_constant, for the filter width and activation of p.
template <int kW, typename F>
void with_activation(const CausalConvParams& p, const F& f) {
  using W = std::integral_constant<int, kW>;
  if (p.activation == kActSilu) {
    f(W{}, std::integral_constant<int64_t, kActSilu>{});
  } else if (p.activation == kActRelu) {
    f(W{}, std::integral_constant<int64_t, kActRelu>{});
  } else {
    f(W{}, std::integral_constant<int64_t, kActNone>{});
  }
}

// Runs a fused forward for p's short filter (W <= kMaxFusedTaps): f(kW, kAct) as above; false
// (nothing run) for longer filters.
template <typename F>
bool with_fused_taps(const CausalConvParams& p, const F& f) {
  static_assert(kMaxFusedTaps == 4, "the switch below spells the fused widths");
  switch (p.W) {
    case 1:
      return with_activation<1>(p, f), true;
    case 2:
      return with_activation<2>(p, f), true;
    case 3:
      return with_activation<3>(p, f), true;
    case 4:
      return with_activation<4>(p, f), true;
    default:
      return false;
  }
}

template <typename scalar_t>
void forward_rows(const CausalConvParams& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t grain = std::max<int64_t>(1, kTaskGrain / std::max<int64_t>(1, p.L));
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    if (with_fused_taps(p, [&](auto w, auto act) {
          forward_rows_fused<decltype(w)::value, decltype(act)::value, scalar_t>(p, grain);
        })) {
      return;
    }
  }
  at::parallel_for(0, p.N * p.C, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> z(p.L);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / p.C, c = r % p.C;
      conv_row<scalar_t>(p, n, c, z.data());
      store_activated(static_cast<scalar_t*>(p.y) + n * p.y_sn + c * p.y_sc, z.data(), p.L,
                      p.activation);
    }
  });
}

// Channel-last steps [t0, t1) of batch row n: x[n, c, t] at n * x_sn + t * x_sl + c.
// wt: [W, C] taps transposed; bias: [C]; acc: [C] scratch.
template <typename scalar_t>
FUSEDGRU_CLONES void channels_last_steps(const CausalConvParams& p,
                                         const at::opmath_type<scalar_t>* wt,
                                         const at::opmath_type<scalar_t>* bias, int64_t n,
                                         int64_t t0, int64_t t1, at::opmath_type<scalar_t>* acc) {
  const int64_t C = p.C, W = p.W, d = p.dilation, S = (W - 1) * d;
  const auto* x = static_cast<const scalar_t*>(p.x) + n * p.x_sn;
  const auto* init =
      p.init != nullptr ? static_cast<const scalar_t*>(p.init) + n * p.i_sn : nullptr;
  for (int64_t t = t0; t < t1; ++t) {
    std::copy(bias, bias + C, acc);
    for (int64_t k = 0; k < W; ++k) {
      const int64_t src = t - (W - 1 - k) * d;
      if (src >= 0) {
        fma_rows(acc, wt + k * C, x + src * p.x_sl, C);
      } else if (init != nullptr) {
        for (int64_t c = 0; c < C; ++c)
          acc[c] += wt[k * C + c] * init[c * p.i_sc + (S + src) * p.i_ss];
      }
    }
    store_activated(static_cast<scalar_t*>(p.y) + n * p.y_sn + t * p.y_sl, acc, C, p.activation);
  }
}

// The channel-last kernels' weights in the math type: wt [W, C] (taps transposed, so a tap's
// weights are channel-contiguous) and bias [C] (zeros without one).
template <typename scalar_t>
void channels_last_taps(const CausalConvParams& p, std::vector<at::opmath_type<scalar_t>>& wt,
                        std::vector<at::opmath_type<scalar_t>>& bias) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t C = p.C, W = p.W;
  wt.assign(W * C, acc_t(0));
  bias.assign(C, acc_t(0));
  const auto* w = static_cast<const scalar_t*>(p.weight);
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t k = 0; k < W; ++k) wt[k * C + c] = acc_t(w[c * W + k]);
    if (p.bias != nullptr) bias[c] = acc_t(static_cast<const scalar_t*>(p.bias)[c]);
  }
}

// The steps t < min(S, L) of channels [c0, c0 + cw) of batch row n (they reach back before
// t = 0, into the initial state), summed in conv_row_fused's order and stored activated.
template <int kW, int64_t kAct, typename T>
FUSEDGRU_INLINE void channels_last_head(const CausalConvParams& p, const T* wt, const T* bias,
                                        int64_t n, int64_t c0, int64_t cw) {
  const int64_t C = p.C, S = (kW - 1) * p.dilation;
  const T* x = static_cast<const T*>(p.x) + n * p.x_sn + c0;
  const T* init =
      p.init != nullptr ? static_cast<const T*>(p.init) + n * p.i_sn + c0 * p.i_sc : nullptr;
  T* y = static_cast<T*>(p.y) + n * p.y_sn + c0;
  for (int64_t t = 0; t < std::min(S, p.L); ++t) {
    for (int64_t l = 0; l < cw; ++l) {
      const T* init_l = init != nullptr ? init + l * p.i_sc : nullptr;
      T acc = bias[c0 + l];
      for (int k = 0; k < kW; ++k) {
        acc += wt[k * C + c0 + l] * tap(p, x + l, init_l, t - (kW - 1 - k) * p.dilation, S);
      }
      y[t * p.y_sl + l] = activate(acc, kAct);
    }
  }
}

// A short filter (W <= kMaxFusedTaps) on channel-last float / double rows: each task takes one
// batch row and a block of kLanes channels (one AVX-512 vector) and walks all L steps, the
// block's taps and bias in registers, each output's W taps summed in registers in the order of
// conv_row_fused (bias, then k = 0, ..., W - 1; the steps before t = 0 through tap), activated
// and stored once. The block's inputs a step reads were loaded by the steps before it (in L1);
// x and y are walked with one constant stride (a row of C channels), which the prefetchers
// follow. With an activation, the sums of kActSteps steps wait in a buffer and the activation
// runs over all of them at once: per step (a loop of a constant 16 lanes) GCC left SiLU scalar.
// kFull: a whole vector of channels (the trip count a constant), else the last cw < kLanes.
constexpr int64_t kActSteps = 32;

template <int kW, int64_t kAct, bool kFull, typename T>
FUSEDGRU_INLINE void channels_last_block(const CausalConvParams& p, const T* __restrict wt,
                                         const T* __restrict bias, int64_t n, int64_t c0,
                                         int64_t cw) {
  constexpr int kLanes = 64 / sizeof(T);
  const int64_t C = p.C, L = p.L, d = p.dilation, S = (kW - 1) * d;
  const int64_t lanes = kFull ? kLanes : cw;
  T w[kW][kLanes] = {}, b[kLanes] = {};
  for (int k = 0; k < kW; ++k)
    for (int64_t l = 0; l < lanes; ++l) w[k][l] = wt[k * C + c0 + l];
  for (int64_t l = 0; l < lanes; ++l) b[l] = bias[c0 + l];
  const T* x = static_cast<const T*>(p.x) + n * p.x_sn + c0;
  T* y = static_cast<T*>(p.y) + n * p.y_sn + c0;
  channels_last_head<kW, kAct>(p, wt, bias, n, c0, lanes);
  T buf[kActSteps][kLanes];
  for (int64_t t0 = std::min(S, L); t0 < L; t0 += kActSteps) {
    const int64_t steps = std::min(kActSteps, L - t0);
    for (int64_t s = 0; s < steps; ++s) {
      const int64_t t = t0 + s;
      T acc[kLanes];
      for (int64_t l = 0; l < lanes; ++l) acc[l] = b[l];
      for (int k = 0; k < kW; ++k) {
        const T* xs = x + (t - (kW - 1 - k) * d) * p.x_sl;
        for (int64_t l = 0; l < lanes; ++l) acc[l] += w[k][l] * xs[l];
      }
      T* out = kAct == kActNone ? y + t * p.y_sl : buf[s];
      for (int64_t l = 0; l < lanes; ++l) out[l] = acc[l];
    }
    if constexpr (kAct != kActNone) {
      activate_in_place<kAct>(&buf[0][0], steps * kLanes);
      for (int64_t s = 0; s < steps; ++s) {
        T* yt = y + (t0 + s) * p.y_sl;
        for (int64_t l = 0; l < lanes; ++l) yt[l] = buf[s][l];
      }
    }
  }
}

template <int kW, int64_t kAct, typename T>
FUSEDGRU_CLONES void channels_last_fused(const CausalConvParams& p, const T* wt, const T* bias,
                                         int64_t n, int64_t c0) {
  constexpr int64_t kLanes = 64 / sizeof(T);
  if (c0 + kLanes <= p.C) {
    channels_last_block<kW, kAct, true>(p, wt, bias, n, c0, kLanes);
  } else {
    channels_last_block<kW, kAct, false>(p, wt, bias, n, c0, p.C - c0);
  }
}

#ifdef FUSEDGRU_X86
// Channel-last rows in fp32 at dilation 1 with 2-4 taps, on AVX-512F: a task takes one batch
// row and a slab of up to kSlabVectors vectors of channels (256 bytes of each step's row, four
// cache lines side by side) and walks all steps with the taps, the bias and the kW - 1 previous
// steps' inputs in registers: one load and one store per vector and step. (One vector per task,
// channels_last_block, reads 64 bytes of every C-float row and reloads the earlier steps' inputs
// from L1: 30-55% of a copy of the same bytes at C = 256, benchmarks/NOTES.md.) Sums in
// conv_row_fused's order; a partial last vector is masked; the activation runs over the slab's
// outputs of each step.
constexpr int kSlabVectors = 4;

// Vector g of a slab of kG: masked (m) when it is the last and kPartial.
template <int kG, bool kPartial>
FUSEDGRU_AVX512 FUSEDGRU_INLINE __m512 slab_load(int g, __mmask16 m, const float* src) {
  return kPartial && g == kG - 1 ? _mm512_maskz_loadu_ps(m, src) : _mm512_loadu_ps(src);
}

// kG vectors of channels from c0; with kPartial the last one holds C - c0 - 16 (kG - 1) < 16.
template <int kW, int64_t kAct, int kG, bool kPartial>
FUSEDGRU_AVX512 void channels_last_slab(const CausalConvParams& p, const float* wt,
                                        const float* bias, int64_t n, int64_t c0) {
  static_assert(kW >= 2 && kG >= 1 && kG <= kSlabVectors, "");
  const int64_t C = p.C, L = p.L, S = kW - 1, xs = p.x_sl, ys = p.y_sl;
  const int64_t cw = std::min<int64_t>(C - c0, 16 * kG);
  channels_last_head<kW, kAct>(p, wt, bias, n, c0, cw);
  if (L <= S) return;
  // The last vector's lanes (all of them unless kPartial).
  const auto m = static_cast<__mmask16>(kPartial ? (1u << (cw - 16 * (kG - 1))) - 1u : 0xFFFFu);
  __m512 w[kW][kG], b[kG], xr[kW][kG];
  const float* x = static_cast<const float*>(p.x) + n * p.x_sn + c0;
  float* y = static_cast<float*>(p.y) + n * p.y_sn + c0;
  for (int g = 0; g < kG; ++g) {
    for (int k = 0; k < kW; ++k) w[k][g] = slab_load<kG, kPartial>(g, m, wt + k * C + c0 + 16 * g);
    b[g] = slab_load<kG, kPartial>(g, m, bias + c0 + 16 * g);
    for (int k = 0; k < kW - 1; ++k) xr[k][g] = slab_load<kG, kPartial>(g, m, x + k * xs + 16 * g);
  }
  for (int64_t t = S; t < L; ++t) {
    float* yt = y + t * ys;
    for (int g = 0; g < kG; ++g) {
      xr[kW - 1][g] = slab_load<kG, kPartial>(g, m, x + t * xs + 16 * g);
      __m512 acc = b[g];
      for (int k = 0; k < kW; ++k) acc = _mm512_fmadd_ps(w[k][g], xr[k][g], acc);
      if (kPartial && g == kG - 1) {
        _mm512_mask_storeu_ps(yt + 16 * g, m, acc);
      } else {
        _mm512_storeu_ps(yt + 16 * g, acc);
      }
      for (int k = 0; k < kW - 1; ++k) xr[k][g] = xr[k + 1][g];
    }
    if constexpr (kAct != kActNone) {
      for (int64_t i = 0; i < cw; ++i) yt[i] = activate(yt[i], kAct);
    }
  }
}

// A slab of kG vectors, its last one partial or not.
template <int kW, int64_t kAct, int kG>
FUSEDGRU_AVX512 void channels_last_slab(const CausalConvParams& p, const float* wt,
                                        const float* bias, int64_t n, int64_t c0) {
  if (p.C - c0 < 16 * kG) {
    channels_last_slab<kW, kAct, kG, true>(p, wt, bias, n, c0);
  } else {
    channels_last_slab<kW, kAct, kG, false>(p, wt, bias, n, c0);
  }
}

template <int kW, int64_t kAct>
void forward_channels_last_slabs(const CausalConvParams& p, const float* wt, const float* bias) {
  constexpr int64_t kSlab = 16 * kSlabVectors;
  const int64_t slabs = (p.C + kSlab - 1) / kSlab;
  const int64_t grain = std::max<int64_t>(1, kTaskGrain / std::max<int64_t>(1, kW * kSlab * p.L));
  at::parallel_for(0, p.N * slabs, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / slabs, c0 = (r % slabs) * kSlab;
      static_assert(kSlabVectors == 4, "the switch below spells the slab widths");
      switch (std::min<int64_t>(kSlabVectors, (p.C - c0 + 15) / 16)) {
        case 4:
          channels_last_slab<kW, kAct, 4>(p, wt, bias, n, c0);
          break;
        case 3:
          channels_last_slab<kW, kAct, 3>(p, wt, bias, n, c0);
          break;
        case 2:
          channels_last_slab<kW, kAct, 2>(p, wt, bias, n, c0);
          break;
        default:
          channels_last_slab<kW, kAct, 1>(p, wt, bias, n, c0);
      }
    }
  });
}
#endif

template <int kW, int64_t kAct, typename T>
void forward_channels_last_fused(const CausalConvParams& p, const T* wt, const T* bias) {
#ifdef FUSEDGRU_X86
  if constexpr (std::is_same_v<T, float> && kW >= 2) {
    if (p.dilation == 1 && cpu_has_avx512f())
      return forward_channels_last_slabs<kW, kAct>(p, wt, bias);
  }
#endif
  constexpr int64_t kLanes = 64 / sizeof(T);
  const int64_t blocks = (p.C + kLanes - 1) / kLanes;
  const int64_t grain = std::max<int64_t>(1, kTaskGrain / std::max<int64_t>(1, kW * kLanes * p.L));
  at::parallel_for(0, p.N * blocks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      channels_last_fused<kW, kAct, T>(p, wt, bias, r / blocks, (r % blocks) * kLanes);
    }
  });
}

template <typename scalar_t>
void forward_channels_last(const CausalConvParams& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t C = p.C;
  std::vector<acc_t> wt, bias;
  channels_last_taps<scalar_t>(p, wt, bias);
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    if (with_fused_taps(p, [&](auto w, auto act) {
          forward_channels_last_fused<decltype(w)::value, decltype(act)::value>(p, wt.data(),
                                                                                bias.data());
        })) {
      return;
    }
  }
  const int64_t chunk = 64;
  const int64_t chunks = (p.L + chunk - 1) / chunk;
  const int64_t grain = std::max<int64_t>(1, kTaskGrain / std::max<int64_t>(1, chunk * C));
  at::parallel_for(0, p.N * chunks, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(C);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / chunks, t0 = (r % chunks) * chunk;
      channels_last_steps<scalar_t>(p, wt.data(), bias.data(), n, t0, std::min(p.L, t0 + chunk),
                                    acc.data());
    }
  });
}

// gz[c] = gy[c] * act'(z[c]) with the activation a compile-time constant (vectorizes).
template <int64_t kAct, typename acc_t, typename scalar_t>
FUSEDGRU_INLINE void activation_grad_rows(acc_t* __restrict gz, const scalar_t* __restrict gy,
                                          const acc_t* __restrict z, int64_t n) {
  for (int64_t i = 0; i < n; ++i) gz[i] = acc_t(gy[i]) * activate_grad(z[i], kAct);
}

template <typename acc_t, typename scalar_t>
FUSEDGRU_INLINE void copy_rows(acc_t* __restrict dst, const scalar_t* __restrict src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = acc_t(src[i]);
}

template <typename acc_t, typename scalar_t>
FUSEDGRU_INLINE void cast_rows(scalar_t* __restrict dst, const acc_t* __restrict src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = scalar_t(src[i]);
}

// The sum of a row's partial sums, in double: at short rows (L below the lane count) each lane
// holds one term and a float sum of them would be one serial chain, its error growing with the
// row (several times ATen's pairwise sums for float32 gradients of a short conv).
template <typename acc_t, int kLanes>
FUSEDGRU_INLINE double add_lanes_wide(const acc_t (&part)[kLanes]) {
  double sum = 0;
  for (int l = 0; l < kLanes; ++l) sum += static_cast<double>(part[l]);
  return sum;
}

// sum_i a[i] * b[i] in kLanes independent partial sums added in a fixed order at the end, so
// the loop vectorizes (one running sum is a serial chain the compiler must not reassociate) and
// the result does not depend on the thread count.
template <typename acc_t, typename scalar_t>
FUSEDGRU_INLINE double dot_lanes(const acc_t* __restrict a, const scalar_t* __restrict b,
                                 int64_t n) {
  constexpr int kLanes = 256 / sizeof(acc_t);  // four AVX-512 vectors of partial sums
  acc_t part[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) part[l] += a[i + l] * acc_t(b[i + l]);
  }
  for (int l = 0; i < n; ++i, ++l) part[l] += a[i] * acc_t(b[i]);
  return add_lanes_wide(part);
}

template <typename acc_t>
FUSEDGRU_INLINE double sum_lanes(const acc_t* __restrict a, int64_t n) {
  constexpr int kLanes = 256 / sizeof(acc_t);
  acc_t part[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) part[l] += a[i + l];
  }
  for (int l = 0; i < n; ++i, ++l) part[l] += a[i];
  return add_lanes_wide(part);
}

// Gradients for channel c over all batch rows; x and grad_y time-contiguous. Scratch: z, gz, gx
// [L] each.
template <int64_t kAct, typename scalar_t>
FUSEDGRU_CLONES void backward_channel(const CausalConvBackwardParams& q, int64_t c,
                                      at::opmath_type<scalar_t>* z, at::opmath_type<scalar_t>* gz,
                                      at::opmath_type<scalar_t>* gx) {
  using acc_t = at::opmath_type<scalar_t>;
  const CausalConvParams& p = q.fwd;
  const int64_t L = p.L, W = p.W, d = p.dilation, S = (W - 1) * d;
  const auto* w = static_cast<const scalar_t*>(p.weight) + c * W;
  std::vector<double> gw(W, 0.0);  // sums over the batch rows in double, as within a row
  double gb = 0;
  for (int64_t n = 0; n < p.N; ++n) {
    const auto* gy = static_cast<const scalar_t*>(q.grad_y) + n * q.gy_sn + c * q.gy_sc;
    if constexpr (kAct != kActNone) {
      conv_row<scalar_t>(p, n, c, z);
      activation_grad_rows<kAct>(gz, gy, z, L);
    } else {
      copy_rows(gz, gy, L);
    }
    // grad_x[u] = sum_k w[k] gz[u + off_k]
    std::fill(gx, gx + L, acc_t(0));
    for (int64_t k = 0; k < W; ++k) {
      const int64_t off = (W - 1 - k) * d;
      if (off < L) axpy(gx, gz + off, acc_t(w[k]), L - off);
    }
    cast_rows(static_cast<scalar_t*>(q.grad_x) + n * q.gx_sn + c * q.gx_sc, gx, L);
    if (q.grad_init != nullptr) {
      auto* gi = static_cast<scalar_t*>(q.grad_init) + (n * p.C + c) * S;
      for (int64_t s = 0; s < S; ++s) {
        acc_t acc = 0;
        for (int64_t k = 0; k < W; ++k) {
          const int64_t u = s - S + (W - 1 - k) * d;
          if (u >= 0 && u < L) acc += acc_t(w[k]) * gz[u];
        }
        gi[s] = scalar_t(acc);
      }
    }
    const auto* x = static_cast<const scalar_t*>(p.x) + n * p.x_sn + c * p.x_sc;
    const auto* init = p.init != nullptr
                           ? static_cast<const scalar_t*>(p.init) + n * p.i_sn + c * p.i_sc
                           : nullptr;
    for (int64_t k = 0; k < W; ++k) {
      const int64_t off = (W - 1 - k) * d;
      acc_t acc = 0;
      for (int64_t t = 0; t < std::min(off, L); ++t) acc += gz[t] * tap(p, x, init, t - off, S);
      gw[k] += static_cast<double>(acc) + (off < L ? dot_lanes(gz + off, x, L - off) : 0.0);
    }
    gb += sum_lanes(gz, L);
  }
  auto* gw_out = static_cast<acc_t*>(q.grad_weight) + c * W;
  for (int64_t k = 0; k < W; ++k) gw_out[k] = static_cast<acc_t>(gw[k]);
  if (q.grad_bias != nullptr) static_cast<acc_t*>(q.grad_bias)[c] = static_cast<acc_t>(gb);
}

// Channel-last backward of batch row n, steps [t0, t1). wt: [W, C] taps transposed; bias [C].
// Scratch: gz [(t1 - t0 + S) * C] (gz over times [t0, t1 + S), zero from L on), row [C],
// xrow [C]. part: [(W + 1) * C] this task's weight (rows k < W) and bias (row W) sums.
template <typename scalar_t>
FUSEDGRU_CLONES void channels_last_backward_steps(
    const CausalConvBackwardParams& q, const at::opmath_type<scalar_t>* wt,
    const at::opmath_type<scalar_t>* bias, int64_t n, int64_t t0, int64_t t1,
    at::opmath_type<scalar_t>* gz, at::opmath_type<scalar_t>* row, at::opmath_type<scalar_t>* xrow,
    at::opmath_type<scalar_t>* part) {
  using acc_t = at::opmath_type<scalar_t>;
  const CausalConvParams& p = q.fwd;
  const int64_t C = p.C, W = p.W, d = p.dilation, S = (W - 1) * d, L = p.L;
  const auto* x = static_cast<const scalar_t*>(p.x) + n * p.x_sn;
  const auto* gy = static_cast<const scalar_t*>(q.grad_y) + n * q.gy_sn;
  const auto* init =
      p.init != nullptr ? static_cast<const scalar_t*>(p.init) + n * p.i_sn : nullptr;
  // x (or the initial state, or zero) at time t, channels [0, C), into xrow.
  const auto load_x = [&](int64_t t) -> const acc_t* {
    if (t >= 0) {
      copy_rows(xrow, x + t * p.x_sl, C);
    } else if (init != nullptr) {
      for (int64_t c = 0; c < C; ++c) xrow[c] = acc_t(init[c * p.i_sc + (S + t) * p.i_ss]);
    } else {
      std::fill(xrow, xrow + C, acc_t(0));
    }
    return xrow;
  };
  const int64_t g_end = std::min(t1 + S, L);
  for (int64_t u = t0; u < t1 + S; ++u) {
    acc_t* g = gz + (u - t0) * C;
    if (u >= g_end) {
      std::fill(g, g + C, acc_t(0));
    } else if (p.activation == kActNone) {
      copy_rows(g, gy + u * q.gy_sl, C);
    } else {
      std::copy(bias, bias + C, row);
      for (int64_t k = 0; k < W; ++k) fma_rows(row, wt + k * C, load_x(u - (W - 1 - k) * d), C);
      if (p.activation == kActSilu) {
        activation_grad_rows<kActSilu>(g, gy + u * q.gy_sl, row, C);
      } else {
        activation_grad_rows<kActRelu>(g, gy + u * q.gy_sl, row, C);
      }
    }
  }
  auto* gx = static_cast<scalar_t*>(q.grad_x) + n * q.gx_sn;
  for (int64_t t = t0; t < t1; ++t) {  // grad_x[t] = sum_k w[k] gz[t + (W-1-k) d]
    std::fill(row, row + C, acc_t(0));
    for (int64_t k = 0; k < W; ++k) {
      fma_rows(row, wt + k * C, gz + (t - t0 + (W - 1 - k) * d) * C, C);
    }
    cast_rows(gx + t * q.gx_sl, row, C);
  }
  if (q.grad_init != nullptr && t0 == 0) {
    auto* gi = static_cast<scalar_t*>(q.grad_init) + n * C * S;
    for (int64_t s = 0; s < S; ++s) {  // time s - S
      std::fill(row, row + C, acc_t(0));
      for (int64_t k = 0; k < W; ++k) {
        const int64_t u = s - S + (W - 1 - k) * d;
        if (u >= 0 && u < L) fma_rows(row, wt + k * C, gz + u * C, C);
      }
      for (int64_t c = 0; c < C; ++c) gi[c * S + s] = scalar_t(row[c]);
    }
  }
  for (int64_t t = t0; t < t1; ++t) {
    const acc_t* g = gz + (t - t0) * C;
    for (int64_t k = 0; k < W; ++k) fma_rows(part + k * C, g, load_x(t - (W - 1 - k) * d), C);
    axpy(part + W * C, g, acc_t(1), C);
  }
}

template <typename scalar_t>
void backward_channels_last(const CausalConvBackwardParams& q) {
  using acc_t = at::opmath_type<scalar_t>;
  const CausalConvParams& p = q.fwd;
  const int64_t C = p.C, W = p.W, S = (W - 1) * p.dilation;
  std::vector<acc_t> wt, bias;
  channels_last_taps<scalar_t>(p, wt, bias);
  // Tasks (n, chunk of 128 steps) in a fixed number of slots, each slot's tasks run in order by
  // one thread into the slot's own weight/bias sums: deterministic whatever the thread count,
  // and the partial sums stay bounded (kSlots x (W + 1) x C) however long the input.
  constexpr int64_t kSlots = 64;
  const int64_t chunk = 128;
  const int64_t chunks = (p.L + chunk - 1) / chunk, tasks = p.N * chunks;
  const int64_t slots = std::min(tasks, kSlots);
  std::vector<acc_t> partial(slots * (W + 1) * C, acc_t(0));
  at::parallel_for(0, slots, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> gz((chunk + S) * C), row(C), xrow(C);
    for (int64_t slot = begin; slot < end; ++slot) {
      for (int64_t r = slot * tasks / slots; r < (slot + 1) * tasks / slots; ++r) {
        const int64_t n = r / chunks, t0 = (r % chunks) * chunk;
        channels_last_backward_steps<scalar_t>(q, wt.data(), bias.data(), n, t0,
                                               std::min(p.L, t0 + chunk), gz.data(), row.data(),
                                               xrow.data(), partial.data() + slot * (W + 1) * C);
      }
    }
  });
  auto* gw = static_cast<acc_t*>(q.grad_weight);
  auto* gb = static_cast<acc_t*>(q.grad_bias);
  at::parallel_for(0, C, 64, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      for (int64_t k = 0; k <= W; ++k) {
        acc_t sum = 0;
        for (int64_t r = 0; r < slots; ++r) sum += partial[(r * (W + 1) + k) * C + c];
        if (k < W) {
          gw[c * W + k] = sum;
        } else if (gb != nullptr) {
          gb[c] = sum;
        }
      }
    }
  });
}

Tensor causal_conv1d_fwd(const Tensor& x_in, const Tensor& weight,
                         const std::optional<Tensor>& bias,
                         const std::optional<Tensor>& initial_state, int64_t dilation,
                         int64_t activation) {
  const CausalConvForward f = conv_forward(x_in, weight, bias, initial_state, dilation, activation);
  if (f.y.numel() == 0) return f.y;
  const CausalConvParams& p = f.p;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f.x.scalar_type(), "causal_conv1d_cpu",
                                  [&] {
                                    if (p.channels_last) {
                                      forward_channels_last<scalar_t>(p);
                                    } else {
                                      forward_rows<scalar_t>(p);
                                    }
                                  });
  return f.y;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> causal_conv1d_bwd(
    const Tensor& grad_y, const Tensor& x_in, const Tensor& weight,
    const std::optional<Tensor>& bias, const std::optional<Tensor>& initial_state, int64_t dilation,
    int64_t activation) {
  const CausalConvBackward st =
      conv_backward(grad_y, x_in, weight, bias, initial_state, dilation, activation);
  const CausalConvBackwardParams& q = st.q;
  const int64_t C = st.x.size(1), L = st.x.size(2);
  if (st.x.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, st.x.scalar_type(), "causal_conv1d_bwd_cpu", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          if (st.channels_last) {
            backward_channels_last<scalar_t>(q);
            return;
          }
          const auto channel = activation == kActSilu   ? backward_channel<kActSilu, scalar_t>
                               : activation == kActRelu ? backward_channel<kActRelu, scalar_t>
                                                        : backward_channel<kActNone, scalar_t>;
          at::parallel_for(0, C, 1, [&](int64_t begin, int64_t end) {
            std::vector<acc_t> z(L), gz(L), gxb(L);
            for (int64_t c = begin; c < end; ++c) channel(q, c, z.data(), gz.data(), gxb.data());
          });
        });
  }
  return st.result();
}

Tensor causal_conv1d_update(const Tensor& x, Tensor& conv_state, const Tensor& weight,
                            const std::optional<Tensor>& bias, int64_t dilation,
                            int64_t activation) {
  const CausalConvUpdate u = conv_update(x, conv_state, weight, bias, dilation, activation);
  const CausalConvUpdateParams& p = u.p;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "causal_conv1d_update_cpu", [&] {
        auto* y = static_cast<scalar_t*>(p.y);
        at::parallel_for(0, p.N * p.C, 4096, [&](int64_t begin, int64_t end) {
          for (int64_t r = begin; r < end; ++r) {
            y[r] = scalar_t(activate(conv_update_row<scalar_t>(p, r / p.C, r % p.C), p.activation));
          }
        });
      });
  return u.y;
}

}  // namespace
}  // namespace cpu

TORCH_LIBRARY_IMPL(fusedgru, CPU, m) {
  m.impl("causal_conv1d_fwd", &cpu::causal_conv1d_fwd);
  m.impl("causal_conv1d_bwd", &cpu::causal_conv1d_bwd);
  m.impl("causal_conv1d_update", &cpu::causal_conv1d_update);
}

}  // namespace fusedgru
