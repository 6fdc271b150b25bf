// Host-side pieces shared by the CPU and CUDA GRU implementations: argument checks, storage
// layout, and the GEMMs over all time steps (through ATen: MKL/oneDNN on the CPU, cuBLAS on the
// current CUDA stream). Shape legend and equations: fusedgru.h.
#include "checks.h"
#include "fusedgru.h"

namespace fusedgru {

using at::Tensor;

bool is_batch_major(const Tensor& x) {
  return !x.is_contiguous() && x.transpose(0, 1).is_contiguous();
}

Tensor steps_layout(const Tensor& input) {
  return (input.is_contiguous() || is_batch_major(input)) ? input : input.contiguous();
}

Tensor alloc_steps(bool batch_major, int64_t T, int64_t N, int64_t K,
                   const at::TensorOptions& opts) {
  return batch_major ? at::empty({N, T, K}, opts).transpose(0, 1) : at::empty({T, N, K}, opts);
}

Tensor flat(const Tensor& x, bool batch_major) {
  const int64_t K = x.size(2);
  return batch_major ? x.transpose(0, 1).view({-1, K}) : x.view({-1, K});
}

Tensor last_dim_contiguous(const Tensor& x) { return x.stride(-1) == 1 ? x : x.contiguous(); }

void* step_ptr(const Tensor& x, int64_t t) {
  return static_cast<char*>(x.data_ptr()) + t * x.stride(0) * x.element_size();
}

namespace {

void check_common(const Tensor& input, const Tensor& hx, const Tensor& weight_ih,
                  const Tensor& weight_hh, const std::optional<Tensor>& lengths) {
  FUSEDGRU_CHECK_DIM(input, 3);
  FUSEDGRU_CHECK_FLOATING(input);
  FUSEDGRU_CHECK_DIM(weight_hh, 2);
  const int64_t T = input.size(0), N = input.size(1), C = input.size(2);
  const int64_t H = weight_hh.size(1);
  TORCH_CHECK(T > 0, "Expected sequence length to be larger than 0 in RNN");
  TORCH_CHECK(H > 0, "weight_hh must have a hidden size > 0, got shape ", weight_hh.sizes());
  const int64_t G = 3 * H;
  FUSEDGRU_CHECK_SHAPE(weight_hh, G, H);
  FUSEDGRU_CHECK_SHAPE(weight_ih, G, C);
  FUSEDGRU_CHECK_SHAPE(hx, N, H);
  for (const Tensor* t : {&hx, &weight_ih, &weight_hh}) {
    TORCH_CHECK(t->device() == input.device(), "expected all tensors on ", input.device(),
                ", got a tensor of shape ", t->sizes(), " on ", t->device());
  }
  TORCH_CHECK(hx.scalar_type() == input.scalar_type(), "hx dtype (", hx.scalar_type(),
              ") does not match input dtype (", input.scalar_type(), ")");
  FUSEDGRU_CHECK_SAME_DTYPE(weight_ih, input);
  FUSEDGRU_CHECK_SAME_DTYPE(weight_hh, input);
  if (lengths.has_value()) {
    const Tensor& len = *lengths;
    FUSEDGRU_CHECK_SHAPE(len, N);
    TORCH_CHECK(len.scalar_type() == at::kLong, "lengths must be int64, got ", len.scalar_type());
    FUSEDGRU_CHECK_SAME_DEVICE(len, input);
  }
}

void check_bias(const std::optional<Tensor>& bias, const Tensor& input, int64_t G,
                const char* name) {
  if (!bias.has_value()) return;
  const Tensor& b = *bias;
  TORCH_CHECK(b.dim() == 1 && b.size(0) == G, name, " must have shape (", G, "), got ", b.sizes());
  TORCH_CHECK(b.scalar_type() == input.scalar_type(), name, " must have the dtype of input (",
              input.scalar_type(), "), got ", b.scalar_type());
  TORCH_CHECK(b.device() == input.device(), name, " must be on ", input.device(), ", got ",
              b.device());
}

}  // namespace

void check_gru_forward_args(const Tensor& input, const Tensor& hx, const Tensor& weight_ih,
                            const Tensor& weight_hh, const std::optional<Tensor>& bias_ih,
                            const std::optional<Tensor>& bias_hh,
                            const std::optional<Tensor>& lengths) {
  check_common(input, hx, weight_ih, weight_hh, lengths);
  const int64_t G = weight_hh.size(0);
  check_bias(bias_ih, input, G, "bias_ih");
  check_bias(bias_hh, input, G, "bias_hh");
}

void check_gru_backward_args(const Tensor& grad_output, const Tensor& grad_h_n,
                             const std::optional<Tensor>& grad_workspace, const Tensor& input,
                             const Tensor& hx, const Tensor& weight_ih, const Tensor& weight_hh,
                             const std::optional<Tensor>& lengths, const Tensor& output,
                             const Tensor& workspace) {
  check_common(input, hx, weight_ih, weight_hh, lengths);
  const int64_t T = input.size(0), N = input.size(1), H = weight_hh.size(1);
  FUSEDGRU_CHECK_SHAPE(grad_output, T, N, H);
  FUSEDGRU_CHECK_SHAPE(grad_h_n, N, H);
  FUSEDGRU_CHECK_SHAPE(output, T, N, H);
  // need_workspace=False saved an empty [0]
  TORCH_CHECK(N == 0 || workspace.dim() != 1 || workspace.numel() > 0,
              "gru_backward: ", kNoWorkspaceMessage);
  if (N > 0) FUSEDGRU_CHECK_SHAPE(workspace, T, N, kSavedGates * H);
  std::vector<const Tensor*> tensors{&grad_output, &grad_h_n, &output, &workspace};
  if (grad_workspace.has_value()) {
    FUSEDGRU_CHECK_SHAPE(*grad_workspace, T, N, kSavedGates * H);
    tensors.push_back(&*grad_workspace);
  }
  for (const Tensor* t : tensors) {
    TORCH_CHECK(t->scalar_type() == input.scalar_type() && t->device() == input.device(),
                "gru_backward: expected all tensors as ", input.scalar_type(), " on ",
                input.device(), ", got ", t->scalar_type(), " on ", t->device());
  }
}

void aten_matmul(Tensor& out, const Tensor& a_in, const Tensor& b, double beta) {
  // oneDNN's AMX bf16 matmul (ATen's CPU bf16 product; seen on Emerald Rapids, torch 2.13) reads
  // a row-major A's rows past its K columns when their stride is larger: up to K + 1 for odd K,
  // up to the next multiple of 32 beyond 32, and multiplies what it finds by zero, so NaN or inf
  // there (another step's unwritten gates, a neighbouring gate's gradient) turns into NaN in the
  // product. Such an A is copied to rows of its own first (benchmarks/NOTES.md has the
  // reproduction; tests/test_cpu_gemm.py runs every path on NaN-filled memory). It was seen only
  // beyond 16 rows; any A of 2 rows or more is copied, as that is oneDNN's choice, not ours.
  // fp16 too, as a precaution: oneDNN runs it on AMX where the CPU has AMX-FP16 (untested: none
  // here). A column-major out would make ATen compute out^T = b^T a^T and read b's columns so;
  // no caller passes one.
  const bool reduced = a_in.scalar_type() == at::kBFloat16 || a_in.scalar_type() == at::kHalf;
  TORCH_INTERNAL_ASSERT(!(a_in.is_cpu() && reduced) || out.stride(1) == 1 || out.size(1) <= 1,
                        "aten_matmul: a CPU bf16/fp16 product into a column-major out");
  const bool gapped_rows =
      a_in.size(0) > 1 && a_in.stride(1) == 1 && a_in.stride(0) != a_in.size(1);
  const Tensor a = a_in.is_cpu() && reduced && gapped_rows ? a_in.contiguous() : a_in;
  if (beta == 0) {
    at::mm_out(out, a, b);
  } else {
    out.addmm_(a, b, beta);
  }
}

Tensor gru_input_projection(const Tensor& x, bool batch_major, const Tensor& weight_ih,
                            const std::optional<Tensor>& bias_ih, const Matmul& matmul) {
  const int64_t T = x.size(0), N = x.size(1), G = weight_ih.size(0);
  Tensor gi = alloc_steps(batch_major, T, N, G, x.options());
  Tensor gi2 = flat(gi, batch_major);
  if (bias_ih.has_value()) gi2.copy_(bias_ih->unsqueeze(0).expand_as(gi2));
  matmul(gi2, flat(x, batch_major), weight_ih.t(), bias_ih.has_value() ? 1.0 : 0.0);
  return gi;
}

std::vector<int64_t> active_prefix(const std::optional<Tensor>& lengths, int64_t T, int64_t N) {
  if (!lengths.has_value()) return {};
  const Tensor lc = lengths->contiguous();
  const int64_t* len = lc.data_ptr<int64_t>();
  bool sorted = true;
  for (int64_t i = 0; i < N; ++i) {
    TORCH_CHECK(len[i] >= 0 && len[i] <= T, "lengths must lie in [0, T] = [0, ", T,
                "], got lengths[", i, "] = ", len[i]);
    if (i > 0 && len[i] > len[i - 1]) sorted = false;
  }
  if (!sorted) return {};
  std::vector<int64_t> rows(T, 0);
  int64_t count = N;
  for (int64_t t = 0; t < T; ++t) {
    while (count > 0 && len[count - 1] <= t) --count;
    rows[t] = count;
  }
  return rows;
}

Steps steps_of(const Tensor& input, int64_t H) {
  Steps s;
  s.T = input.size(0);
  s.N = input.size(1);
  s.H = H;
  s.x = steps_layout(input);
  s.batch_major = is_batch_major(s.x);
  return s;
}

ForwardSteps forward_steps(const Tensor& input, const Tensor& hx, int64_t H, int64_t saved_width,
                           bool need_workspace, const std::optional<Tensor>& lengths,
                           const Tensor& output) {
  ForwardSteps s;
  static_cast<Steps&>(s) = steps_of(input, H);
  const auto opts = input.options();
  s.output = output.defined() ? output : alloc_steps(s.batch_major, s.T, s.N, H, opts);
  s.workspace = need_workspace ? alloc_steps(s.batch_major, s.T, s.N, saved_width, opts)
                               : at::empty({0}, opts);
  s.h = hx.clone(at::MemoryFormat::Contiguous);
  if (lengths.has_value()) s.len = lengths->contiguous();
  return s;
}

GruForwardState gru_forward_state(const Tensor& input, const Tensor& hx, const Tensor& weight_ih,
                                  const Tensor& weight_hh, const std::optional<Tensor>& bias_ih,
                                  const std::optional<Tensor>& bias_hh,
                                  const std::optional<Tensor>& lengths, bool need_workspace,
                                  const Matmul& matmul, const Tensor& output) {
  check_gru_forward_args(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, lengths);
  const int64_t H = weight_hh.size(1);
  GruForwardState st;
  static_cast<ForwardSteps&>(st) =
      forward_steps(input, hx, H, kSavedGates * H, need_workspace, lengths, output);
  if (st.N == 0) return st;
  st.gi = gru_input_projection(st.x, st.batch_major, weight_ih, bias_ih, matmul);
  st.b_hh = bias_hh.has_value() ? bias_hh->contiguous() : at::zeros({3 * H}, input.options());
  GruForwardPointwise& p = st.base;
  p = GruForwardPointwise{};
  st.fill(p);
  p.b_hh = st.b_hh.data_ptr();
  p.gi_sn = st.gi.stride(1);
  p.dtype = input.scalar_type();
  return st;
}

void check_like_forward(const std::optional<Tensor>& reverse, const std::optional<Tensor>& forward,
                        const char* name) {
  if (!reverse.has_value() || !forward.has_value()) return;
  TORCH_CHECK(reverse->sizes() == forward->sizes(), name, " must have the shape of its forward ",
              "direction's counterpart, ", forward->sizes(), ", got ", reverse->sizes());
  TORCH_CHECK(
      reverse->scalar_type() == forward->scalar_type() && reverse->device() == forward->device(),
      name, " must be ", forward->scalar_type(), " on ", forward->device(),
      " as its forward direction's counterpart, got ", reverse->scalar_type(), " on ",
      reverse->device());
}

Tensor bidirectional_output(const Tensor& input, const Tensor& hx, const Tensor& weight_ih,
                            const Tensor& weight_hh, const std::optional<Tensor>& bias_ih,
                            const std::optional<Tensor>& bias_hh, const Tensor& weight_ih_reverse,
                            const Tensor& weight_hh_reverse,
                            const std::optional<Tensor>& bias_ih_reverse,
                            const std::optional<Tensor>& bias_hh_reverse) {
  FUSEDGRU_CHECK_DIM(input, 3);
  FUSEDGRU_CHECK_DIM(weight_hh, 2);
  const int64_t N = input.size(1), H = weight_hh.size(1);
  FUSEDGRU_CHECK_SHAPE(hx, 2, N, H);
  check_like_forward(weight_ih_reverse, weight_ih, "weight_ih_reverse");
  check_like_forward(weight_hh_reverse, weight_hh, "weight_hh_reverse");
  check_like_forward(bias_ih_reverse, bias_ih, "bias_ih_reverse");
  check_like_forward(bias_hh_reverse, bias_hh, "bias_hh_reverse");
  const Tensor x = steps_layout(input);
  return alloc_steps(is_batch_major(x), x.size(0), x.size(1), 2 * H, input.options());
}

void check_bidirectional_backward_args(const Tensor& grad_output, const Tensor& grad_h_n,
                                       const std::optional<Tensor>& grad_workspace,
                                       const std::optional<Tensor>& grad_workspace_reverse,
                                       const Tensor& input, const Tensor& hx,
                                       const Tensor& weight_ih, const Tensor& weight_hh,
                                       const Tensor& weight_ih_reverse,
                                       const Tensor& weight_hh_reverse, const Tensor& output,
                                       const Tensor& workspace, const Tensor& workspace_reverse) {
  FUSEDGRU_CHECK_DIM(input, 3);
  FUSEDGRU_CHECK_DIM(weight_hh, 2);
  const int64_t T = input.size(0), N = input.size(1), H = weight_hh.size(1);
  FUSEDGRU_CHECK_SHAPE(grad_output, T, N, 2 * H);
  FUSEDGRU_CHECK_SHAPE(output, T, N, 2 * H);
  FUSEDGRU_CHECK_SHAPE(grad_h_n, 2, N, H);
  FUSEDGRU_CHECK_SHAPE(hx, 2, N, H);
  check_like_forward(weight_ih_reverse, weight_ih, "weight_ih_reverse");
  check_like_forward(weight_hh_reverse, weight_hh, "weight_hh_reverse");
  check_like_forward(workspace_reverse, workspace, "workspace_reverse");
  check_like_forward(grad_workspace_reverse, grad_workspace, "grad_workspace_reverse");
}

GruBidirectionalGrads bidirectional_grads(GruGrads forward, GruGrads reverse,
                                          bool need_input_grad) {
  auto& [gi0, gh0, gw_ih0, gw_hh0, gb_ih0, gb_hh0] = forward;
  auto& [gi1, gh1, gw_ih1, gw_hh1, gb_ih1, gb_hh1] = reverse;
  Tensor grad_input = need_input_grad ? gi0.add_(gi1) : gi0;
  return {grad_input, at::stack({gh0, gh1}), gw_ih0, gw_hh0, gb_ih0, gb_hh0, gw_ih1, gw_hh1, gb_ih1,
          gb_hh1};
}

GruForwardPointwise GruForwardState::at_step(int64_t t) const {
  GruForwardPointwise p = ForwardSteps::at_step(base, t);
  p.gi = step_ptr(gi, t);
  return p;
}

BackwardSteps backward_steps(const Tensor& input, int64_t H, const Tensor& grad_h_n,
                             const Tensor& workspace) {
  BackwardSteps s;
  static_cast<Steps&>(s) = steps_of(input, H);
  s.dh = grad_h_n.clone(at::MemoryFormat::Contiguous);
  s.ws = workspace;
  return s;
}

void BackwardSteps::read(const Tensor& grad_output, const Tensor& output, const Tensor& hx,
                         const std::optional<Tensor>& lengths) {
  go = last_dim_contiguous(grad_output);
  out = last_dim_contiguous(output);
  ws = last_dim_contiguous(ws);
  h0 = hx.contiguous();
  if (lengths.has_value()) len = lengths->contiguous();
}

GruBackwardState gru_backward_state(const Tensor& grad_output, const Tensor& grad_h_n,
                                    const std::optional<Tensor>& grad_workspace,
                                    const Tensor& input, const Tensor& hx, const Tensor& weight_ih,
                                    const Tensor& weight_hh, const std::optional<Tensor>& lengths,
                                    const Tensor& output, const Tensor& workspace, bool reverse,
                                    bool need_weight_grad) {
  check_gru_backward_args(grad_output, grad_h_n, grad_workspace, input, hx, weight_ih, weight_hh,
                          lengths, output, workspace);
  GruBackwardState st;
  static_cast<BackwardSteps&>(st) = backward_steps(input, weight_hh.size(1), grad_h_n, workspace);
  const int64_t T = st.T, N = st.N, H = st.H;
  const auto opts = st.x.options();
  st.dgh = alloc_steps(st.batch_major, T, N, 3 * H, opts);
  st.dgin = alloc_steps(st.batch_major, T, N, H, opts);
  // h_{t-1} per step for the W_hh gradient (the double-backward path always fills it).
  if (need_weight_grad || grad_workspace.has_value()) {
    st.hprev = alloc_steps(st.batch_major, T, N, H, opts);
  }
  if (N == 0) return st;
  st.read(grad_output, output, hx, lengths);
  if (grad_workspace.has_value()) st.gws = last_dim_contiguous(*grad_workspace);
  GruBackwardPointwise& p = st.base;
  p = GruBackwardPointwise{};
  st.fill(p, reverse);
  p.gws_sn = st.gws.defined() ? st.gws.stride(1) : 0;
  p.dg_sn = st.dgh.stride(1);
  p.dgin_sn = st.dgin.stride(1);
  p.dtype = st.x.scalar_type();
  return st;
}

GruBackwardPointwise GruBackwardState::at_step(int64_t t) const {
  GruBackwardPointwise p = base;
  p.t = t;
  p.grad_out = step_ptr(go, t);
  p.grad_ws = gws.defined() ? step_ptr(gws, t) : nullptr;
  p.ws = step_ptr(ws, t);
  p.dgh = step_ptr(dgh, t);
  p.dgin = step_ptr(dgin, t);
  p.hprev = hprev.defined() ? step_ptr(hprev, t) : nullptr;
  return p;
}

Tensor steps_without_padding(const Tensor& x, const Tensor& len) {
  if (!len.defined() || x.numel() == 0) return x;
  const int64_t T = x.size(0);
  // [T, N]: step t of row n is padding; lengths clamped into [0, T] as the kernels read them.
  const Tensor pad = at::arange(T, len.options()).unsqueeze(1) >= len.clamp(0, T).unsqueeze(0);
  Tensor kept = x.clone();  // x's strides: the GEMMs read it flat in the same layout
  kept.masked_fill_(pad.unsqueeze(2), 0);
  return kept;
}

Tensor weight_hh_grad(const Tensor& dg, const Tensor& hprev, bool batch_major,
                      const BackwardProducts& shape, const Matmul& matmul) {
  Tensor out = at::empty({dg.size(2), hprev.size(2)}, dg.options());
  if (!shape.as_nn_gru) {
    matmul(out, flat(dg, batch_major).t(), flat(hprev, batch_major), 0.0);
    return out;
  }
  out.zero_();
  for (int64_t t = 0; t < dg.size(0); ++t) {
    const int64_t rows = shape.step_rows.empty() ? dg.size(1) : shape.step_rows[t];
    if (rows > 0)
      matmul(out, dg.select(0, t).narrow(0, 0, rows).t(), hprev.select(0, t).narrow(0, 0, rows),
             1.0);
  }
  return out;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> gru_backward_gemms(
    const Tensor& x, bool batch_major, const Tensor& len, const Tensor& weight_ih,
    const Tensor& dgh, const Tensor& dgin, const Tensor& hprev, bool has_bias, bool need_input_grad,
    bool need_weight_grad, const Matmul& matmul, const BackwardProducts& shape) {
  const int64_t T = x.size(0), N = x.size(1), C = x.size(2), H = dgin.size(2), G = 3 * H;
  const auto opts = x.options();
  // Each gradient not asked for is its own [0] tensor (outputs must not alias).
  const auto none = [&] { return at::empty({0}, opts); };
  const Tensor dgh2 = flat(dgh, batch_major);
  const Tensor dgin2 = flat(dgin, batch_major);
  const Tensor dg_rz = dgh2.narrow(1, 0, 2 * H);  // r and z parts are the same for W_ih and W_hh
  // dG_i = (dgh_r, dgh_z, dgin) in one tensor where the products must be nn.GRU's, one over all
  // 3H gates each (its rows in the steps' storage order, as dgh2's).
  const Tensor dgi2 = shape.as_nn_gru && (need_input_grad || need_weight_grad)
                          ? at::cat({dg_rz, dgin2}, 1)
                          : Tensor();

  Tensor grad_input = none();
  if (need_input_grad) {
    grad_input = alloc_steps(batch_major, T, N, C, opts);
    Tensor gx = flat(grad_input, batch_major);
    if (dgi2.defined()) {
      matmul(gx, dgi2, weight_ih, 0.0);
    } else {
      matmul(gx, dg_rz, weight_ih.narrow(0, 0, 2 * H), 0.0);
      matmul(gx, dgin2, weight_ih.narrow(0, 2 * H, H), 1.0);
    }
  }
  Tensor gw_ih = none(), gw_hh = none(), gb_ih = none(), gb_hh = none();
  if (need_weight_grad) {
    const Tensor x2 = flat(steps_without_padding(x, len), batch_major);
    gw_ih = at::empty({G, C}, opts);
    if (dgi2.defined()) {
      matmul(gw_ih, dgi2.t(), x2, 0.0);
    } else {
      Tensor gw_rz = gw_ih.narrow(0, 0, 2 * H), gw_n = gw_ih.narrow(0, 2 * H, H);
      matmul(gw_rz, dg_rz.t(), x2, 0.0);
      matmul(gw_n, dgin2.t(), x2, 0.0);
    }
    gw_hh = weight_hh_grad(dgh, hprev, batch_major, shape, matmul);
    if (has_bias) {  // reduced in fp32 (fp64 for double), then cast to the weights' dtype
      const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
      gb_hh = dgh2.sum(0, /*keepdim=*/false, acc).to(x.scalar_type());
      gb_ih = at::cat(
          {gb_hh.narrow(0, 0, 2 * H), dgin2.sum(0, /*keepdim=*/false, acc).to(x.scalar_type())});
    }
  }
  return {grad_input, gw_ih, gw_hh, gb_ih, gb_hh};
}

}  // namespace fusedgru
