// fusedgru: shared declarations of the GRU kernels.
//
// Shape legend
//   T  time steps          N  batch            C  input features
//   H  hidden size         G  = 3H gate rows, ordered (r, z, n) as in torch.nn.GRU
//
// Equations (one step, one batch row; W_i* = rows of W_ih, W_h* = rows of W_hh):
//   r  = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
//   z  = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
//   n  = tanh(W_in x + b_in + r * (W_hn h + b_hn))
//   h' = (1 - z) * n + z * h          (computed as n + z * (h - n), like ATen)
//
// Every per-time-step tensor is addressed as [T, N, K] through a time stride and a batch stride
// (the last dimension is contiguous), so time-major and batch-major storage both work without a
// copy. Variable lengths: row i is active at step t iff t < lengths[i]. An inactive row keeps its
// hidden state, writes zeros to the output and the saved activations, and receives no gradient.
//
// The pointwise kernels work on a range of hidden units [j0, j1) (all of [0, H) on CUDA; one
// block per thread on the CPU, where each thread also runs the recurrent GEMM for its units).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <tuple>
#include <vector>

#include "host_device.h"

namespace fusedgru {

// Saved activations per (t, n): [r | z | n | W_hn h + b_hn], 4H values.
constexpr int64_t kSavedGates = 4;

// What a backward op says when given the empty workspace of a forward run with
// need_workspace=False (the autograd formulas, fusedgru/_ops.py, run such a forward again).
constexpr const char* kNoWorkspaceMessage =
    "the workspace is empty: its forward ran with need_workspace=False; pass the workspace of "
    "the forward run with need_workspace=True";

// Forward pointwise stage of step t. Pointers are typed by `dtype`; unit j of gate g (0 r, 1 z,
// 2 n) in row i of gh is gh[i * gh_sn + g * gh_sg + (j - j0)].
struct GruForwardPointwise {
  const void* gi;          // [N, 3H] row stride gi_sn: x_t W_ih^T + b_ih
  const void* gh;          // [N, 3 gates] strides (gh_sn, gh_sg), from unit j0: h_{t-1} W_hh^T
  const void* b_hh;        // [3H]: hidden bias (zeros when the layer has none)
  const void* h_in;        // [N, H] contiguous: h_{t-1}
  void* h_out;             // [N, H] contiguous: h_t (may alias h_in)
  void* out;               // [N, H] row stride out_sn: h_t, zero where inactive
  void* ws;                // [N, 4H] row stride ws_sn: saved (r, z, n, W_hn h + b_hn), or nullptr
  const int64_t* lengths;  // [N] or nullptr (all rows active)
  int64_t t, N, H, j0, j1;
  int64_t gi_sn, gh_sn, gh_sg, out_sn, ws_sn;
  at::ScalarType dtype;
};

// Backward pointwise stage for the forward step at time t.
struct GruBackwardPointwise {
  const void* grad_out;    // [N, H] row stride go_sn: dL/dout_t
  const void* grad_ws;     // [N, 4H] row stride gws_sn: dL/d(saved activations), or nullptr
  const void* ws;          // [N, 4H] row stride ws_sn: saved activations of step t
  const void* out;         // [T, N, H] strides (out_st, out_sn): forward outputs, for h_{t-1}
  const void* hx;          // [N, H] contiguous: initial hidden state
  const int64_t* lengths;  // [N] or nullptr
  void* dh;                // [N, H] contiguous: in dL/dh_t from later steps, out z * dL/dh_t
  void* dgh;    // [N, 3H] row stride dg_sn: (da_r, da_z, r * da_n), grad of W_hh h + b_hh
  void* dgin;   // [N, H] row stride dgin_sn: da_n, grad of W_in x + b_in
  void* hprev;  // [N, H] row stride hp_sn: h_{t-1} for the W_hh gradient, or nullptr
  int64_t t, T, N, H, j0, j1;
  bool reverse;
  int64_t go_sn, gws_sn, ws_sn, out_st, out_sn, dg_sn, dgin_sn, hp_sn;
  at::ScalarType dtype;
};

// ---- Host helpers shared by the device implementations (gru_common.cpp) ----

// A [T, N, K] tensor with a contiguous last dim is stored time-major ([T][N][K]) or batch-major
// ([N][T][K], e.g. a batch_first input viewed as [T, N, K]). All per-step tensors of one call
// share the storage order of the input, so flat() gives matching [T*N, K] row orders.
bool is_batch_major(const at::Tensor& x);
// input in time-major or batch-major storage, copied only when it is neither.
at::Tensor steps_layout(const at::Tensor& input);
at::Tensor alloc_steps(bool batch_major, int64_t T, int64_t N, int64_t K,
                       const at::TensorOptions& opts);
// [T, N, K] -> [T*N, K] view in storage order (never copies).
at::Tensor flat(const at::Tensor& x, bool batch_major);
at::Tensor last_dim_contiguous(const at::Tensor& x);
// Address of time step t of a [T, ...] tensor.
void* step_ptr(const at::Tensor& x, int64_t t);

void check_gru_forward_args(const at::Tensor& input, const at::Tensor& hx,
                            const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                            const std::optional<at::Tensor>& bias_ih,
                            const std::optional<at::Tensor>& bias_hh,
                            const std::optional<at::Tensor>& lengths);
void check_gru_backward_args(const at::Tensor& grad_output, const at::Tensor& grad_h_n,
                             const std::optional<at::Tensor>& grad_workspace,
                             const at::Tensor& input, const at::Tensor& hx,
                             const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                             const std::optional<at::Tensor>& lengths, const at::Tensor& output,
                             const at::Tensor& workspace);

// How the backward's all-steps products are shaped. By default as few GEMMs as possible (grad
// W_hh one over all T N rows). With as_nn_gru, as nn.GRU's autograd forms them: grad_input and
// grad W_ih one product each over all 3H gates, grad W_hh one product per step over the step's
// active rows (step_rows[t]; all N when empty), summed in step order. Where a product's rounding
// depends on its shape (the CPU under torch's bf16 matmul precision, csrc/cpu/packed_gemm.h:
// oneDNN picks by shape, e.g. on a Xeon with torch 2.13 a reduction of 16 rows or fewer stays
// fp32), only then do they round where nn.GRU's do.
struct BackwardProducts {
  bool as_nn_gru = false;
  std::vector<int64_t> step_rows;
};

// out = a @ b + beta * out on 2-D views with a unit stride. Each device supplies its own (the CPU
// through ATen; CUDA through cuBLAS with the TF32 policy of torch.nn.GRU).
using Matmul =
    std::function<void(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, double beta)>;
// The ATen matmul (MKL/oneDNN on the CPU; a CPU bf16/fp16 `a` whose rows have gaps is copied to
// rows first, as oneDNN's AMX kernels read into the gaps: gru_common.cpp).
void aten_matmul(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, double beta);

// grad_weight_hh [3H, H] = sum over steps of dg_t^T h_{t-1} (dg [T, N, 3H], hprev [T, N, H], in
// the steps' storage order), shaped as BackwardProducts says.
at::Tensor weight_hh_grad(const at::Tensor& dg, const at::Tensor& hprev, bool batch_major,
                          const BackwardProducts& shape, const Matmul& matmul);

// gi [T, N, 3H] = x W_ih^T + b_ih for all steps: one GEMM, in x's storage order.
at::Tensor gru_input_projection(const at::Tensor& x, bool batch_major, const at::Tensor& weight_ih,
                                const std::optional<at::Tensor>& bias_ih, const Matmul& matmul);

// Per step, the number of leading rows that are active when host-side lengths are sorted in
// non-increasing order (always so for a PackedSequence); empty when every row must be computed.
// Also checks 0 <= lengths <= T.
std::vector<int64_t> active_prefix(const std::optional<at::Tensor>& lengths, int64_t T, int64_t N);

// The all-time-steps GEMMs of the backward, from the per-step gate gradients:
//   grad_input = dG_i W_ih, grad_weight_ih = dG_i^T x, grad_weight_hh = dgh^T hprev,
//   grad_bias_ih = sum dG_i, grad_bias_hh = sum dgh, where dG_i = (dgh_r, dgh_z, dgin).
// Returns (grad_input, grad_weight_ih, grad_weight_hh, grad_bias_ih, grad_bias_hh); what is not
// asked for is an empty [0] tensor. len: the lengths as the kernels read them, or undefined.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_backward_gemms(
    const at::Tensor& x, bool batch_major, const at::Tensor& len, const at::Tensor& weight_ih,
    const at::Tensor& dgh, const at::Tensor& dgin, const at::Tensor& hprev, bool has_bias,
    bool need_input_grad, bool need_weight_grad, const Matmul& matmul,
    const BackwardProducts& shape);

// x [T, N, C] with the steps past each row's length zeroed (a copy in x's layout), or x itself
// without lengths (len undefined): the weight gradients' dG^T x. The padded steps' dG rows are
// zero, but 0 * NaN and 0 * inf are NaN, so non-finite padding (log-features of zero frames,
// NaN sentinels, an uninitialized batch buffer) would reach W_ih's gradient; nn.GRU on a
// PackedSequence never reads the padding. Built on x's device, no host synchronization.
at::Tensor steps_without_padding(const at::Tensor& x, const at::Tensor& len);

// The sizes and the input in step layout (steps_layout), as every forward and backward starts.
struct Steps {
  int64_t T = 0, N = 0, H = 0;
  bool batch_major = false;
  at::Tensor x;
};
Steps steps_of(const at::Tensor& input, int64_t H);

// What every backward starts from (cf. ForwardSteps): the input in step layout, dh a contiguous
// copy of grad_h_n (the device loop carries it back to grad_hx), and, when N > 0 (read), the
// forward's tensors as the kernels read them (last dim contiguous).
struct BackwardSteps : Steps {
  at::Tensor dh;                    // [N, H]
  at::Tensor go, out, ws, h0, len;  // grad_output, output, workspace, hx, lengths
  at::Tensor hprev;                 // [T, N, H]: h_{t-1} per step, or undefined
  void read(const at::Tensor& grad_output, const at::Tensor& output, const at::Tensor& hx,
            const std::optional<at::Tensor>& lengths);
  // The fields every backward pointwise struct shares, for units [0, H) (Pointwise: a
  // GruBackwardPointwise or LnGruBackwardPointwise).
  template <typename Pointwise>
  void fill(Pointwise& p, bool reverse) const {
    p.out = out.data_ptr();
    p.hx = h0.data_ptr();
    p.lengths = len.defined() ? len.data_ptr<int64_t>() : nullptr;
    p.dh = dh.data_ptr();
    p.T = T;
    p.N = N;
    p.H = H;
    p.j0 = 0;
    p.j1 = H;
    p.reverse = reverse;
    p.go_sn = go.stride(1);
    p.ws_sn = ws.stride(1);
    p.out_st = out.stride(0);
    p.out_sn = out.stride(1);
    p.hp_sn = hprev.defined() ? hprev.stride(1) : 0;
  }
};
// The layout, dh and the workspace as given (it is read even when N == 0).
BackwardSteps backward_steps(const at::Tensor& input, int64_t H, const at::Tensor& grad_h_n,
                             const at::Tensor& workspace);

// The device-independent part of a GRU backward: contiguous views of what the kernels read, the
// per-step output buffers, and the pointwise parameters (units [0, H); the CPU narrows them per
// thread block). dh starts as grad_h_n and ends as grad_hx.
struct GruBackwardState : BackwardSteps {
  at::Tensor gws;        // grad_workspace as the kernels read it, or undefined
  at::Tensor dgh, dgin;  // [T, N, 3H], [T, N, H]
  GruBackwardPointwise base;
  // base with the pointers of step t.
  GruBackwardPointwise at_step(int64_t t) const;
};
GruBackwardState gru_backward_state(const at::Tensor& grad_output, const at::Tensor& grad_h_n,
                                    const std::optional<at::Tensor>& grad_workspace,
                                    const at::Tensor& input, const at::Tensor& hx,
                                    const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                                    const std::optional<at::Tensor>& lengths,
                                    const at::Tensor& output, const at::Tensor& workspace,
                                    bool reverse, bool need_weight_grad);

// What every forward starts from (GRU and LayerNormGRU, both devices): the input in step layout
// (steps_layout), output [T, N, H] (the caller's view when given: one half of a bidirectional
// layer's output) and the saved activations [T, N, saved width] (or [0]) allocated in its
// storage order, h a contiguous copy of hx (the device loop advances it to h_n),
// and lengths as the kernels read them (undefined without).
struct ForwardSteps : Steps {
  at::Tensor output, workspace, h, len;
  bool saves() const { return workspace.numel() > 0; }
  // (output, h_n, workspace), as the forward ops return them.
  std::tuple<at::Tensor, at::Tensor, at::Tensor> result() const { return {output, h, workspace}; }
  // The fields every forward pointwise struct shares, for units [0, H) (Pointwise: a
  // GruForwardPointwise or LnGruForwardPointwise).
  template <typename Pointwise>
  void fill(Pointwise& p) const {
    p.lengths = len.defined() ? len.data_ptr<int64_t>() : nullptr;
    p.N = N;
    p.H = H;
    p.j0 = 0;
    p.j1 = H;
    p.out_sn = output.stride(1);
    p.ws_sn = saves() ? workspace.stride(1) : 0;
  }
  // p with the output and saved-activation pointers of step t.
  template <typename Pointwise>
  Pointwise at_step(Pointwise p, int64_t t) const {
    p.t = t;
    p.out = step_ptr(output, t);
    p.ws = saves() ? step_ptr(workspace, t) : nullptr;
    return p;
  }
};
ForwardSteps forward_steps(const at::Tensor& input, const at::Tensor& hx, int64_t H,
                           int64_t saved_width, bool need_workspace,
                           const std::optional<at::Tensor>& lengths,
                           const at::Tensor& output = at::Tensor());

// The device-independent part of a GRU forward (cf. GruBackwardState): the checks, the steps
// above, and when N > 0 the input projection of all steps (one GEMM) and the pointwise
// parameters of units [0, H) without the per-step pointers; each device keeps only its loop.
struct GruForwardState : ForwardSteps {
  at::Tensor gi;             // [T, N, 3H] in x's storage order: x W_ih^T + b_ih
  at::Tensor b_hh;           // [3H], zeros when the layer has no bias
  GruForwardPointwise base;  // gh, h_in, h_out are the device loop's
  // base with the gi, out and ws pointers of step t.
  GruForwardPointwise at_step(int64_t t) const;
};
GruForwardState gru_forward_state(const at::Tensor& input, const at::Tensor& hx,
                                  const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                                  const std::optional<at::Tensor>& bias_ih,
                                  const std::optional<at::Tensor>& bias_hh,
                                  const std::optional<at::Tensor>& lengths, bool need_workspace,
                                  const Matmul& matmul, const at::Tensor& output = at::Tensor());

// ---- Both directions of a layer in one call (gru_forward_bidirectional) ----
// nn.GRU's output of a bidirectional layer, [T, N, 2H] (forward | reverse), allocated in the
// input's storage order after checking hx [2, N, H] and the reverse direction's weights against
// the forward's (check_like_forward; everything else is checked per direction); each
// direction's forward writes its half, direction_half(output, d).
at::Tensor bidirectional_output(const at::Tensor& input, const at::Tensor& hx,
                                const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                                const std::optional<at::Tensor>& bias_ih,
                                const std::optional<at::Tensor>& bias_hh,
                                const at::Tensor& weight_ih_reverse,
                                const at::Tensor& weight_hh_reverse,
                                const std::optional<at::Tensor>& bias_ih_reverse,
                                const std::optional<at::Tensor>& bias_hh_reverse);
// A reverse direction's tensor against its forward counterpart (same shape, dtype and device,
// when both are given), so that an error names the `name` (*_reverse) argument; each direction's
// own checks (gru_forward_state, gru_backward_state) name the forward direction's arguments.
void check_like_forward(const std::optional<at::Tensor>& reverse,
                        const std::optional<at::Tensor>& forward, const char* name);
// The bidirectional backward's own shapes (each direction's are checked by its backward):
// grad_output and output [T, N, 2H], grad_h_n and hx [2, N, H]; the reverse direction's
// weights, workspace and grad_workspace against the forward's.
void check_bidirectional_backward_args(const at::Tensor& grad_output, const at::Tensor& grad_h_n,
                                       const std::optional<at::Tensor>& grad_workspace,
                                       const std::optional<at::Tensor>& grad_workspace_reverse,
                                       const at::Tensor& input, const at::Tensor& hx,
                                       const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                                       const at::Tensor& weight_ih_reverse,
                                       const at::Tensor& weight_hh_reverse,
                                       const at::Tensor& output, const at::Tensor& workspace,
                                       const at::Tensor& workspace_reverse);
// gru_backward_bidirectional's result from each direction's gru_backward result: grad_input
// summed, grad_hx stacked, then each direction's parameter gradients.
using GruGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using GruBidirectionalGrads =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
               at::Tensor, at::Tensor, at::Tensor>;
GruBidirectionalGrads bidirectional_grads(GruGrads forward, GruGrads reverse, bool need_input_grad);
inline at::Tensor direction_half(const at::Tensor& output, int64_t d) {
  const int64_t H = output.size(2) / 2;
  return output.narrow(2, d * H, H);
}

// ---- Layer-normalized GRU (ln_gru_common.cpp) ----
// Ba et al. 2016: layer normalization of the gate pre-activations, the input and the recurrent
// contributions normalized separately over their 3H values:
//   a_i = LN(W_ih x_t) * g_i + b_i,   a_h = LN(W_hh h_{t-1}) * g_h + b_h        (each [3H])
//   r = sigmoid(a_i,r + a_h,r), z = sigmoid(a_i,z + a_h,z), n = tanh(a_i,n + r * a_h,n)
//   h_t = n + z * (h_{t-1} - n)
// The input side is normalized for all steps at once (ln_gru_input_norm); the recurrent side
// inside the step, fused with the gates.
// Saved per (t, n): r, z, n [3H] | LN(W_hh h) [3H] | LN(W_ih x) [3H] | rstd_h, rstd_i.
constexpr int64_t ln_gru_saved_width(int64_t H) { return 9 * H + 2; }

// Forward pointwise stage of the layer-normalized GRU for step t.
struct LnGruForwardPointwise {
  const void* ai;          // [N, 3H] row stride ai_sn: a_i of step t
  const void* gh;          // raw h_{t-1} W_hh^T: CUDA [N, 3H] contiguous; CPU the block's [N, 3w]
                           // (gate g at g * w, w = j1 - j0)
  const double* part;      // CPU only: [nb][N][3] per block (count, mean, squared deviations) of gh
  const void* g_h;         // [3H]: recurrent LN gain
  const void* b_h;         // [3H]: recurrent LN bias
  const void* h_in;        // [N, H] contiguous: h_{t-1}
  void* h_out;             // [N, H] contiguous: h_t (may alias h_in on CUDA)
  void* out;               // [N, H] row stride out_sn: h_t, zero where inactive
  void* ws;                // [N, 9H + 2] row stride ws_sn, or nullptr
  const int64_t* lengths;  // [N] or nullptr
  int64_t t, N, H;
  int64_t j0, j1, nb, rows;  // CPU only: the block's units, the block count, active rows
  int64_t ai_sn, out_sn, ws_sn;
  double eps;
};

void check_ln_gru_forward_args(const at::Tensor& input, const at::Tensor& hx,
                               const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                               const at::Tensor& ln_ih_weight, const at::Tensor& ln_ih_bias,
                               const at::Tensor& ln_hh_weight, const at::Tensor& ln_hh_bias,
                               const std::optional<at::Tensor>& lengths, double eps);
// As GruForwardState, for the layer-normalized GRU: a_i of all steps (ln_gru_input_norm, which
// also saves its normalized values and rstd) and the recurrent LN parameters.
struct LnGruForwardState : ForwardSteps {
  at::Tensor ai;               // [T, N, 3H] in x's storage order
  at::Tensor g_h, b_h;         // [3H] contiguous
  LnGruForwardPointwise base;  // units [0, H); gh, part, h_in, h_out are the device loop's
  LnGruForwardPointwise at_step(int64_t t) const;
};
LnGruForwardState ln_gru_forward_state(const at::Tensor& input, const at::Tensor& hx,
                                       const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                                       const at::Tensor& ln_ih_weight, const at::Tensor& ln_ih_bias,
                                       const at::Tensor& ln_hh_weight, const at::Tensor& ln_hh_bias,
                                       const std::optional<at::Tensor>& lengths, double eps,
                                       bool need_workspace, const Matmul& matmul);

void check_ln_gru_backward_args(const at::Tensor& grad_output, const at::Tensor& grad_h_n,
                                const at::Tensor& input, const at::Tensor& hx,
                                const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                                const at::Tensor& ln_ih_weight, const at::Tensor& ln_hh_weight,
                                const at::Tensor& ln_hh_bias,
                                const std::optional<at::Tensor>& lengths, const at::Tensor& output,
                                const at::Tensor& workspace);
// a_i [T, N, 3H] = LN(x W_ih^T) * g_i + b_i for all steps (one GEMM, then ATen's layer norm);
// the normalized values and rstd go to workspace columns [6H, 9H) and 9H + 1 when it is
// non-empty.
at::Tensor ln_gru_input_norm(const at::Tensor& x, bool batch_major, const at::Tensor& weight_ih,
                             const at::Tensor& ln_ih_weight, const at::Tensor& ln_ih_bias,
                             double eps, at::Tensor& workspace, const Matmul& matmul);
// Backward pointwise stage of the layer-normalized GRU for the forward step t (units [j0, j1)).
struct LnGruBackwardPointwise {
  const void* grad_out;    // [N, H] row stride go_sn
  const void* ws;          // [N, 9H + 2] row stride ws_sn: saved activations of step t
  const void* out;         // [T, N, H] strides (out_st, out_sn)
  const void* hx;          // [N, H]
  const void* g_h;         // [3H]: recurrent LN gain
  const void* b_h;         // [3H]: recurrent LN bias
  const int64_t* lengths;  // [N] or nullptr
  void* dh;                // [N, H]: in dL/dh_t, out z * dL/dh_t
  void* da_i;              // [N, 3H] row stride dg_sn: gradient of a_i
  void* da_h;              // [N, 3H] row stride dg_sn: gradient of a_h
  void* dg_raw;            // [N, 3H] row stride dg_sn: gradient of W_hh h (before LN)
  void* hprev;             // [N, H] row stride hp_sn: h_{t-1}
  double* part;            // CPU only: [nb][N][2] per-block partial sums of the LN gradient
  int64_t t, T, N, H, j0, j1, nb;
  bool reverse;
  int64_t go_sn, ws_sn, out_st, out_sn, dg_sn, hp_sn;
};

// The gate gradients of one unit of the LayerNormGRU backward, the arithmetic both devices run:
// from g = dL/dh_t, the step's saved r, z, n, h0 = h_{t-1} and ah_n = a_h,n (the normalized
// recurrent n-gate input),
//   d_n = g (1 - z)(1 - n^2),  d_z = g (h0 - n) z (1 - z),  d_r = d_n ah_n r (1 - r),
// the gradients of the gate pre-activations (the input side's; the recurrent side's n gate is
// d_n * r).
template <typename acc_t>
struct LnGruGateGrads {
  acc_t d_r, d_z, d_n;
};
template <typename acc_t>
FUSEDGRU_HOST_DEVICE LnGruGateGrads<acc_t> ln_gru_gate_grads(acc_t g, acc_t r, acc_t z, acc_t n,
                                                             acc_t h0, acc_t ah_n) {
  const acc_t d_n = g * (acc_t(1) - z) * (acc_t(1) - n * n);
  const acc_t d_z = g * (h0 - n) * z * (acc_t(1) - z);
  const acc_t d_r = d_n * ah_n * r * (acc_t(1) - r);
  return {d_r, d_z, d_n};
}

// fusedgru::gru composed of the per-layer ops through the dispatcher (gru_layers.cpp): input
// [T, N, C] ([N, T, C] when batch_first; unbatched [T, C]), hx [L D, N, H] ([L D, H]), params
// per layer and direction (weight_ih, weight_hh[, bias_ih, bias_hh]) -> (output, h_n).
std::tuple<at::Tensor, at::Tensor> gru_layers(const at::Tensor& input, const at::Tensor& hx,
                                              at::TensorList params, bool has_biases,
                                              int64_t num_layers, bool bidirectional,
                                              bool batch_first);

// The device-independent part of a LayerNormGRU backward (cf. GruBackwardState).
struct LnGruBackwardState : BackwardSteps {
  at::Tensor g_h, b_h;            // [3H] contiguous
  at::Tensor da_i, da_h, dg_raw;  // [T, N, 3H] each
  LnGruBackwardPointwise base;
  LnGruBackwardPointwise at_step(int64_t t) const;
};
LnGruBackwardState ln_gru_backward_state(
    const at::Tensor& grad_output, const at::Tensor& grad_h_n, const at::Tensor& input,
    const at::Tensor& hx, const at::Tensor& weight_ih, const at::Tensor& weight_hh,
    const at::Tensor& ln_ih_weight, const at::Tensor& ln_hh_weight, const at::Tensor& ln_hh_bias,
    const std::optional<at::Tensor>& lengths, const at::Tensor& output, const at::Tensor& workspace,
    bool reverse);

// The input side of the backward, over all steps in ATen ops (CUDA): from the gradients of a_i
// and a_h and the saved normalized values, the gradient of x W_ih^T through the input
// normalization [T, N, 3H] (x's storage order) and the four LN parameter gradients (reduced in
// fp32/fp64), when need_weight_grad. Returns (d_gi, g_i, b_i, g_h, b_h).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> ln_gru_input_backward(
    bool batch_major, const at::Tensor& ln_ih_weight, const at::Tensor& workspace,
    const at::Tensor& da_i, const at::Tensor& da_h, bool need_weight_grad);
// grad_input = d_gi W_ih, grad_weight_ih = d_gi^T x, grad_weight_hh = dg_raw^T hprev.
// len, shape: as gru_backward_gemms.
std::tuple<at::Tensor, at::Tensor, at::Tensor> ln_gru_backward_gemms(
    const at::Tensor& x, bool batch_major, const at::Tensor& len, const at::Tensor& weight_ih,
    const at::Tensor& d_gi, const at::Tensor& dg_raw, const at::Tensor& hprev, bool need_input_grad,
    bool need_weight_grad, const Matmul& matmul, const BackwardProducts& shape);

}  // namespace fusedgru
