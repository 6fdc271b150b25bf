// Host-side checks and layout handling of the causal depthwise conv1d ops, shared by the CPU and
// CUDA implementations. Shape legend: causal_conv1d.h.
#include "causal_conv1d.h"

#include <ATen/MemoryOverlap.h>
#include <c10/util/safe_numerics.h>

#include "checks.h"

namespace fusedgru {

using at::Tensor;

namespace {

// S = (W-1)*dilation, refusing what int64 cannot hold: the kernels index up to L + S steps of
// history and input per channel, and per-row scratch of (L + S) * C, so each of these must fit
// (dilation = 2**62 with W = 4 wrapped around and read far outside the tensors).
int64_t history_steps(int64_t W, int64_t dilation, int64_t L, int64_t C) {
  int64_t S = 0, span = 0, scratch = 0;
  TORCH_CHECK_VALUE(!c10::mul_overflows(W - 1, dilation, &S), "dilation ", dilation,
                    " is too large: the history (W-1)*dilation = ", W - 1, "*", dilation,
                    " overflows int64");
  TORCH_CHECK_VALUE(!c10::add_overflows(S, L, &span) && !c10::mul_overflows(span, C, &scratch),
                    "dilation ", dilation, " is too large: (L + (W-1)*dilation) * C = (", L, " + ",
                    S, ") * ", C, " overflows int64");
  return S;
}

}  // namespace

void check_causal_conv_args(const Tensor& x, const Tensor& weight,
                            const std::optional<Tensor>& bias_opt,
                            const std::optional<Tensor>& initial_state_opt, int64_t dilation,
                            int64_t activation) {
  FUSEDGRU_CHECK_DIM(x, 3);
  FUSEDGRU_CHECK_FLOATING(x);
  TORCH_CHECK(weight.dim() == 2, "weight must have shape (C, W), got ", weight.sizes());
  const int64_t N = x.size(0), C = x.size(1), W = weight.size(1);
  TORCH_CHECK(weight.size(0) == C, "weight has ", weight.size(0), " channels but x has ", C,
              " (x is (N, C, L) = ", x.sizes(), ")");
  TORCH_CHECK_VALUE(W >= 1, "kernel width must be >= 1, got ", W);
  TORCH_CHECK_VALUE(dilation >= 1, "dilation must be >= 1, got ", dilation);
  const int64_t S = history_steps(W, dilation, x.size(2), C);
  TORCH_CHECK_VALUE(activation >= kActNone && activation <= kActRelu,
                    "activation code must be 0 (none), 1 (silu) or 2 (relu), got ", activation);
  FUSEDGRU_CHECK_SAME_DTYPE(weight, x);
  FUSEDGRU_CHECK_SAME_DEVICE(weight, x);
  // The checks' messages name the tensors as the Python functions do.
  if (bias_opt.has_value()) {
    const Tensor& bias = *bias_opt;
    TORCH_CHECK(bias.dim() == 1 && bias.size(0) == C, "bias must have shape (C,) = (", C,
                ",), got ", bias.sizes());
    FUSEDGRU_CHECK_SAME_DTYPE(bias, x);
    FUSEDGRU_CHECK_SAME_DEVICE(bias, x);
  }
  if (initial_state_opt.has_value()) {
    const Tensor& initial_state = *initial_state_opt;
    TORCH_CHECK(initial_state.dim() == 3 && initial_state.size(0) == N &&
                    initial_state.size(1) == C && initial_state.size(2) == S,
                "initial_state must have shape (N, C, (W-1)*dilation) = (", N, ", ", C, ", ", S,
                "), got ", initial_state.sizes());
    FUSEDGRU_CHECK_SAME_DTYPE(initial_state, x);
    FUSEDGRU_CHECK_SAME_DEVICE(initial_state, x);
  }
}

void check_causal_conv_update_args(const Tensor& x, const Tensor& conv_state, const Tensor& weight,
                                   const std::optional<Tensor>& bias, int64_t dilation,
                                   int64_t activation) {
  TORCH_CHECK(x.dim() == 2, "x must have shape (N, C) (one time step), got ", x.sizes());
  TORCH_CHECK(weight.dim() == 2, "weight must have shape (C, W), got ", weight.sizes());
  TORCH_CHECK(weight.size(0) == x.size(1), "weight has ", weight.size(0), " channels but x has ",
              x.size(1), " (x is (N, C) = ", x.sizes(), ")");
  // x, weight, bias, dilation (S below cannot overflow after this) and activation.
  check_causal_conv_args(x.unsqueeze(2), weight, bias, std::nullopt, dilation, activation);
  const int64_t N = x.size(0), C = x.size(1), S = (weight.size(1) - 1) * dilation;
  TORCH_CHECK(conv_state.dim() == 3 && conv_state.size(0) == N && conv_state.size(1) == C &&
                  conv_state.size(2) == S,
              "conv_state must have shape (N, C, (W-1)*dilation) = (", N, ", ", C, ", ", S,
              "), got ", conv_state.sizes());
  FUSEDGRU_CHECK_SAME_DTYPE(conv_state, x);
  FUSEDGRU_CHECK_SAME_DEVICE(conv_state, x);
  // conv_state is written in place. Like torch's in-place ops, refuse a state whose elements
  // share memory (an expand()ed state: every alias would receive each row's shift, and the
  // step would read values another row already overwrote). Inputs in the state's storage are
  // read from copies (conv_update).
  TORCH_CHECK(at::has_internal_overlap(conv_state) != at::MemOverlap::Yes,
              "conv_state is updated in place, but several of its elements refer to one memory "
              "location (an expand()ed or otherwise self-overlapping tensor, strides ",
              conv_state.strides(),
              "); pass a tensor with its own memory, e.g. "
              "conv_state.clone()");
}

bool conv_channels_last(const Tensor& x) { return x.stride(2) != 1 && x.stride(1) == 1; }

Tensor conv_input_layout(const Tensor& x) {
  return (x.stride(2) == 1 || x.stride(1) == 1) ? x : x.contiguous();
}

Tensor conv_like_layout(const Tensor& g, bool channels_last) {
  if (channels_last) return g.stride(1) == 1 ? g : g.transpose(1, 2).contiguous().transpose(1, 2);
  return g.stride(2) == 1 ? g : g.contiguous();
}

Tensor conv_empty_like(const Tensor& x) {
  const int64_t N = x.size(0), C = x.size(1), L = x.size(2);
  return conv_channels_last(x) ? at::empty({N, L, C}, x.options()).transpose(1, 2)
                               : at::empty({N, C, L}, x.options());
}

CausalConvParams conv_params(const Tensor& x, const Tensor& weight,
                             const std::optional<Tensor>& bias,
                             const std::optional<Tensor>& initial_state, int64_t dilation,
                             int64_t activation) {
  CausalConvParams p{};
  p.x = x.data_ptr();
  p.x_sn = x.stride(0);
  p.x_sc = x.stride(1);
  p.x_sl = x.stride(2);
  if (initial_state.has_value()) {
    p.init = initial_state->data_ptr();
    p.i_sn = initial_state->stride(0);
    p.i_sc = initial_state->stride(1);
    p.i_ss = initial_state->stride(2);
  }
  p.weight = weight.data_ptr();
  p.bias = bias.has_value() ? bias->data_ptr() : nullptr;
  p.N = x.size(0);
  p.C = x.size(1);
  p.L = x.size(2);
  p.W = weight.size(1);
  p.dilation = dilation;
  p.activation = activation;
  p.channels_last = conv_channels_last(x);
  p.dtype = x.scalar_type();
  return p;
}

CausalConvForward conv_forward(const Tensor& x_in, const Tensor& weight,
                               const std::optional<Tensor>& bias,
                               const std::optional<Tensor>& initial_state, int64_t dilation,
                               int64_t activation) {
  check_causal_conv_args(x_in, weight, bias, initial_state, dilation, activation);
  CausalConvForward f;
  f.x = conv_input_layout(x_in);
  f.w = weight.contiguous();
  if (bias.has_value()) f.b = bias->contiguous();
  f.y = conv_empty_like(f.x);
  f.p = conv_params(f.x, f.w, f.b, initial_state, dilation, activation);
  f.p.y = f.y.data_ptr();
  f.p.y_sn = f.y.stride(0);
  f.p.y_sc = f.y.stride(1);
  f.p.y_sl = f.y.stride(2);
  return f;
}

CausalConvUpdate conv_update(const Tensor& x, Tensor& conv_state, const Tensor& weight,
                             const std::optional<Tensor>& bias, int64_t dilation,
                             int64_t activation) {
  check_causal_conv_update_args(x, conv_state, weight, bias, dilation, activation);
  // x, weight and bias as the call found them: where one lives in the state's storage (a view
  // such as conv_state[:, :, 0], another row's column, a weight packed beside the state),
  // rows shifted first would change what later rows read, so it is read from a copy taken
  // before any row moves. Storage identity decides it, not overlap: overlap of strided views
  // is undecidable in general (at::assert_no_overlap passes them).
  const auto own = [&](const Tensor& t) {
    return t.storage().is_alias_of(conv_state.storage()) ? t.clone() : t;
  };
  CausalConvUpdate u;
  u.x = own(x);
  u.w = own(weight).contiguous();
  if (bias.has_value()) u.b = own(*bias).contiguous();
  u.y = at::empty({x.size(0), x.size(1)}, x.options());
  CausalConvUpdateParams& p = u.p;
  p.x = u.x.data_ptr();
  p.x_sn = u.x.stride(0);
  p.x_sc = u.x.stride(1);
  p.state = conv_state.data_ptr();
  p.s_sn = conv_state.stride(0);
  p.s_sc = conv_state.stride(1);
  p.s_ss = conv_state.stride(2);
  p.weight = u.w.data_ptr();
  p.bias = u.b.has_value() ? u.b->data_ptr() : nullptr;
  p.y = u.y.data_ptr();
  p.N = x.size(0);
  p.C = x.size(1);
  p.W = weight.size(1);
  p.dilation = dilation;
  p.activation = activation;
  return u;
}

void check_causal_conv_bwd_args(const Tensor& grad_y, const Tensor& x, const Tensor& weight,
                                const std::optional<Tensor>& bias,
                                const std::optional<Tensor>& initial_state, int64_t dilation,
                                int64_t activation) {
  check_causal_conv_args(x, weight, bias, initial_state, dilation, activation);
  TORCH_CHECK(grad_y.sizes() == x.sizes(), "grad_y must have the shape of x ", x.sizes(), ", got ",
              grad_y.sizes());
  FUSEDGRU_CHECK_SAME_DTYPE(grad_y, x);
  FUSEDGRU_CHECK_SAME_DEVICE(grad_y, x);
}

CausalConvBackward conv_backward(const Tensor& grad_y, const Tensor& x_in, const Tensor& weight,
                                 const std::optional<Tensor>& bias,
                                 const std::optional<Tensor>& initial_state, int64_t dilation,
                                 int64_t activation) {
  check_causal_conv_bwd_args(grad_y, x_in, weight, bias, initial_state, dilation, activation);
  CausalConvBackward st;
  st.x = conv_input_layout(x_in);
  st.channels_last = conv_channels_last(st.x);
  st.gy = conv_like_layout(grad_y, st.channels_last);
  st.w = weight.contiguous();
  if (bias.has_value()) st.b = bias->contiguous();
  const int64_t N = st.x.size(0), C = st.x.size(1), W = st.w.size(1);
  const int64_t S = (W - 1) * dilation;
  const auto opts = st.x.options();
  st.acc_type = st.x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  st.gx = conv_empty_like(st.x);
  st.g_init = initial_state.has_value() ? at::zeros({N, C, S}, opts) : at::empty({0}, opts);
  st.gw = at::zeros({C, W}, opts.dtype(st.acc_type));
  st.gb = at::zeros({bias.has_value() ? C : 0}, opts.dtype(st.acc_type));
  CausalConvBackwardParams& q = st.q;
  q = CausalConvBackwardParams{};
  q.fwd = conv_params(st.x, st.w, st.b, initial_state, dilation, activation);
  q.grad_y = st.gy.data_ptr();
  q.gy_sn = st.gy.stride(0);
  q.gy_sc = st.gy.stride(1);
  q.gy_sl = st.gy.stride(2);
  q.grad_x = st.gx.data_ptr();
  q.gx_sn = st.gx.stride(0);
  q.gx_sc = st.gx.stride(1);
  q.gx_sl = st.gx.stride(2);
  q.grad_init = initial_state.has_value() ? st.g_init.data_ptr() : nullptr;
  q.grad_weight = st.gw.data_ptr();
  q.grad_bias = bias.has_value() ? st.gb.data_ptr() : nullptr;
  return st;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> CausalConvBackward::result() const {
  return {gx, gw.to(w.scalar_type()), gb.to(w.scalar_type()), g_init};
}

}  // namespace fusedgru
