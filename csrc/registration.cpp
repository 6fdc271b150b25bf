// Op schemas of the fusedgru library, declared once. Device kernels register themselves in
// cpu/*.cpp and cuda/*.cu (TORCH_LIBRARY_IMPL); fake kernels and autograd live in
// fusedgru/_ops.py. Shape legend: fusedgru.h.
#include <Python.h>
#include <torch/library.h>

// `import fusedgru._C` loads this library, which runs the static registrations below. The module
// itself is empty, so the extension builds against the stable (limited) Python API.
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(fusedgru, m) {
  // One GRU layer in one direction over a padded sequence.
  //   input [T, N, C] (any strides), hx [N, H], weight_ih [3H, C], weight_hh [3H, H],
  //   bias_ih/bias_hh [3H], lengths [N] int64 on input's device (row i runs steps t < lengths[i]).
  //   -> output [T, N, H] (zeros past each length), h_n [N, H],
  //      workspace [T, N, 4H] saved activations for backward ([0] when need_workspace=False).
  m.def(
      "gru_forward(Tensor input, Tensor hx, Tensor weight_ih, Tensor weight_hh, "
      "Tensor? bias_ih, Tensor? bias_hh, Tensor? lengths, bool reverse, bool need_workspace) "
      "-> (Tensor output, Tensor h_n, Tensor workspace)");
  // Both directions of a bidirectional layer in one call (on CUDA one persistent launch, half
  // the grid per direction, where both fit): the *_reverse weights are the reverse direction's.
  //   hx [2, N, H] -> output [T, N, 2H] (forward | reverse, nn.GRU's layout), h_n [2, N, H], and
  //   each direction's workspace as gru_forward's.
  m.def(
      "gru_forward_bidirectional(Tensor input, Tensor hx, Tensor weight_ih, Tensor weight_hh, "
      "Tensor? bias_ih, Tensor? bias_hh, Tensor weight_ih_reverse, Tensor weight_hh_reverse, "
      "Tensor? bias_ih_reverse, Tensor? bias_hh_reverse, Tensor? lengths, bool need_workspace) "
      "-> (Tensor output, Tensor h_n, Tensor workspace, Tensor workspace_reverse)");
  // A whole GRU, layers and directions (nn.GRU's forward without dropout or lengths), composed
  // of the two ops above (gru_layers.cpp). input [T, N, C] ([N, T, C] when batch_first) or
  // unbatched [T, C]; hx [L D, N, H] ([L D, H]); params per layer and direction (weight_ih,
  // weight_hh[, bias_ih, bias_hh]) -> output [T, N, D H] (in input's layout), h_n like hx.
  m.def(
      "gru(Tensor input, Tensor hx, Tensor[] params, bool has_biases, int num_layers, "
      "bool bidirectional, bool batch_first) -> (Tensor output, Tensor h_n)");
  // Gradients of gru_forward_bidirectional (on CUDA one persistent launch for both directions
  // where both fit): grad_output/output [T, N, 2H], grad_h_n/hx [2, N, H]; grad_input is the sum
  // of both directions', grad_hx [2, N, H], then each direction's weight and bias gradients as
  // gru_backward's (empty [0] where not asked for).
  m.def(
      "gru_backward_bidirectional(Tensor grad_output, Tensor grad_h_n, Tensor? grad_workspace, "
      "Tensor? grad_workspace_reverse, Tensor input, Tensor hx, Tensor weight_ih, "
      "Tensor weight_hh, Tensor weight_ih_reverse, Tensor weight_hh_reverse, Tensor? lengths, "
      "Tensor output, Tensor workspace, Tensor workspace_reverse, bool has_bias, "
      "bool need_input_grad, bool need_weight_grad) "
      "-> (Tensor grad_input, Tensor grad_hx, Tensor grad_weight_ih, Tensor grad_weight_hh, "
      "Tensor grad_bias_ih, Tensor grad_bias_hh, Tensor grad_weight_ih_reverse, "
      "Tensor grad_weight_hh_reverse, Tensor grad_bias_ih_reverse, Tensor grad_bias_hh_reverse)");
  // Gradients of gru_forward, given those of its outputs (grad_workspace [T, N, 4H] or none: it
  // is nonzero only when differentiating twice). Returns (grad_input, grad_hx, grad_weight_ih,
  // grad_weight_hh, grad_bias_ih, grad_bias_hh); what was not asked for (need_* flags,
  // has_bias) is an empty [0].
  m.def(
      "gru_backward(Tensor grad_output, Tensor grad_h_n, Tensor? grad_workspace, Tensor input, "
      "Tensor hx, "
      "Tensor weight_ih, Tensor weight_hh, Tensor? lengths, Tensor output, Tensor workspace, "
      "bool reverse, bool has_bias, bool need_input_grad, bool need_weight_grad) "
      "-> (Tensor grad_input, Tensor grad_hx, Tensor grad_weight_ih, Tensor grad_weight_hh, "
      "Tensor grad_bias_ih, Tensor grad_bias_hh)");

  // Layer-normalized GRU layer (cpu/ln_gru.cpp): LN over the 3H gate pre-activations of W_ih x
  // and of W_hh h separately (gains/biases [3H]; the LN biases take the place of b_ih, b_hh).
  // -> output [T, N, H], h_n [N, H], workspace [T, N, 9H + 2] ([0] without need_workspace).
  m.def(
      "ln_gru_forward(Tensor input, Tensor hx, Tensor weight_ih, Tensor weight_hh, "
      "Tensor ln_ih_weight, Tensor ln_ih_bias, Tensor ln_hh_weight, Tensor ln_hh_bias, "
      "Tensor? lengths, bool reverse, float eps, bool need_workspace) "
      "-> (Tensor output, Tensor h_n, Tensor workspace)");
  m.def(
      "ln_gru_backward(Tensor grad_output, Tensor grad_h_n, Tensor input, Tensor hx, "
      "Tensor weight_ih, Tensor weight_hh, Tensor ln_ih_weight, Tensor ln_hh_weight, "
      "Tensor ln_hh_bias, Tensor? lengths, Tensor output, Tensor workspace, bool reverse, "
      "bool need_input_grad, bool need_weight_grad) "
      "-> (Tensor grad_input, Tensor grad_hx, Tensor grad_weight_ih, Tensor grad_weight_hh, "
      "Tensor grad_ln_ih_weight, Tensor grad_ln_ih_bias, Tensor grad_ln_hh_weight, "
      "Tensor grad_ln_hh_bias)");

  // One GRU step (torch.gru_cell): input [N, C], hx [N, H] -> h' [N, H]. On CUDA one fused launch
  // for small batches (streaming inference).
  m.def(
      "gru_cell(Tensor input, Tensor hx, Tensor weight_ih, Tensor weight_hh, Tensor? bias_ih, "
      "Tensor? bias_hh) -> Tensor");

  // Causal depthwise conv1d (causal_conv1d.h). x [N, C, L] (any strides; channel-last views read
  // in place), weight [C, W], bias [C], initial_state [N, C, (W-1)*dilation];
  // activation 0 none, 1 silu, 2 relu. -> y [N, C, L] in the layout of x.
  m.def(
      "causal_conv1d_fwd(Tensor x, Tensor weight, Tensor? bias, Tensor? initial_state, "
      "int dilation, int activation) -> Tensor");
  // -> (grad_x, grad_weight [C, W], grad_bias [C] or [0], grad_initial_state or [0]).
  m.def(
      "causal_conv1d_bwd(Tensor grad_y, Tensor x, Tensor weight, Tensor? bias, "
      "Tensor? initial_state, int dilation, int activation) "
      "-> (Tensor grad_x, Tensor grad_weight, Tensor grad_bias, Tensor grad_initial_state)");
  // One streaming step: x [N, C] -> y [N, C]; conv_state [N, C, (W-1)*dilation] is shifted by
  // one and x appended, in place.
  m.def(
      "causal_conv1d_update(Tensor x, Tensor(a!) conv_state, Tensor weight, Tensor? bias, "
      "int dilation, int activation) -> Tensor");
}
