// fusedgru::gru, a whole GRU (layers and directions) in one call, composed of the per-layer ops
// gru_forward and gru_forward_bidirectional through the dispatcher (CompositeImplicitAutograd:
// every device that implements those ops runs it, autograd and torch.compile see the per-layer
// ops). What it saves against calling those ops from Python is the per-layer Python: on a
// streaming step (T = 1) of a small GRU that is more than the step itself (benchmarks/NOTES.md).
// Below autograd the CPU runs its own kernel for the op (cpu/gru.cpp), which takes a single step
// itself and passes every other call here.
// Shape legend: fusedgru.h; L layers, D directions.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "checks.h"

namespace fusedgru {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// The layers in order, each layer's output the next one's input. input [T, N, C] ([N, T, C] when
// batch_first) or unbatched [T, C]; hx [L D, N, H] ([L D, H] unbatched); params per layer and
// direction (weight_ih, weight_hh[, bias_ih, bias_hh]), nn.GRU's _flat_weights order.
// -> output [T, N, D H] (batch_first: [N, T, D H]; unbatched [T, D H]), h_n like hx.
std::tuple<Tensor, Tensor> gru_layers(const Tensor& input, const Tensor& hx, at::TensorList params,
                                      bool has_biases, int64_t num_layers, bool bidirectional,
                                      bool batch_first) {
  TORCH_CHECK(input.dim() == 2 || input.dim() == 3,
              "input must have 3 dimensions (2 unbatched), got shape ", input.sizes());
  TORCH_CHECK(hx.dim() == input.dim(), "hx must have ", input.dim(), " dimensions for an input",
              " of ", input.dim(), ", got shape ", hx.sizes());
  TORCH_CHECK(num_layers >= 1, "num_layers must be at least 1, got ", num_layers);
  const int64_t D = bidirectional ? 2 : 1, per = has_biases ? 4 : 2;
  TORCH_CHECK(static_cast<int64_t>(params.size()) == num_layers * D * per, "expected ",
              num_layers * D * per, " parameters for num_layers=", num_layers,
              ", bidirectional=", bidirectional, ", has_biases=", has_biases, ", got ",
              params.size());
  const bool unbatched = input.dim() == 2;
  Tensor x = unbatched ? input.unsqueeze(1) : batch_first ? input.transpose(0, 1) : input;
  const Tensor h0 = unbatched ? hx.unsqueeze(1) : hx;
  FUSEDGRU_CHECK_DIM(params[1], 2);
  const int64_t H = params[1].size(1);
  TORCH_CHECK(h0.size(0) == num_layers * D && h0.size(2) == H && h0.size(1) == x.size(1),
              "hx must have shape (num_layers * D, N, H) = (", num_layers * D, ", ", x.size(1),
              ", ", H, "), got ", hx.sizes());
  // The per-layer ops save their activations only where autograd may ask for them.
  bool need_workspace = false;
  if (at::GradMode::is_enabled()) {
    need_workspace = input.requires_grad() || hx.requires_grad();
    for (const Tensor& p : params) need_workspace = need_workspace || p.requires_grad();
  }
  static const auto forward =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fusedgru::gru_forward", "")
          .typed<std::tuple<Tensor, Tensor, Tensor>(
              const Tensor&, const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
              const OptTensor&, const OptTensor&, bool, bool)>();
  static const auto both = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("fusedgru::gru_forward_bidirectional", "")
                               .typed<std::tuple<Tensor, Tensor, Tensor, Tensor>(
                                   const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                   const OptTensor&, const OptTensor&, const Tensor&, const Tensor&,
                                   const OptTensor&, const OptTensor&, const OptTensor&, bool)>();
  std::vector<Tensor> h_n;
  h_n.reserve(num_layers);
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    const int64_t k = layer * D;
    const auto weight = [&](int64_t d, int64_t i) -> const Tensor& {
      return params[(k + d) * per + i];
    };
    const auto bias = [&](int64_t d, int64_t i) -> OptTensor {
      return has_biases ? OptTensor(weight(d, 2 + i)) : std::nullopt;
    };
    if (bidirectional) {
      auto [out, h, ws, ws_reverse] = both.call(
          x, h0.narrow(0, k, 2), weight(0, 0), weight(0, 1), bias(0, 0), bias(0, 1), weight(1, 0),
          weight(1, 1), bias(1, 0), bias(1, 1), std::nullopt, need_workspace);
      x = out;
      h_n.push_back(h);
    } else {
      auto [out, h, ws] = forward.call(x, h0.select(0, k), weight(0, 0), weight(0, 1), bias(0, 0),
                                       bias(0, 1), std::nullopt, false, need_workspace);
      x = out;
      h_n.push_back(h.unsqueeze(0));
    }
  }
  Tensor h_last = num_layers == 1 ? h_n[0] : at::cat(h_n, 0);
  if (unbatched) return {x.squeeze(1), h_last.squeeze(1)};
  return {batch_first ? x.transpose(0, 1) : x, h_last};
}

// Every device runs the composition; the CPU's kernel (cpu/gru.cpp) takes single inference steps
// itself and passes the rest here. A backend kernel stops the dispatcher from using the
// composite for that backend's autograd key, so it is registered for autograd explicitly too.
TORCH_LIBRARY_IMPL(fusedgru, CompositeImplicitAutograd, m) { m.impl("gru", &gru_layers); }
TORCH_LIBRARY_IMPL(fusedgru, Autograd, m) { m.impl("gru", &gru_layers); }

}  // namespace fusedgru
