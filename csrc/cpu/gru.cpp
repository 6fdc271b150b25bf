// CPU implementation of the fused GRU ops.
//
// Forward, per layer and direction: the input projection of all steps as one GEMM, then one
// parallel region for all steps (for_steps, a barrier between steps) in which each thread owns a
// block of hidden units [j0, j1): per step it runs the recurrent GEMM for the gate rows (r, z, n)
// of its units (its slice of W_hh stays in its core's cache for the whole sequence) and then the
// fused pointwise pass over those units: gates, hidden update, output and saved activations. h
// is double-buffered across steps. Backward: the same blocks and region, per step: the dh GEMM
// of the step just finished for the thread's columns of dh, then the fused gate-gradient pass
// of the next step for the same units;
// then the weight and input gradients as GEMMs over all steps (gru_common.cpp).
// A single inference step of at most kCellRows rows (gru_cell, streaming with T = 1) skips the
// GEMMs: each thread takes a block of units and forms their six dot products per row straight
// off the weight rows (read once, no copy), then the gates of 16 units in one vectorized pass;
// the whole-GRU op (gru) runs such a step layer by layer on pointers into its arguments.
// Other single steps run one GEMM over all units instead of copying W_hh into per-thread blocks
// that no later step would reuse. The inner loops are branch-free so the compiler vectorizes them;
// on x86 each is cloned for AVX-512, AVX2 and the baseline and picked at load time. Shape legend:
// ../fusedgru.h.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>

#include "../fusedgru.h"
#include "blocks.h"
#include "vec_math.h"

namespace fusedgru {
namespace cpu {
namespace {

using at::Tensor;

// One active row, units [0, w) of a block. gi, b, ws: gate g at g * H; gh: gate g at g * sg.
// Pointers to storage_t<scalar_t> (vec_math.h).
template <typename scalar_t, bool kSave, typename S = storage_t<scalar_t>>
FUSEDGRU_INLINE void forward_span(const S* __restrict gi, const S* __restrict gh,
                                  const S* __restrict b, const S* __restrict h_in,
                                  S* __restrict h_out, S* __restrict out, S* __restrict ws,
                                  int64_t w, int64_t H, int64_t sg) {
  using acc_t = at::opmath_type<scalar_t>;
  using E = Elem<scalar_t>;
  for (int64_t j = 0; j < w; ++j) {
    const acc_t r = sigmoid(acc_t(E::load(gi[j])) + acc_t(E::load(gh[j])) + acc_t(E::load(b[j])));
    const acc_t z =
        sigmoid(acc_t(E::load(gi[H + j])) + acc_t(E::load(gh[sg + j])) + acc_t(E::load(b[H + j])));
    const acc_t hn = acc_t(E::load(gh[2 * sg + j])) + acc_t(E::load(b[2 * H + j]));
    const acc_t n = tanh(acc_t(E::load(gi[2 * H + j])) + r * hn);
    const acc_t h0 = E::load(h_in[j]);
    const S h1 = E::store(n + z * (h0 - n));
    h_out[j] = h1;
    out[j] = h1;
    if constexpr (kSave) {
      ws[j] = E::store(r);
      ws[H + j] = E::store(z);
      ws[2 * H + j] = E::store(n);
      ws[3 * H + j] = E::store(hn);
    }
  }
}

// Forward pointwise pass over units [j0, j1) of rows [0, N) at step t (h_out != h_in).
template <typename scalar_t, bool kSave>
FUSEDGRU_CLONES void forward_units(const GruForwardPointwise& p) {
  const int64_t H = p.H, w = p.j1 - p.j0;
  const auto* b = static_cast<const scalar_t*>(p.b_hh) + p.j0;
  for (int64_t i = 0; i < p.N; ++i) {
    const scalar_t* h_in = static_cast<const scalar_t*>(p.h_in) + i * H + p.j0;
    scalar_t* h_out = static_cast<scalar_t*>(p.h_out) + i * H + p.j0;
    scalar_t* out = static_cast<scalar_t*>(p.out) + i * p.out_sn + p.j0;
    scalar_t* ws = at_offset(static_cast<scalar_t*>(p.ws), i * p.ws_sn + p.j0);
    if (p.lengths != nullptr && p.t >= p.lengths[i]) {
      std::copy(h_in, h_in + w, h_out);
      std::fill(out, out + w, scalar_t(0));
      if (kSave) {
        for (int64_t g = 0; g < kSavedGates; ++g)
          std::fill(ws + g * H, ws + g * H + w, scalar_t(0));
      }
      continue;
    }
    forward_span<scalar_t, kSave>(raw(static_cast<const scalar_t*>(p.gi) + i * p.gi_sn + p.j0),
                                  raw(static_cast<const scalar_t*>(p.gh) + i * p.gh_sn), raw(b),
                                  raw(h_in), raw(h_out), raw(out), raw(ws), w, H, p.gh_sg);
  }
}

// One active row, units [0, w) of a block. ws, gws, dgh: gate g at g * H. With kGradWs the
// gradients of the saved activations (r, z, n, W_hn h + b_hn) join in (double backward).
// Pointers to storage_t<scalar_t> (vec_math.h).
template <typename scalar_t, bool kHprev, bool kGradWs, typename S = storage_t<scalar_t>>
FUSEDGRU_INLINE void backward_span(const S* __restrict go, const S* __restrict gws,
                                   const S* __restrict ws, const S* __restrict h0p,
                                   S* __restrict dh, S* __restrict dgh, S* __restrict dgin,
                                   S* __restrict hp, int64_t w, int64_t H) {
  using acc_t = at::opmath_type<scalar_t>;
  using E = Elem<scalar_t>;
  for (int64_t j = 0; j < w; ++j) {
    const acc_t g = acc_t(E::load(dh[j])) + acc_t(E::load(go[j]));
    const acc_t r = E::load(ws[j]), z = E::load(ws[H + j]), n = E::load(ws[2 * H + j]),
                hn = E::load(ws[3 * H + j]);
    const acc_t h0 = E::load(h0p[j]);
    acc_t dn = g * (acc_t(1) - z), dz = g * (h0 - n), dr = 0, dhn = 0;
    if constexpr (kGradWs) {
      dr = E::load(gws[j]);
      dz += acc_t(E::load(gws[H + j]));
      dn += acc_t(E::load(gws[2 * H + j]));
      dhn = E::load(gws[3 * H + j]);
    }
    const acc_t da_n = dn * (acc_t(1) - n * n);
    const acc_t da_z = dz * z * (acc_t(1) - z);
    const acc_t da_r = (da_n * hn + dr) * r * (acc_t(1) - r);
    dgh[j] = E::store(da_r);
    dgh[H + j] = E::store(da_z);
    dgh[2 * H + j] = E::store(da_n * r + dhn);
    dgin[j] = E::store(da_n);
    dh[j] = E::store(g * z);
    if constexpr (kHprev) hp[j] = E::store(h0);
  }
}

// Backward pointwise pass over units [j0, j1) of rows [0, N) for the forward step t.
template <typename scalar_t, bool kHprev, bool kGradWs>
FUSEDGRU_CLONES void backward_units(const GruBackwardPointwise& p) {
  const int64_t H = p.H, w = p.j1 - p.j0;
  const int64_t tp = p.reverse ? p.t + 1 : p.t - 1;  // the step the forward ran before t
  for (int64_t i = 0; i < p.N; ++i) {
    const int64_t len = p.lengths != nullptr ? p.lengths[i] : p.T;
    scalar_t* dgh = static_cast<scalar_t*>(p.dgh) + i * p.dg_sn + p.j0;
    scalar_t* dgin = static_cast<scalar_t*>(p.dgin) + i * p.dgin_sn + p.j0;
    scalar_t* hp = at_offset(static_cast<scalar_t*>(p.hprev), i * p.hp_sn + p.j0);
    if (p.t >= len) {
      for (int64_t g = 0; g < 3; ++g) std::fill(dgh + g * H, dgh + g * H + w, scalar_t(0));
      std::fill(dgin, dgin + w, scalar_t(0));
      if (kHprev) std::fill(hp, hp + w, scalar_t(0));
      continue;
    }
    const bool from_out = tp >= 0 && tp < len;
    const scalar_t* h0p =
        from_out ? static_cast<const scalar_t*>(p.out) + tp * p.out_st + i * p.out_sn + p.j0
                 : static_cast<const scalar_t*>(p.hx) + i * H + p.j0;
    backward_span<scalar_t, kHprev, kGradWs>(
        raw(static_cast<const scalar_t*>(p.grad_out) + i * p.go_sn + p.j0),
        raw(at_offset(static_cast<const scalar_t*>(p.grad_ws), i * p.gws_sn + p.j0)),
        raw(static_cast<const scalar_t*>(p.ws) + i * p.ws_sn + p.j0), raw(h0p),
        raw(static_cast<scalar_t*>(p.dh) + i * H + p.j0), raw(dgh), raw(dgin), raw(hp), w, H);
  }
}

void forward_pointwise(const GruForwardPointwise& p) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.dtype, "gru_forward_cpu", [&] {
    if (p.ws != nullptr) {
      forward_units<scalar_t, true>(p);
    } else {
      forward_units<scalar_t, false>(p);
    }
  });
}

void backward_pointwise(const GruBackwardPointwise& p) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.dtype, "gru_backward_cpu", [&] {
    if (p.grad_ws != nullptr) {
      backward_units<scalar_t, true, true>(p);  // double backward: rare, always with hprev
    } else if (p.hprev != nullptr) {
      backward_units<scalar_t, true, false>(p);
    } else {
      backward_units<scalar_t, false, false>(p);
    }
  });
}

// ---- One step for a few rows (gru_cell, streaming): no GEMM call and no copy of the weights ----

// Up to this many rows a step reads each weight row once (then from L1 for the other rows)
// and forms its dot products directly; larger batches take the GEMM path.
constexpr int64_t kCellRows = 8;

// x [N, C], h [N, H], h_out [N, H] contiguous; W_ih [3H, C], W_hh [3H, H] row-contiguous (row
// strides wi_s, wh_s); biases [3H] or nullptr.
struct CellParams {
  const void *x, *h, *w_ih, *w_hh, *b_ih, *b_hh;
  void* h_out;
  int64_t N, C, H, wi_s, wh_s;
};

// Units per gate pass of a cell step: their dot products are formed first, then the gates of
// all of them in one loop the compiler vectorizes (16 floats: one AVX-512 vector).
constexpr int64_t kCellUnits = 16;

// Lanes of the dot products' partial sums: one AVX-512 vector (two AVX2 vectors) per chain.
template <typename acc_t>
constexpr int kLanes = 64 / sizeof(acc_t);

// Partial sums of a_g . v_r (g < 3, r < R; v_r = v + r * vs) over n elements: lane l sums
// elements l, l + kLanes, ... in order, one chain per lane (vectorizes without reassociating a
// scalar sum; each weight vector is loaded once for R rows) -> part[g][r][l]. The first kLanes
// elements start the chains, so nothing is zeroed first when n >= kLanes. Pointers to
// storage_t<scalar_t>.
template <int R, typename scalar_t, typename S = storage_t<scalar_t>,
          typename acc_t = at::opmath_type<scalar_t>, int L = kLanes<acc_t>>
FUSEDGRU_INLINE void dot3_lanes(const S* __restrict a0, const S* __restrict a1,
                                const S* __restrict a2, const S* __restrict v, int64_t vs,
                                int64_t n, acc_t (*__restrict part)[R][L]) {
  using E = Elem<scalar_t>;
  acc_t s[3][R][L];
  int64_t i = 0;
  if (n >= L) {
    for (int r = 0; r < R; ++r) {
      for (int l = 0; l < L; ++l) {
        const acc_t vi = E::load(v[r * vs + l]);
        s[0][r][l] = acc_t(E::load(a0[l])) * vi;
        s[1][r][l] = acc_t(E::load(a1[l])) * vi;
        s[2][r][l] = acc_t(E::load(a2[l])) * vi;
      }
    }
    i = L;
  } else {
    for (int g = 0; g < 3; ++g) {
      for (int r = 0; r < R; ++r) {
        for (int l = 0; l < L; ++l) s[g][r][l] = acc_t(0);
      }
    }
  }
  for (; i + L <= n; i += L) {
    for (int r = 0; r < R; ++r) {
      for (int l = 0; l < L; ++l) {
        const acc_t vi = E::load(v[r * vs + i + l]);
        s[0][r][l] += acc_t(E::load(a0[i + l])) * vi;
        s[1][r][l] += acc_t(E::load(a1[i + l])) * vi;
        s[2][r][l] += acc_t(E::load(a2[i + l])) * vi;
      }
    }
  }
  // The last n % L elements, lane l taking element i + l: a lane index fixed at compile time
  // keeps the sums in registers.
  for (int l = 0; l < L; ++l) {
    if (i + l < n) {
      for (int r = 0; r < R; ++r) {
        const acc_t vi = E::load(v[r * vs + i + l]);
        s[0][r][l] += acc_t(E::load(a0[i + l])) * vi;
        s[1][r][l] += acc_t(E::load(a1[i + l])) * vi;
        s[2][r][l] += acc_t(E::load(a2[i + l])) * vi;
      }
    }
  }
  for (int g = 0; g < 3; ++g) {
    for (int r = 0; r < R; ++r) {
      for (int l = 0; l < L; ++l) part[g][r][l] = s[g][r][l];
    }
  }
}

// out[g][r][u] = the lanes of part[u][g][r] added pairwise (lane l + half into lane l, halving
// to one), for kCellUnits units at once: vectorized across the units. Reducing each unit's lanes
// in place instead (zeroed sums, a tree per unit) kept the sums in memory: a step at H = 128
// took 1.2x as long (NOTES.md).
template <int R, typename acc_t, int L = kLanes<acc_t>>
FUSEDGRU_INLINE void add_lanes(const acc_t (*__restrict part)[3][R][L],
                               acc_t (*__restrict out)[R][kCellUnits]) {
  for (int g = 0; g < 3; ++g) {
    for (int r = 0; r < R; ++r) {
      acc_t t[L][kCellUnits];
      for (int l = 0; l < L; ++l) {
        for (int u = 0; u < kCellUnits; ++u) t[l][u] = part[u][g][r][l];
      }
      for (int half = L / 2; half > 0; half /= 2) {
        for (int l = 0; l < half; ++l) {
          for (int u = 0; u < kCellUnits; ++u) t[l][u] += t[l + half][u];
        }
      }
      for (int u = 0; u < kCellUnits; ++u) out[g][r][u] = t[0][u];
    }
  }
}

// Units [j, j + w) (w <= kCellUnits) of rows [n0, n0 + R): the three dot products of each unit
// with x, then the three with h, then the gates of all w units. b_i, b_h: the biases of those
// units (gate g at [g]).
template <int R, typename scalar_t>
FUSEDGRU_INLINE void cell_rows(const CellParams& p, int64_t j, int64_t w, int64_t n0,
                               const at::opmath_type<scalar_t> (*b_i)[kCellUnits],
                               const at::opmath_type<scalar_t> (*b_h)[kCellUnits]) {
  using acc_t = at::opmath_type<scalar_t>;
  using E = Elem<scalar_t>;
  constexpr int L = kLanes<acc_t>;
  const int64_t H = p.H, C = p.C;
  const auto* x = raw(static_cast<const scalar_t*>(p.x) + n0 * C);
  const auto* h = raw(static_cast<const scalar_t*>(p.h) + n0 * H);
  const auto* wi = raw(static_cast<const scalar_t*>(p.w_ih));
  const auto* wh = raw(static_cast<const scalar_t*>(p.w_hh));
  alignas(64) acc_t part[kCellUnits][3][R][L];
  alignas(64) acc_t gi[3][R][kCellUnits], gh[3][R][kCellUnits];
  // The units past w of a last, partial group are added up with the others and never read:
  // zeros, not uninitialized memory.
  for (int64_t u = w; u < kCellUnits; ++u) std::memset(part[u], 0, sizeof(part[u]));
  for (int64_t u = 0; u < w; ++u) {
    const int64_t k = j + u;
    dot3_lanes<R, scalar_t>(wi + k * p.wi_s, wi + (H + k) * p.wi_s, wi + (2 * H + k) * p.wi_s, x, C,
                            C, part[u]);
  }
  add_lanes<R>(part, gi);
  for (int64_t u = 0; u < w; ++u) {
    const int64_t k = j + u;
    dot3_lanes<R, scalar_t>(wh + k * p.wh_s, wh + (H + k) * p.wh_s, wh + (2 * H + k) * p.wh_s, h, H,
                            H, part[u]);
  }
  add_lanes<R>(part, gh);
  auto* h_out = raw(static_cast<scalar_t*>(p.h_out) + n0 * H + j);
  h += j;
  for (int r = 0; r < R; ++r) {
    for (int64_t u = 0; u < w; ++u) {
      const acc_t rg = sigmoid(gi[0][r][u] + b_i[0][u] + gh[0][r][u] + b_h[0][u]);
      const acc_t z = sigmoid(gi[1][r][u] + b_i[1][u] + gh[1][r][u] + b_h[1][u]);
      const acc_t nn = tanh(gi[2][r][u] + b_i[2][u] + rg * (gh[2][r][u] + b_h[2][u]));
      const acc_t h0 = E::load(h[r * H + u]);
      h_out[r * H + u] = E::store(nn + z * (h0 - nn));
    }
  }
}

// Units [j0, j1) of every row, kCellUnits units and four rows at a time.
template <typename scalar_t>
FUSEDGRU_CLONES void cell_units(const CellParams& p, int64_t j0, int64_t j1) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t H = p.H;
  const auto* bi = static_cast<const scalar_t*>(p.b_ih);
  const auto* bh = static_cast<const scalar_t*>(p.b_hh);
  for (int64_t j = j0; j < j1; j += kCellUnits) {
    const int64_t w = std::min(kCellUnits, j1 - j);
    acc_t b_i[3][kCellUnits], b_h[3][kCellUnits];
    for (int g = 0; g < 3; ++g) {
      for (int64_t u = 0; u < w; ++u) {
        b_i[g][u] = bi != nullptr ? acc_t(bi[g * H + j + u]) : acc_t(0);
        b_h[g][u] = bh != nullptr ? acc_t(bh[g * H + j + u]) : acc_t(0);
      }
    }
    int64_t n = 0;
    for (; n + 4 <= p.N; n += 4) cell_rows<4, scalar_t>(p, j, w, n, b_i, b_h);
    for (; n < p.N; ++n) cell_rows<1, scalar_t>(p, j, w, n, b_i, b_h);
  }
}

// Whether the cell step's dot products may stand in for the products of a step of N rows, input
// width C, H units: nn.GRU's [N, C] x [C, 3H] and [N, H] x [H, 3H]; not where ATen would round
// either (aten_product_rounds: ATen's products then).
bool cell_products_allowed(at::ScalarType dtype, int64_t N, int64_t C, int64_t H) {
  return !aten_product_rounds(dtype, N, C, 3 * H) && !aten_product_rounds(dtype, N, H, 3 * H);
}

// Whether a step runs as cell_step: input [1, N, C] with 1 <= N <= kCellRows, row-contiguous
// weights, products the cell step may form (a cheap test; the op's full checks follow).
bool is_cell_step(const Tensor& input, const Tensor& weight_ih, const Tensor& weight_hh) {
  return input.dim() == 3 && input.size(0) == 1 && input.size(1) >= 1 &&
         input.size(1) <= kCellRows && weight_ih.dim() == 2 && weight_ih.stride(1) == 1 &&
         weight_hh.dim() == 2 && weight_hh.stride(1) == 1 &&
         cell_products_allowed(input.scalar_type(), input.size(1), input.size(2),
                               weight_hh.size(1));
}

// One step of rows [0, N), N <= kCellRows (CellParams: contiguous x, h and h_out): each
// thread takes whole groups of kCellUnits units, ~6 (C + H) N multiply-adds per unit, at least
// kTaskGrain of them per task.
void run_cell(const CellParams& p, at::ScalarType dtype) {
  const int64_t groups = (p.H + kCellUnits - 1) / kCellUnits;
  const int64_t grain =
      std::max<int64_t>(1, kTaskGrain / std::max<int64_t>(1, 6 * (p.C + p.H) * p.N * kCellUnits));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "gru_cell_cpu", [&] {
    at::parallel_for(0, groups, grain, [&](int64_t g0, int64_t g1) {
      cell_units<scalar_t>(p, g0 * kCellUnits, std::min(p.H, g1 * kCellUnits));
    });
  });
}

const void* data_or_null(const std::optional<Tensor>& t) {
  return t.has_value() ? t->data_ptr() : nullptr;
}

// One step of rows [0, N), N <= kCellRows, row-contiguous weights (is_cell_step):
// input [1, N, C], hx [N, H] -> h_out, contiguous with N H elements (the caller's [1, N, H]
// output or [N, H] state: no view or copy made here, each costs ~1 us of a ~10 us step).
void cell_step(const Tensor& input, const Tensor& hx, const Tensor& weight_ih,
               const Tensor& weight_hh, const std::optional<Tensor>& bias_ih,
               const std::optional<Tensor>& bias_hh, const Tensor& h_out) {
  const Tensor x = input.contiguous(), h = hx.contiguous();
  const std::optional<Tensor> b_ih =
      bias_ih.has_value() ? std::optional<Tensor>(bias_ih->contiguous()) : std::nullopt;
  const std::optional<Tensor> b_hh =
      bias_hh.has_value() ? std::optional<Tensor>(bias_hh->contiguous()) : std::nullopt;
  run_cell(CellParams{x.data_ptr(), h.data_ptr(), weight_ih.data_ptr(), weight_hh.data_ptr(),
                      data_or_null(b_ih), data_or_null(b_hh), h_out.data_ptr(), x.size(1),
                      x.size(2), weight_hh.size(1), weight_ih.stride(0), weight_hh.stride(0)},
           x.scalar_type());
}

// One layer direction; output: where to write its output [T, N, H] (half of a bidirectional
// layer's), or undefined to allocate it.
std::tuple<Tensor, Tensor, Tensor> forward_into(const Tensor& input, const Tensor& hx,
                                                const Tensor& weight_ih, const Tensor& weight_hh,
                                                const std::optional<Tensor>& bias_ih,
                                                const std::optional<Tensor>& bias_hh,
                                                const std::optional<Tensor>& lengths, bool reverse,
                                                bool need_workspace, const Tensor& output) {
  if (is_cell_step(input, weight_ih, weight_hh) && !need_workspace && !lengths.has_value()) {
    // A single inference step (streaming): dot products straight off the weights.
    check_gru_forward_args(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, lengths);
    const int64_t N = input.size(1), H = weight_hh.size(1);
    const Tensor h1 = at::empty({N, H}, hx.options());
    if (output.defined()) {  // half of a bidirectional layer's output: strided
      cell_step(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, h1);
      output.select(0, 0).copy_(h1);
      return {output, h1, at::empty({0}, input.options())};
    }
    const Tensor out = at::empty({1, N, H}, hx.options());
    cell_step(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, out);
    std::memcpy(h1.data_ptr(), out.data_ptr(), out.nbytes());
    return {out, h1, at::empty({0}, input.options())};
  }
  GruForwardState st = gru_forward_state(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, lengths,
                                         need_workspace, cpu_matmul, output);
  if (st.N == 0) return st.result();
  const int64_t T = st.T, N = st.N, H = st.H;
  const std::vector<int64_t> prefix = active_prefix(lengths, T, N);
  // One step reuses nothing: one GEMM over all units on W_hh^T in place (ATen's threads) rather
  // than copying W_hh into per-thread blocks or packing it (packed, the single block's product
  // ran on one thread after a one-thread copy of W_hh: GRUCell N=32 H=256 0.7x nn.GRUCell).
  const bool strict = T > 1 && steps_keep_fp32(input.scalar_type(), prefix, N, H, 3 * H);
  const bool pack = T > 1 && step_packing_pays(input.scalar_type(), T, N, strict);
  const std::vector<Block> blocks = plan_step_blocks(N, H, weight_hh, strict, pack);
  const int64_t nb = static_cast<int64_t>(blocks.size());

  const GateBlocks gates(weight_hh, blocks, N, pack);
  // Threads read all of h_{t-1} while writing their units of h_t: double-buffered, step s
  // reading h[s % 2]. Each step's parameters are made here, before the threads start.
  const Tensor h[2] = {st.h, at::empty_like(st.h)};
  std::vector<GruForwardPointwise> steps(T);
  std::vector<int64_t> rows(T);
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = reverse ? T - 1 - s : s;
    rows[s] = prefix.empty() ? N : prefix[t];
    steps[s] = st.at_step(t);
    steps[s].h_in = h[s % 2].data_ptr();
    steps[s].h_out = h[(s + 1) % 2].data_ptr();
  }
  for_steps(nb, T, [&](int64_t b, int64_t s) {
    if (rows[s] > 0) gates.product(b, h[s % 2], rows[s]);
    GruForwardPointwise q = steps[s];
    q.j0 = blocks[b].j0;
    q.j1 = blocks[b].j1;
    q.gh = gates.gh[b].data_ptr();
    q.gh_sn = gates.gh[b].stride(0);
    q.gh_sg = q.j1 - q.j0;
    forward_pointwise(q);
  });
  st.h = h[T % 2];
  return st.result();
}

std::tuple<Tensor, Tensor, Tensor> gru_forward(const Tensor& input, const Tensor& hx,
                                               const Tensor& weight_ih, const Tensor& weight_hh,
                                               const std::optional<Tensor>& bias_ih,
                                               const std::optional<Tensor>& bias_hh,
                                               const std::optional<Tensor>& lengths, bool reverse,
                                               bool need_workspace) {
  return forward_into(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, lengths, reverse,
                      need_workspace, Tensor());
}

// Both directions, one after the other, each using both cores (a step of one direction
// parallelizes over units).
std::tuple<Tensor, Tensor, Tensor, Tensor> gru_forward_bidirectional(
    const Tensor& input, const Tensor& hx, const Tensor& weight_ih, const Tensor& weight_hh,
    const std::optional<Tensor>& bias_ih, const std::optional<Tensor>& bias_hh,
    const Tensor& weight_ih_reverse, const Tensor& weight_hh_reverse,
    const std::optional<Tensor>& bias_ih_reverse, const std::optional<Tensor>& bias_hh_reverse,
    const std::optional<Tensor>& lengths, bool need_workspace) {
  const Tensor output =
      bidirectional_output(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, weight_ih_reverse,
                           weight_hh_reverse, bias_ih_reverse, bias_hh_reverse);
  auto [out0, h0, ws0] =
      forward_into(input, hx.select(0, 0), weight_ih, weight_hh, bias_ih, bias_hh, lengths, false,
                   need_workspace, direction_half(output, 0));
  auto [out1, h1, ws1] =
      forward_into(input, hx.select(0, 1), weight_ih_reverse, weight_hh_reverse, bias_ih_reverse,
                   bias_hh_reverse, lengths, true, need_workspace, direction_half(output, 1));
  return {output, at::stack({h0, h1}), ws0, ws1};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_backward(
    const Tensor& grad_output, const Tensor& grad_h_n, const std::optional<Tensor>& grad_workspace,
    const Tensor& input, const Tensor& hx, const Tensor& weight_ih, const Tensor& weight_hh,
    const std::optional<Tensor>& lengths, const Tensor& output, const Tensor& workspace,
    bool reverse, bool has_bias, bool need_input_grad, bool need_weight_grad) {
  const GruBackwardState st =
      gru_backward_state(grad_output, grad_h_n, grad_workspace, input, hx, weight_ih, weight_hh,
                         lengths, output, workspace, reverse, need_weight_grad);
  const int64_t T = st.T, N = st.N, H = st.H;
  const std::vector<int64_t> prefix = active_prefix(lengths, T, N);
  if (N > 0) {
    const bool strict = steps_keep_fp32(input.scalar_type(), prefix, N, 3 * H, H);
    const bool pack = step_packing_pays(input.scalar_type(), T, N, strict);
    const std::vector<Block> blocks = plan_step_blocks(N, H, weight_hh, strict, pack);
    const int64_t nb = static_cast<int64_t>(blocks.size());
    const ColumnBlocks cols(weight_hh, st.dh, blocks, pack);
    // Step s: dh += dgh_{t(s-1)} W_hh for the thread's columns, then the gate gradients of
    // step t(s) for the same units. The extra step s = T finishes dL/dh_{-1} = grad_hx.
    std::vector<int64_t> ts(T + 1), rows(T + 1);
    std::vector<GruBackwardPointwise> steps(T + 1);
    for (int64_t s = 0; s <= T; ++s) {
      ts[s] = s == T ? -1 : (reverse ? s : T - 1 - s);
      rows[s] = ts[s] >= 0 ? (prefix.empty() ? N : prefix[ts[s]]) : 0;
      steps[s] = ts[s] >= 0 ? st.at_step(ts[s]) : st.base;
    }
    for_steps(nb, T + 1, [&](int64_t b, int64_t s) {
      if (s > 0 && rows[s - 1] > 0) cols.accumulate(b, st.dgh.select(0, ts[s - 1]), rows[s - 1]);
      if (ts[s] >= 0) {
        GruBackwardPointwise q = steps[s];
        q.j0 = blocks[b].j0;
        q.j1 = blocks[b].j1;
        backward_pointwise(q);
      }
    });
  }
  auto [grad_input, gw_ih, gw_hh, gb_ih, gb_hh] = gru_backward_gemms(
      st.x, st.batch_major, st.len, weight_ih, st.dgh, st.dgin, st.hprev, has_bias, need_input_grad,
      need_weight_grad, cpu_matmul, backward_products(input.scalar_type(), prefix));
  return {grad_input, st.dh, gw_ih, gw_hh, gb_ih, gb_hh};
}

GruBidirectionalGrads gru_backward_bidirectional(
    const Tensor& grad_output, const Tensor& grad_h_n, const std::optional<Tensor>& grad_workspace,
    const std::optional<Tensor>& grad_workspace_reverse, const Tensor& input, const Tensor& hx,
    const Tensor& weight_ih, const Tensor& weight_hh, const Tensor& weight_ih_reverse,
    const Tensor& weight_hh_reverse, const std::optional<Tensor>& lengths, const Tensor& output,
    const Tensor& workspace, const Tensor& workspace_reverse, bool has_bias, bool need_input_grad,
    bool need_weight_grad) {
  check_bidirectional_backward_args(grad_output, grad_h_n, grad_workspace, grad_workspace_reverse,
                                    input, hx, weight_ih, weight_hh, weight_ih_reverse,
                                    weight_hh_reverse, output, workspace, workspace_reverse);
  return bidirectional_grads(
      gru_backward(direction_half(grad_output, 0), grad_h_n.select(0, 0), grad_workspace, input,
                   hx.select(0, 0), weight_ih, weight_hh, lengths, direction_half(output, 0),
                   workspace, false, has_bias, need_input_grad, need_weight_grad),
      gru_backward(direction_half(grad_output, 1), grad_h_n.select(0, 1), grad_workspace_reverse,
                   input, hx.select(0, 1), weight_ih_reverse, weight_hh_reverse, lengths,
                   direction_half(output, 1), workspace_reverse, true, has_bias, need_input_grad,
                   need_weight_grad),
      need_input_grad);
}

Tensor gru_cell(const Tensor& input, const Tensor& hx, const Tensor& weight_ih,
                const Tensor& weight_hh, const std::optional<Tensor>& bias_ih,
                const std::optional<Tensor>& bias_hh) {
  TORCH_CHECK(input.dim() == 2, "input must have shape (N, C), got ", input.sizes());
  const Tensor x = input.unsqueeze(0);
  if (is_cell_step(x, weight_ih, weight_hh)) {  // only h' is wanted: no output to fill
    check_gru_forward_args(x, hx, weight_ih, weight_hh, bias_ih, bias_hh, std::nullopt);
    const Tensor h1 = at::empty({x.size(1), weight_hh.size(1)}, hx.options());
    cell_step(x, hx, weight_ih, weight_hh, bias_ih, bias_hh, h1);
    return h1;
  }
  return std::get<1>(
      gru_forward(x, hx, weight_ih, weight_hh, bias_ih, bias_hh, std::nullopt, false, false));
}

// Whether a whole GRU call (the gru op) is one inference step that run_cell can take layer by
// layer straight off the caller's tensors: T = 1, 1 <= N <= kCellRows, input rows contiguous,
// hx contiguous, every weight row-contiguous and of nn.GRU's shape, contiguous biases, one
// floating dtype, all on the CPU, products the cell step may form. Every other call, argument
// errors included, takes gru_layers, which checks and composes the per-layer ops.
bool is_stack_step(const Tensor& input, const Tensor& hx, at::TensorList params, bool has_biases,
                   int64_t num_layers, bool bidirectional, bool batch_first) {
  const int64_t D = bidirectional ? 2 : 1, per = has_biases ? 4 : 2;
  const int64_t dim = input.dim();
  if ((dim != 2 && dim != 3) || hx.dim() != dim || num_layers < 1 ||
      static_cast<int64_t>(params.size()) != num_layers * D * per || !input.is_floating_point() ||
      !input.device().is_cpu() || params[1].dim() != 2) {
    return false;
  }
  const bool time_major = dim == 2 || !batch_first;
  const int64_t T = input.size(time_major ? 0 : 1), N = dim == 2 ? 1 : input.size(time_major);
  const int64_t C = input.size(-1), H = params[1].size(1);
  if (T != 1 || N < 1 || N > kCellRows || H < 1 || input.stride(-1) != 1 ||
      (N > 1 && input.stride(time_major ? 1 : 0) != C) || !hx.is_contiguous()) {
    return false;
  }
  const auto fits = [&](const Tensor& t, std::initializer_list<int64_t> shape) {
    return t.sizes() == at::IntArrayRef(shape) && t.scalar_type() == input.scalar_type() &&
           t.device().is_cpu() && t.stride(-1) == 1;
  };
  if (!(dim == 3 ? fits(hx, {num_layers * D, N, H}) : fits(hx, {num_layers * D, H}))) return false;
  for (int64_t i = 0; i < num_layers * D * per; ++i) {
    const Tensor& p = params[i];
    const int64_t c = i < D * per ? C : D * H;  // the layer's input width
    const bool ok = i % per == 0   ? fits(p, {3 * H, c})
                    : i % per == 1 ? fits(p, {3 * H, H})
                                   : fits(p, {3 * H});
    if (!ok) return false;
  }
  // Per layer (its input width), products the cell step may form.
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    if (!cell_products_allowed(input.scalar_type(), N, layer == 0 ? C : D * H, H)) return false;
  }
  return true;
}

// fusedgru::gru on the CPU: a single inference step (is_stack_step) runs each layer and direction
// as run_cell on pointers into the caller's tensors, writing h' straight into h_n (a layer's
// output is its h_n rows, or both directions' side by side), with no per-layer op call, view,
// or workspace: on a streaming step of a small GRU those are most of the call (NOTES.md). The
// results are those of the per-layer path (the same run_cell per layer and direction). Every
// other call is gru_layers.
std::tuple<Tensor, Tensor> gru(const Tensor& input, const Tensor& hx, at::TensorList params,
                               bool has_biases, int64_t num_layers, bool bidirectional,
                               bool batch_first) {
  if (!is_stack_step(input, hx, params, has_biases, num_layers, bidirectional, batch_first)) {
    return gru_layers(input, hx, params, has_biases, num_layers, bidirectional, batch_first);
  }
  const int64_t D = bidirectional ? 2 : 1, per = has_biases ? 4 : 2;
  const bool unbatched = input.dim() == 2;
  const int64_t N = unbatched ? 1 : input.size(batch_first ? 0 : 1);
  const int64_t H = params[1].size(1), es = input.element_size();
  std::vector<int64_t> out_shape = input.sizes().vec();
  out_shape.back() = D * H;
  const Tensor output = at::empty(out_shape, input.options());
  const Tensor h_n = at::empty(hx.sizes(), hx.options());
  // A bidirectional layer's output [N, 2H] (the next layer's input): the last layer's is output.
  const Tensor between =
      D == 2 && num_layers > 1 ? at::empty({N, 2 * H}, input.options()) : Tensor();
  const auto* h0 = static_cast<const char*>(hx.data_ptr());
  auto* h1 = static_cast<char*>(h_n.data_ptr());
  const int64_t slice = N * H * es;  // bytes of one layer direction's state
  const void* x = input.data_ptr();
  int64_t c = input.size(-1);
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    for (int64_t d = 0; d < D; ++d) {
      const int64_t k = layer * D + d;
      const Tensor* w = &params[k * per];
      run_cell(
          CellParams{x, h0 + k * slice, w[0].data_ptr(), w[1].data_ptr(),
                     has_biases ? w[2].data_ptr() : nullptr, has_biases ? w[3].data_ptr() : nullptr,
                     h1 + k * slice, N, c, H, w[0].stride(0), w[1].stride(0)},
          input.scalar_type());
    }
    const char* layer_h = h1 + layer * D * slice;
    if (D == 1) {
      x = layer_h;
    } else {
      auto* dst = static_cast<char*>((layer + 1 == num_layers ? output : between).data_ptr());
      for (int64_t n = 0; n < N; ++n) {
        std::memcpy(dst + 2 * n * H * es, layer_h + n * H * es, H * es);
        std::memcpy(dst + (2 * n + 1) * H * es, layer_h + slice + n * H * es, H * es);
      }
      x = dst;
    }
    c = D * H;
  }
  if (D == 1) std::memcpy(output.data_ptr(), x, slice);
  return {output, h_n};
}

}  // namespace
}  // namespace cpu

TORCH_LIBRARY_IMPL(fusedgru, CPU, m) {
  m.impl("gru", &cpu::gru);
  m.impl("gru_forward", &cpu::gru_forward);
  m.impl("gru_forward_bidirectional", &cpu::gru_forward_bidirectional);
  m.impl("gru_backward_bidirectional", &cpu::gru_backward_bidirectional);
  m.impl("gru_backward", &cpu::gru_backward);
  m.impl("gru_cell", &cpu::gru_cell);
}

}  // namespace fusedgru
