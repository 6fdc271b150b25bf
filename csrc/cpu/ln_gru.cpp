// CPU implementation of the layer-normalized GRU ops (equations: ../fusedgru.h). Threads own
// blocks of hidden units as in gru.cpp; a row's normalization spans all blocks, so each step runs
// in two phases with a thread barrier between them (for_steps): (1) GEMM of the thread's gate rows
// and its partial row sums, (2) the statistics from all partials (summed in a fixed order) and the
// fused gates. The backward mirrors it: (1) dh GEMM of the previous step + gate gradients + partial
// sums of the normalization's gradient, (2) the gradient through the normalization.
//
// Saved per (t, n), 9H + 2 values: r, z, n [3H] | LN(W_hh h) [3H] | LN(W_ih x) [3H] |
// rstd_h, rstd_i (zeros where inactive). Shape legend: ../fusedgru.h.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <cmath>

#include "../fusedgru.h"
#include "blocks.h"
#include "vec_math.h"

namespace fusedgru {
namespace cpu {
namespace {

using at::Tensor;

// (count, mean, sum of squared deviations from the mean) of v[0, n), in two passes over the
// block's values (still in cache): the variance keeps its accuracy when |mean| >> std, where
// E[v^2] - mean^2 would cancel (a layer norm over few or nearly equal values). The deviations'
// own sum corrects the rounding of the mean (the corrected two-pass algorithm of Chan, Golub and
// LeVeque). fp32 lanes for fp32 inputs (vectorizes without reassociating a scalar), then double.
template <typename scalar_t>
FUSEDGRU_CLONES void lane_stats(const scalar_t* __restrict v, int64_t n, double* stats) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kLanes = 16;
  acc_t a[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= n; k += kLanes) {
    for (int l = 0; l < kLanes; ++l) a[l] += acc_t(v[k + l]);
  }
  double s1 = 0;
  for (; k < n; ++k) s1 += static_cast<double>(v[k]);
  for (int l = 0; l < kLanes; ++l) s1 += a[l];
  const double mean_d = n > 0 ? s1 / static_cast<double>(n) : 0.0;
  const acc_t mean = static_cast<acc_t>(mean_d);
  acc_t d1[kLanes] = {}, d2[kLanes] = {};
  for (k = 0; k + kLanes <= n; k += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const acc_t d = acc_t(v[k + l]) - mean;
      d1[l] += d;
      d2[l] += d * d;
    }
  }
  double c = 0, q = 0;
  for (; k < n; ++k) {
    const double d = static_cast<double>(v[k]) - static_cast<double>(mean);
    c += d;
    q += d * d;
  }
  for (int l = 0; l < kLanes; ++l) {
    c += d1[l];
    q += d2[l];
  }
  stats[0] = static_cast<double>(n);
  stats[1] = static_cast<double>(mean) + (n > 0 ? c / static_cast<double>(n) : 0.0);
  stats[2] = n > 0 ? std::max(q - c * c / static_cast<double>(n), 0.0) : 0.0;
}

// One active row, units [0, w) of a block. ai, gamma, beta, ws: gate g at g * H;
// gh: gate g at g * w (raw W_hh h of the block).
template <typename scalar_t, bool kSave>
FUSEDGRU_INLINE void ln_forward_span(const scalar_t* __restrict ai, const scalar_t* __restrict gh,
                                     const scalar_t* __restrict gamma,
                                     const scalar_t* __restrict beta,
                                     const scalar_t* __restrict h_in, scalar_t* __restrict h_out,
                                     scalar_t* __restrict out, scalar_t* __restrict ws,
                                     at::opmath_type<scalar_t> mean, at::opmath_type<scalar_t> rstd,
                                     int64_t w, int64_t H) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t j = 0; j < w; ++j) {
    const acc_t xr = (acc_t(gh[j]) - mean) * rstd;
    const acc_t xz = (acc_t(gh[w + j]) - mean) * rstd;
    const acc_t xn = (acc_t(gh[2 * w + j]) - mean) * rstd;
    const acc_t r = sigmoid(acc_t(ai[j]) + xr * acc_t(gamma[j]) + acc_t(beta[j]));
    const acc_t z = sigmoid(acc_t(ai[H + j]) + xz * acc_t(gamma[H + j]) + acc_t(beta[H + j]));
    const acc_t ahn = xn * acc_t(gamma[2 * H + j]) + acc_t(beta[2 * H + j]);
    const acc_t n = tanh(acc_t(ai[2 * H + j]) + r * ahn);
    const scalar_t h1 = scalar_t(n + z * (acc_t(h_in[j]) - n));
    h_out[j] = h1;
    out[j] = h1;
    if constexpr (kSave) {
      ws[j] = scalar_t(r);
      ws[H + j] = scalar_t(z);
      ws[2 * H + j] = scalar_t(n);
      ws[3 * H + j] = scalar_t(xr);
      ws[4 * H + j] = scalar_t(xz);
      ws[5 * H + j] = scalar_t(xn);
    }
  }
}

template <typename scalar_t, bool kSave>
FUSEDGRU_CLONES void ln_forward_units(const LnGruForwardPointwise& p, int64_t block) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t H = p.H, w = p.j1 - p.j0, G = 3 * H;
  const auto* gamma = static_cast<const scalar_t*>(p.g_h) + p.j0;
  const auto* beta = static_cast<const scalar_t*>(p.b_h) + p.j0;
  for (int64_t i = 0; i < p.N; ++i) {
    const auto* h_in = static_cast<const scalar_t*>(p.h_in) + i * H + p.j0;
    auto* h_out = static_cast<scalar_t*>(p.h_out) + i * H + p.j0;
    auto* out = static_cast<scalar_t*>(p.out) + i * p.out_sn + p.j0;
    auto* ws = at_offset(static_cast<scalar_t*>(p.ws), i * p.ws_sn);
    const bool active = i < p.rows && (p.lengths == nullptr || p.t < p.lengths[i]);
    if (!active) {
      std::copy(h_in, h_in + w, h_out);
      std::fill(out, out + w, scalar_t(0));
      if (kSave) {
        for (int64_t g = 0; g < 9; ++g)
          std::fill(ws + g * H + p.j0, ws + g * H + p.j1, scalar_t(0));
        if (block == 0) ws[9 * H] = ws[9 * H + 1] = scalar_t(0);
      }
      continue;
    }
    // The blocks' statistics merged in block order (Chan et al.'s pairwise update): the
    // row's mean and variance over its 3H recurrent pre-activations, deterministic.
    double count = 0, mean = 0, m2 = 0;
    for (int64_t b = 0; b < p.nb; ++b) {
      const double* st = p.part + (b * p.N + i) * 3;
      if (st[0] == 0) continue;
      const double total = count + st[0], delta = st[1] - mean;
      mean += delta * st[0] / total;
      m2 += st[2] + delta * delta * count * st[0] / total;
      count = total;
    }
    const double rstd = 1.0 / std::sqrt(m2 / G + p.eps);
    ln_forward_span<scalar_t, kSave>(static_cast<const scalar_t*>(p.ai) + i * p.ai_sn + p.j0,
                                     static_cast<const scalar_t*>(p.gh) + i * 3 * w, gamma, beta,
                                     h_in, h_out, out, kSave ? ws + p.j0 : nullptr, acc_t(mean),
                                     acc_t(rstd), w, H);
    if (kSave && block == 0) ws[9 * H] = scalar_t(rstd);
  }
}

std::tuple<Tensor, Tensor, Tensor> ln_gru_forward(
    const Tensor& input, const Tensor& hx, const Tensor& weight_ih, const Tensor& weight_hh,
    const Tensor& ln_ih_weight, const Tensor& ln_ih_bias, const Tensor& ln_hh_weight,
    const Tensor& ln_hh_bias, const std::optional<Tensor>& lengths, bool reverse, double eps,
    bool need_workspace) {
  LnGruForwardState st =
      ln_gru_forward_state(input, hx, weight_ih, weight_hh, ln_ih_weight, ln_ih_bias, ln_hh_weight,
                           ln_hh_bias, lengths, eps, need_workspace, cpu_matmul);
  if (st.N == 0) return st.result();
  const int64_t T = st.T, N = st.N, H = st.H;
  const std::vector<int64_t> prefix = active_prefix(lengths, T, N);
  const bool strict = steps_keep_fp32(input.scalar_type(), prefix, N, H, 3 * H);
  const bool pack = step_packing_pays(input.scalar_type(), T, N, strict);
  const std::vector<Block> blocks = plan_step_blocks(N, H, weight_hh, strict, pack);
  const int64_t nb = static_cast<int64_t>(blocks.size());
  const GateBlocks gates(weight_hh, blocks, N, pack);
  std::vector<double> part(nb * N * 3, 0.0);
  // Double-buffered h as in the GRU's forward; step s in two phases, 2 s and 2 s + 1.
  const Tensor h[2] = {st.h, at::empty_like(st.h)};
  std::vector<LnGruForwardPointwise> steps(T);
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = reverse ? T - 1 - s : s;
    steps[s] = st.at_step(t);
    steps[s].part = part.data();
    steps[s].nb = nb;
    steps[s].rows = prefix.empty() ? N : prefix[t];
    steps[s].h_in = h[s % 2].data_ptr();
    steps[s].h_out = h[(s + 1) % 2].data_ptr();
  }
  for_steps(nb, 2 * T, [&](int64_t b, int64_t phase) {
    const int64_t s = phase / 2, rows = steps[s].rows;
    if (phase % 2 == 0) {
      // (1) each block: its gate rows of W_hh h and their per-row statistics
      if (rows == 0) return;
      gates.product(b, h[s % 2], rows);
      const Tensor gh_rows = rows_of(gates.gh[b], rows);
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "ln_gru_p",
                                      [&] {
                                        const auto* gh = gh_rows.const_data_ptr<scalar_t>();
                                        const int64_t width = gh_rows.size(1);
                                        for (int64_t i = 0; i < rows; ++i) {
                                          lane_stats(gh + i * width, width, &part[(b * N + i) * 3]);
                                        }
                                      });
      return;
    }
    // (2) each block: statistics from all partials, then the fused gates of its units
    LnGruForwardPointwise q = steps[s];
    q.j0 = blocks[b].j0;
    q.j1 = blocks[b].j1;
    q.gh = gates.gh[b].data_ptr();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "ln_gru_f", [&] {
      if (q.ws != nullptr) {
        ln_forward_units<scalar_t, true>(q, b);
      } else {
        ln_forward_units<scalar_t, false>(q, b);
      }
    });
  });
  st.h = h[T % 2];
  return st.result();
}

// Gate gradients of one active row, units [0, w) of a block; ws, gamma, beta, da_i, da_h: gate g
// at g * H.
template <typename scalar_t>
FUSEDGRU_INLINE void ln_gates_span(const scalar_t* __restrict go, const scalar_t* __restrict ws,
                                   const scalar_t* __restrict h0p, const scalar_t* __restrict gamma,
                                   const scalar_t* __restrict beta, scalar_t* __restrict dh,
                                   scalar_t* __restrict da_i, scalar_t* __restrict da_h,
                                   scalar_t* __restrict hp, int64_t w, int64_t H) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t j = 0; j < w; ++j) {
    const acc_t g = acc_t(dh[j]) + acc_t(go[j]);
    const acc_t r = ws[j], z = ws[H + j], n = ws[2 * H + j], h0 = h0p[j];
    const acc_t ah_n = acc_t(ws[5 * H + j]) * acc_t(gamma[2 * H + j]) + acc_t(beta[2 * H + j]);
    const auto [d_r, d_z, d_n] = ln_gru_gate_grads(g, r, z, n, h0, ah_n);
    da_i[j] = scalar_t(d_r);
    da_i[H + j] = scalar_t(d_z);
    da_i[2 * H + j] = scalar_t(d_n);
    da_h[j] = scalar_t(d_r);
    da_h[H + j] = scalar_t(d_z);
    da_h[2 * H + j] = scalar_t(d_n * r);
    dh[j] = scalar_t(g * z);
    hp[j] = scalar_t(h0);
  }
}

// (sum dxh, sum dxh * xh) over units [0, w) of gate g's rows, dxh = da_h * gamma, in fp32 lanes.
template <typename scalar_t>
FUSEDGRU_INLINE void ln_grad_sums(const scalar_t* __restrict da_h, const scalar_t* __restrict gamma,
                                  const scalar_t* __restrict xh, int64_t w, double* sums) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kLanes = 16;
  acc_t a[kLanes] = {}, q[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= w; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const acc_t d = acc_t(da_h[j + l]) * acc_t(gamma[j + l]);
      a[l] += d;
      q[l] += d * acc_t(xh[j + l]);
    }
  }
  for (; j < w; ++j) {
    const acc_t d = acc_t(da_h[j]) * acc_t(gamma[j]);
    sums[0] += d;
    sums[1] += d * acc_t(xh[j]);
  }
  for (int l = 0; l < kLanes; ++l) {
    sums[0] += a[l];
    sums[1] += q[l];
  }
}

template <typename scalar_t>
FUSEDGRU_CLONES void ln_backward_gates(const LnGruBackwardPointwise& p, int64_t block) {
  const int64_t H = p.H, w = p.j1 - p.j0;
  const int64_t tp = p.reverse ? p.t + 1 : p.t - 1;
  const auto* gamma = static_cast<const scalar_t*>(p.g_h) + p.j0;
  const auto* beta = static_cast<const scalar_t*>(p.b_h) + p.j0;
  for (int64_t i = 0; i < p.N; ++i) {
    const int64_t len = p.lengths != nullptr ? p.lengths[i] : p.T;
    auto* da_i = static_cast<scalar_t*>(p.da_i) + i * p.dg_sn + p.j0;
    auto* da_h = static_cast<scalar_t*>(p.da_h) + i * p.dg_sn + p.j0;
    auto* hp = static_cast<scalar_t*>(p.hprev) + i * p.hp_sn + p.j0;
    double* part = p.part + (block * p.N + i) * 2;
    part[0] = part[1] = 0;
    if (p.t >= len) {
      for (int g = 0; g < 3; ++g) {
        std::fill(da_i + g * H, da_i + g * H + w, scalar_t(0));
        std::fill(da_h + g * H, da_h + g * H + w, scalar_t(0));
      }
      std::fill(hp, hp + w, scalar_t(0));
      continue;
    }
    const bool from_out = tp >= 0 && tp < len;
    const auto* h0p =
        from_out ? static_cast<const scalar_t*>(p.out) + tp * p.out_st + i * p.out_sn + p.j0
                 : static_cast<const scalar_t*>(p.hx) + i * H + p.j0;
    const auto* ws = static_cast<const scalar_t*>(p.ws) + i * p.ws_sn + p.j0;
    ln_gates_span<scalar_t>(static_cast<const scalar_t*>(p.grad_out) + i * p.go_sn + p.j0, ws, h0p,
                            gamma, beta, static_cast<scalar_t*>(p.dh) + i * H + p.j0, da_i, da_h,
                            hp, w, H);
    for (int g = 0; g < 3; ++g) {
      ln_grad_sums<scalar_t>(da_h + g * H, gamma + g * H, ws + 3 * H + g * H, w, part);
    }
  }
}

// dg = rstd * (dxh - m1 - xh * m2) over n values, dxh = da_h * gamma.
template <typename scalar_t>
FUSEDGRU_INLINE void ln_norm_span(const scalar_t* __restrict da_h, const scalar_t* __restrict gamma,
                                  const scalar_t* __restrict xh, scalar_t* __restrict dg,
                                  at::opmath_type<scalar_t> rstd, at::opmath_type<scalar_t> m1,
                                  at::opmath_type<scalar_t> m2, int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t k = 0; k < n; ++k) {
    dg[k] = scalar_t(rstd * (acc_t(da_h[k]) * acc_t(gamma[k]) - m1 - acc_t(xh[k]) * m2));
  }
}

template <typename scalar_t>
FUSEDGRU_CLONES void ln_backward_norm(const LnGruBackwardPointwise& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t H = p.H, G = 3 * H, w = p.j1 - p.j0;
  const auto* gamma = static_cast<const scalar_t*>(p.g_h);
  for (int64_t i = 0; i < p.N; ++i) {
    const int64_t len = p.lengths != nullptr ? p.lengths[i] : p.T;
    auto* dg = static_cast<scalar_t*>(p.dg_raw) + i * p.dg_sn;
    if (p.t >= len) {
      for (int g = 0; g < 3; ++g) std::fill(dg + g * H + p.j0, dg + g * H + p.j1, scalar_t(0));
      continue;
    }
    double s1 = 0, s2 = 0;
    for (int64_t b = 0; b < p.nb; ++b) {
      s1 += p.part[(b * p.N + i) * 2];
      s2 += p.part[(b * p.N + i) * 2 + 1];
    }
    const auto* ws = static_cast<const scalar_t*>(p.ws) + i * p.ws_sn;
    const auto* dah = static_cast<const scalar_t*>(p.da_h) + i * p.dg_sn;
    const acc_t rstd = ws[9 * H];
    for (int g = 0; g < 3; ++g) {
      const int64_t k0 = g * H + p.j0;
      ln_norm_span<scalar_t>(dah + k0, gamma + k0, ws + 3 * H + k0, dg + k0, rstd, acc_t(s1 / G),
                             acc_t(s2 / G), w);
    }
  }
}

// One row of the input side of the backward: d_gi = rstd (dxh - mean dxh - xh mean(dxh xh)),
// dxh = da_i * g_i; and the row's contributions to the LN parameter gradients.
template <typename scalar_t>
FUSEDGRU_CLONES void input_backward_row(const scalar_t* __restrict dai,
                                        const scalar_t* __restrict dah,
                                        const scalar_t* __restrict ws,
                                        const scalar_t* __restrict gamma, scalar_t* __restrict dgi,
                                        at::opmath_type<scalar_t>* __restrict acc, int64_t H,
                                        bool params) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t G = 3 * H;
  const scalar_t* xh_h = ws + 3 * H;
  const scalar_t* xh_i = ws + 6 * H;
  double sums[2] = {0, 0};
  ln_grad_sums<scalar_t>(dai, gamma, xh_i, G, sums);
  const acc_t rstd = ws[9 * H + 1];
  ln_norm_span<scalar_t>(dai, gamma, xh_i, dgi, rstd, acc_t(sums[0] / G), acc_t(sums[1] / G), G);
  if (!params) return;
  acc_t* __restrict g_gi = acc;
  acc_t* __restrict g_bi = acc + G;
  acc_t* __restrict g_gh = acc + 2 * G;
  acc_t* __restrict g_bh = acc + 3 * G;
  for (int64_t k = 0; k < G; ++k) {
    g_gi[k] += acc_t(dai[k]) * acc_t(xh_i[k]);
    g_bi[k] += acc_t(dai[k]);
    g_gh[k] += acc_t(dah[k]) * acc_t(xh_h[k]);
    g_bh[k] += acc_t(dah[k]);
  }
}

// The input side of the backward for all rows at once: per-thread parameter accumulators
// (fixed partition, summed in a fixed order), so the result is deterministic.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> input_backward(
    bool bm, const Tensor& ln_ih_weight, const Tensor& ws, const Tensor& da_i, const Tensor& da_h,
    bool need_weight_grad) {
  const int64_t T = da_i.size(0), N = da_i.size(1), G = da_i.size(2), H = G / 3;
  const auto opts = da_i.options();
  const auto acc_type = da_i.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  Tensor d_gi = alloc_steps(bm, T, N, G, opts);
  const int64_t rows = T * N, chunks = std::max<int64_t>(1, at::get_num_threads());
  Tensor partial = at::zeros({chunks, 4, G}, opts.dtype(acc_type));
  if (rows > 0) {
    const Tensor dai = flat(da_i, bm), dah = flat(da_h, bm), ws2 = flat(ws, bm);
    Tensor dgi = flat(d_gi, bm);
    const Tensor gamma = ln_ih_weight.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, da_i.scalar_type(), "ln_gru_ib", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const int64_t per = (rows + chunks - 1) / chunks;
      at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
          acc_t* acc = partial.data_ptr<acc_t>() + c * 4 * G;
          for (int64_t r = c * per; r < std::min(rows, (c + 1) * per); ++r) {
            input_backward_row<scalar_t>(dai.const_data_ptr<scalar_t>() + r * dai.stride(0),
                                         dah.const_data_ptr<scalar_t>() + r * dah.stride(0),
                                         ws2.const_data_ptr<scalar_t>() + r * ws2.stride(0),
                                         gamma.const_data_ptr<scalar_t>(),
                                         dgi.data_ptr<scalar_t>() + r * dgi.stride(0), acc, H,
                                         need_weight_grad);
          }
        }
      });
    });
  }
  const auto none = [&] { return at::empty({0}, opts); };
  if (!need_weight_grad) return {d_gi, none(), none(), none(), none()};
  const Tensor sums = partial.sum(0).to(da_i.scalar_type());  // [4, G], fixed order
  return {d_gi, sums[0].clone(), sums[1].clone(), sums[2].clone(), sums[3].clone()};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> ln_gru_backward(
    const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& input, const Tensor& hx,
    const Tensor& weight_ih, const Tensor& weight_hh, const Tensor& ln_ih_weight,
    const Tensor& ln_hh_weight, const Tensor& ln_hh_bias, const std::optional<Tensor>& lengths,
    const Tensor& output, const Tensor& workspace, bool reverse, bool need_input_grad,
    bool need_weight_grad) {
  const LnGruBackwardState st =
      ln_gru_backward_state(grad_output, grad_h_n, input, hx, weight_ih, weight_hh, ln_ih_weight,
                            ln_hh_weight, ln_hh_bias, lengths, output, workspace, reverse);
  const int64_t T = st.T, N = st.N, H = st.H;
  const std::vector<int64_t> prefix = active_prefix(lengths, T, N);
  if (N > 0) {
    const bool strict = steps_keep_fp32(input.scalar_type(), prefix, N, 3 * H, H);
    const bool pack = step_packing_pays(input.scalar_type(), T, N, strict);
    const std::vector<Block> blocks = plan_step_blocks(N, H, weight_hh, strict, pack);
    const int64_t nb = static_cast<int64_t>(blocks.size());
    std::vector<double> part(nb * N * 2, 0.0);
    const ColumnBlocks cols(weight_hh, st.dh, blocks, pack);
    // Step s in two phases, 2 s and 2 s + 1; the extra step s = T finishes grad_hx.
    std::vector<int64_t> ts(T + 1), rows(T + 1);
    std::vector<LnGruBackwardPointwise> steps(T + 1);
    for (int64_t s = 0; s <= T; ++s) {
      ts[s] = s == T ? -1 : (reverse ? s : T - 1 - s);
      rows[s] = ts[s] >= 0 ? (prefix.empty() ? N : prefix[ts[s]]) : 0;
      steps[s] = ts[s] >= 0 ? st.at_step(ts[s]) : st.base;
      steps[s].part = part.data();
      steps[s].nb = nb;
    }
    for_steps(nb, 2 * (T + 1), [&](int64_t b, int64_t phase) {
      const int64_t s = phase / 2;
      if (phase % 2 == 0) {
        // (1) dh += dg_raw_{t(s-1)} W_hh for the block's columns; gate gradients of step t(s)
        if (s > 0 && rows[s - 1] > 0) {
          cols.accumulate(b, st.dg_raw.select(0, ts[s - 1]), rows[s - 1]);
        }
        if (ts[s] < 0) return;
        LnGruBackwardPointwise q = steps[s];
        q.j0 = blocks[b].j0;
        q.j1 = blocks[b].j1;
        AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "ln_gru_bg",
                                        [&] { ln_backward_gates<scalar_t>(q, b); });
        return;
      }
      // (2) through the recurrent normalization, with the row sums of all blocks
      if (ts[s] < 0) return;
      LnGruBackwardPointwise q = steps[s];
      q.j0 = blocks[b].j0;
      q.j1 = blocks[b].j1;
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "ln_gru_bn",
                                      [&] { ln_backward_norm<scalar_t>(q); });
    });
  }
  auto [d_gi, g_gi, g_bi, g_gh, g_bh] =
      input_backward(st.batch_major, ln_ih_weight, st.ws, st.da_i, st.da_h, need_weight_grad);
  auto [grad_input, g_wih, g_whh] = ln_gru_backward_gemms(
      st.x, st.batch_major, st.len, weight_ih, d_gi, st.dg_raw, st.hprev, need_input_grad,
      need_weight_grad, cpu_matmul, backward_products(input.scalar_type(), prefix));
  return {grad_input, st.dh, g_wih, g_whh, g_gi, g_bi, g_gh, g_bh};
}

}  // namespace
}  // namespace cpu

TORCH_LIBRARY_IMPL(fusedgru, CPU, m) {
  m.impl("ln_gru_forward", &cpu::ln_gru_forward);
  m.impl("ln_gru_backward", &cpu::ln_gru_backward);
}

}  // namespace fusedgru
