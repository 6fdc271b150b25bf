// Host-side pieces of the layer-normalized GRU shared by the CPU and CUDA implementations:
// checks, the input-side normalization of all steps, and the all-steps backward.
// Shape legend and equations: fusedgru.h, cpu/ln_gru.cpp.
#include "checks.h"
#include "fusedgru.h"

namespace fusedgru {

using at::Tensor;

namespace {

void check_ln_params(const Tensor& input, int64_t G,
                     std::initializer_list<std::pair<const Tensor*, const char*>> params) {
  for (const auto& [t, name] : params) {
    TORCH_CHECK(t->dim() == 1 && t->size(0) == G, name, " must have shape (3H,) = (", G, ",), got ",
                t->sizes());
    TORCH_CHECK(t->scalar_type() == input.scalar_type() && t->device() == input.device(), name,
                " must be ", input.scalar_type(), " on ", input.device(), ", got ",
                t->scalar_type(), " on ", t->device());
  }
}

}  // namespace

void check_ln_gru_forward_args(const Tensor& input, const Tensor& hx, const Tensor& weight_ih,
                               const Tensor& weight_hh, const Tensor& ln_ih_weight,
                               const Tensor& ln_ih_bias, const Tensor& ln_hh_weight,
                               const Tensor& ln_hh_bias, const std::optional<Tensor>& lengths,
                               double eps) {
  check_gru_forward_args(input, hx, weight_ih, weight_hh, std::nullopt, std::nullopt, lengths);
  check_ln_params(input, weight_hh.size(0),
                  {{&ln_ih_weight, "ln_ih_weight"},
                   {&ln_ih_bias, "ln_ih_bias"},
                   {&ln_hh_weight, "ln_hh_weight"},
                   {&ln_hh_bias, "ln_hh_bias"}});
  TORCH_CHECK_VALUE(eps > 0, "eps must be positive, got ", eps);
}

void check_ln_gru_backward_args(const Tensor& grad_output, const Tensor& grad_h_n,
                                const Tensor& input, const Tensor& hx, const Tensor& weight_ih,
                                const Tensor& weight_hh, const Tensor& ln_ih_weight,
                                const Tensor& ln_hh_weight, const Tensor& ln_hh_bias,
                                const std::optional<Tensor>& lengths, const Tensor& output,
                                const Tensor& workspace) {
  check_gru_forward_args(input, hx, weight_ih, weight_hh, std::nullopt, std::nullopt, lengths);
  const int64_t T = input.size(0), N = input.size(1), H = weight_hh.size(1);
  check_ln_params(input, 3 * H,
                  {{&ln_ih_weight, "ln_ih_weight"},
                   {&ln_hh_weight, "ln_hh_weight"},
                   {&ln_hh_bias, "ln_hh_bias"}});
  FUSEDGRU_CHECK_SHAPE(grad_output, T, N, H);
  FUSEDGRU_CHECK_SHAPE(grad_h_n, N, H);
  FUSEDGRU_CHECK_SHAPE(output, T, N, H);
  // need_workspace=False saved an empty [0]
  TORCH_CHECK(N == 0 || workspace.dim() != 1 || workspace.numel() > 0,
              "ln_gru_backward: ", kNoWorkspaceMessage);
  TORCH_CHECK(N == 0 || (workspace.dim() == 3 && workspace.size(0) == T && workspace.size(1) == N &&
                         workspace.size(2) == ln_gru_saved_width(H)),
              "ln_gru_backward: the workspace must have shape (T, N, 9H + 2), as ln_gru_forward "
              "saves it");
  for (const Tensor* t : {&grad_output, &grad_h_n, &output, &workspace}) {
    TORCH_CHECK(t->scalar_type() == input.scalar_type() && t->device() == input.device(),
                "ln_gru_backward: expected all tensors as ", input.scalar_type(), " on ",
                input.device(), ", got ", t->scalar_type(), " on ", t->device());
  }
}

Tensor ln_gru_input_norm(const Tensor& x, bool batch_major, const Tensor& weight_ih,
                         const Tensor& ln_ih_weight, const Tensor& ln_ih_bias, double eps,
                         Tensor& workspace, const Matmul& matmul) {
  const int64_t G = weight_ih.size(0), H = G / 3;
  const Tensor gi = gru_input_projection(x, batch_major, weight_ih, std::nullopt, matmul);
  Tensor gi2 = flat(gi, batch_major);
  auto [xh, mean, rstd] = at::native_layer_norm(gi2, {G}, std::nullopt, std::nullopt, eps);
  if (workspace.numel() > 0) {
    Tensor ws2 = flat(workspace, batch_major);
    ws2.narrow(1, 6 * H, G).copy_(xh);
    ws2.narrow(1, 9 * H + 1, 1).copy_(rstd.view({-1, 1}));
  }
  gi2.copy_(at::addcmul(ln_ih_bias, xh, ln_ih_weight));
  return gi;
}

LnGruForwardState ln_gru_forward_state(const Tensor& input, const Tensor& hx,
                                       const Tensor& weight_ih, const Tensor& weight_hh,
                                       const Tensor& ln_ih_weight, const Tensor& ln_ih_bias,
                                       const Tensor& ln_hh_weight, const Tensor& ln_hh_bias,
                                       const std::optional<Tensor>& lengths, double eps,
                                       bool need_workspace, const Matmul& matmul) {
  check_ln_gru_forward_args(input, hx, weight_ih, weight_hh, ln_ih_weight, ln_ih_bias, ln_hh_weight,
                            ln_hh_bias, lengths, eps);
  const int64_t H = weight_hh.size(1);
  LnGruForwardState st;
  static_cast<ForwardSteps&>(st) =
      forward_steps(input, hx, H, ln_gru_saved_width(H), need_workspace, lengths);
  if (st.N == 0) return st;
  st.ai = ln_gru_input_norm(st.x, st.batch_major, weight_ih, ln_ih_weight, ln_ih_bias, eps,
                            st.workspace, matmul);
  st.g_h = ln_hh_weight.contiguous();
  st.b_h = ln_hh_bias.contiguous();
  LnGruForwardPointwise& p = st.base;
  p = LnGruForwardPointwise{};
  st.fill(p);
  p.g_h = st.g_h.data_ptr();
  p.b_h = st.b_h.data_ptr();
  p.nb = 1;
  p.rows = st.N;
  p.ai_sn = st.ai.stride(1);
  p.eps = eps;
  return st;
}

LnGruForwardPointwise LnGruForwardState::at_step(int64_t t) const {
  LnGruForwardPointwise p = ForwardSteps::at_step(base, t);
  p.ai = step_ptr(ai, t);
  return p;
}

LnGruBackwardState ln_gru_backward_state(const Tensor& grad_output, const Tensor& grad_h_n,
                                         const Tensor& input, const Tensor& hx,
                                         const Tensor& weight_ih, const Tensor& weight_hh,
                                         const Tensor& ln_ih_weight, const Tensor& ln_hh_weight,
                                         const Tensor& ln_hh_bias,
                                         const std::optional<Tensor>& lengths, const Tensor& output,
                                         const Tensor& workspace, bool reverse) {
  check_ln_gru_backward_args(grad_output, grad_h_n, input, hx, weight_ih, weight_hh, ln_ih_weight,
                             ln_hh_weight, ln_hh_bias, lengths, output, workspace);
  LnGruBackwardState st;
  static_cast<BackwardSteps&>(st) = backward_steps(input, weight_hh.size(1), grad_h_n, workspace);
  const int64_t T = st.T, N = st.N, H = st.H, G = 3 * H;
  const auto opts = st.x.options();
  st.da_i = alloc_steps(st.batch_major, T, N, G, opts);
  st.da_h = alloc_steps(st.batch_major, T, N, G, opts);
  st.dg_raw = alloc_steps(st.batch_major, T, N, G, opts);
  st.hprev = alloc_steps(st.batch_major, T, N, H, opts);
  if (N == 0) return st;
  st.read(grad_output, output, hx, lengths);
  st.g_h = ln_hh_weight.contiguous();
  st.b_h = ln_hh_bias.contiguous();
  LnGruBackwardPointwise& p = st.base;
  p = LnGruBackwardPointwise{};
  st.fill(p, reverse);
  p.g_h = st.g_h.data_ptr();
  p.b_h = st.b_h.data_ptr();
  p.nb = 1;
  p.dg_sn = st.da_i.stride(1);
  return st;
}

LnGruBackwardPointwise LnGruBackwardState::at_step(int64_t t) const {
  LnGruBackwardPointwise p = base;
  p.t = t;
  p.grad_out = step_ptr(go, t);
  p.ws = step_ptr(ws, t);
  p.da_i = step_ptr(da_i, t);
  p.da_h = step_ptr(da_h, t);
  p.dg_raw = step_ptr(dg_raw, t);
  p.hprev = step_ptr(hprev, t);
  return p;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> ln_gru_input_backward(
    bool batch_major, const Tensor& ln_ih_weight, const Tensor& workspace, const Tensor& da_i,
    const Tensor& da_h, bool need_weight_grad) {
  const int64_t G = da_i.size(2), H = G / 3;
  const auto dtype = da_i.scalar_type();
  const auto opts = da_i.options();
  const auto acc = dtype == at::kDouble ? at::kDouble : at::kFloat;
  const Tensor dai = flat(da_i, batch_major).to(acc), dah = flat(da_h, batch_major).to(acc);
  const Tensor ws = da_i.size(1) > 0 ? flat(workspace, batch_major).to(acc)
                                     : at::zeros({0, ln_gru_saved_width(H)}, opts.dtype(acc));
  const Tensor xh_h = ws.narrow(1, 3 * H, G), xh_i = ws.narrow(1, 6 * H, G);
  const Tensor rstd_i = ws.narrow(1, 9 * H + 1, 1);
  const auto sum_rows = [&](const Tensor& v) { return v.sum(0).to(dtype); };
  Tensor g_gi = at::empty({0}, opts), g_bi = at::empty({0}, opts);
  Tensor g_gh = at::empty({0}, opts), g_bh = at::empty({0}, opts);
  if (need_weight_grad) {
    g_gi = sum_rows(dai * xh_i);
    g_bi = sum_rows(dai);
    g_gh = sum_rows(dah * xh_h);
    g_bh = sum_rows(dah);
  }
  // zero rows (inactive steps) stay zero: their rstd_i is 0
  const Tensor dxh = dai * ln_ih_weight.to(acc);
  Tensor d_gi = alloc_steps(batch_major, da_i.size(0), da_i.size(1), G, opts);
  flat(d_gi, batch_major)
      .copy_(rstd_i * (dxh - dxh.mean(1, true) - xh_i * (dxh * xh_i).mean(1, true)));
  return {d_gi, g_gi, g_bi, g_gh, g_bh};
}

std::tuple<Tensor, Tensor, Tensor> ln_gru_backward_gemms(
    const Tensor& x, bool batch_major, const Tensor& len, const Tensor& weight_ih,
    const Tensor& d_gi, const Tensor& dg_raw, const Tensor& hprev, bool need_input_grad,
    bool need_weight_grad, const Matmul& matmul, const BackwardProducts& shape) {
  const int64_t T = x.size(0), N = x.size(1), C = x.size(2), H = hprev.size(2), G = 3 * H;
  const auto opts = x.options();
  Tensor grad_input = at::empty({0}, opts), g_wih = at::empty({0}, opts);
  Tensor g_whh = at::empty({0}, opts);
  const Tensor dgi2 = flat(d_gi, batch_major);
  if (need_input_grad) {
    grad_input = alloc_steps(batch_major, T, N, C, opts);
    Tensor gx = flat(grad_input, batch_major);
    matmul(gx, dgi2, weight_ih, 0.0);
  }
  if (need_weight_grad) {
    g_wih = at::empty({G, C}, opts);
    matmul(g_wih, dgi2.t(), flat(steps_without_padding(x, len), batch_major), 0.0);
    g_whh = weight_hh_grad(dg_raw, hprev, batch_major, shape, matmul);
  }
  return {grad_input, g_wih, g_whh};
}

}  // namespace fusedgru
