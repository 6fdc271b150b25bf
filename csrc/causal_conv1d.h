// fusedgru: causal depthwise conv1d, shared declarations.
//
// Shape legend: N batch, C channels, L length, W kernel width, d dilation, S = (W-1)*d history.
//   y[n, c, t] = act(bias[c] + sum_k weight[c, k] * x[n, c, t - (W-1-k)*d])
// where x at negative times comes from initial_state[n, c, S + t] (oldest first) or is zero.
// act: 0 none, 1 silu, 2 relu.
//
// x may have any strides. It is read in place when its time dim (NCL) or its channel dim (the
// channel-last view of an [N, L, C] tensor) is contiguous, and copied otherwise. y and grad_x get
// the same layout: NCL contiguous, or channel-last ([N, L, C] storage viewed as [N, C, L]).
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <cstdint>
#include <optional>
#include <tuple>

#include "host_device.h"

namespace fusedgru {

enum Activation : int64_t { kActNone = 0, kActSilu = 1, kActRelu = 2 };

struct CausalConvParams {
  const void* x;  // [N, C, L] strides (x_sn, x_sc, x_sl); x_sl == 1 or x_sc == 1
  int64_t x_sn, x_sc, x_sl;
  const void* init;  // [N, C, S] strides (i_sn, i_sc, i_ss), or nullptr (zeros)
  int64_t i_sn, i_sc, i_ss;
  const void* weight;  // [C, W] contiguous
  const void* bias;    // [C] or nullptr
  void* y;             // [N, C, L] strides (y_sn, y_sc, y_sl), same layout as x
  int64_t y_sn, y_sc, y_sl;
  int64_t N, C, L, W, dilation;
  int64_t activation;
  bool channels_last;
  at::ScalarType dtype;
};

struct CausalConvBackwardParams {
  CausalConvParams fwd;  // x, init, weight, bias as in the forward (y unused)
  const void* grad_y;    // [N, C, L] strides (gy_sn, gy_sc, gy_sl)
  int64_t gy_sn, gy_sc, gy_sl;
  void* grad_x;  // [N, C, L] strides (gx_sn, gx_sc, gx_sl)
  int64_t gx_sn, gx_sc, gx_sl;
  void* grad_init;    // [N, C, S] contiguous, or nullptr
  void* grad_weight;  // [C, W] accumulator in the math type (fp32; fp64 for double)
  void* grad_bias;    // [C] accumulator in the math type, or nullptr
};

// Host-side checks and layout choice shared by the devices (conv_common.cpp).
void check_causal_conv_args(const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias,
                            const std::optional<at::Tensor>& initial_state, int64_t dilation,
                            int64_t activation);
// x [N, C], conv_state [N, C, S] (any strides, updated in place).
void check_causal_conv_update_args(const at::Tensor& x, const at::Tensor& conv_state,
                                   const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                   int64_t dilation, int64_t activation);
// x itself when its time or channel dim is contiguous, else a contiguous copy.
at::Tensor conv_input_layout(const at::Tensor& x);
bool conv_channels_last(const at::Tensor& x);
// Empty [N, C, L] in the layout of x (after conv_input_layout).
at::Tensor conv_empty_like(const at::Tensor& x);
// g ([N, C, L]) with its time dim (channels_last false) or channel dim (true) contiguous, like
// x after conv_input_layout; g itself when it already is.
at::Tensor conv_like_layout(const at::Tensor& g, bool channels_last);
CausalConvParams conv_params(const at::Tensor& x, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias,
                             const std::optional<at::Tensor>& initial_state, int64_t dilation,
                             int64_t activation);

// The device-independent part of the forward: the checks, x in its read layout, weight and bias
// contiguous, y allocated in x's layout, and the params (y included). The device runs its
// kernels on p unless y is empty.
struct CausalConvForward {
  at::Tensor x, w, y;
  std::optional<at::Tensor> b;
  CausalConvParams p;
};
CausalConvForward conv_forward(const at::Tensor& x, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias,
                               const std::optional<at::Tensor>& initial_state, int64_t dilation,
                               int64_t activation);

// The streaming update (causal_conv1d_update): one new time step per call against a rolling
// state of the last S inputs per row, updated in place.
struct CausalConvUpdateParams {
  const void* x;  // [N, C] strides (x_sn, x_sc): the new step
  int64_t x_sn, x_sc;
  void* state;  // [N, C, S] strides (s_sn, s_sc, s_ss), oldest first
  int64_t s_sn, s_sc, s_ss;
  const void* weight;  // [C, W] contiguous
  const void* bias;    // [C] or nullptr
  void* y;             // [N, C] contiguous
  int64_t N, C, W, dilation;
  int64_t activation;
};

// The device-independent part of the update: the checks, weight and bias contiguous, x, weight
// and bias copied when they live in conv_state's storage, y allocated and the params.
// The device runs its kernel on p unless y is empty.
struct CausalConvUpdate {
  at::Tensor x, w, y;
  std::optional<at::Tensor> b;
  CausalConvUpdateParams p;
};
CausalConvUpdate conv_update(const at::Tensor& x, at::Tensor& conv_state, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias, int64_t dilation,
                             int64_t activation);

// Row (n, c) of the update, the arithmetic both devices run: returns the pre-activation
// bias[c] + sum_k weight[c, k] * [state, x][k] in the math type, and shifts the row's state left
// by one step, appending x.
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
FUSEDGRU_HOST_DEVICE acc_t conv_update_row(const CausalConvUpdateParams& p, int64_t n, int64_t c) {
  const auto* bias = static_cast<const scalar_t*>(p.bias);
  const auto* w = static_cast<const scalar_t*>(p.weight) + c * p.W;
  const scalar_t x = static_cast<const scalar_t*>(p.x)[n * p.x_sn + c * p.x_sc];
  scalar_t* state = static_cast<scalar_t*>(p.state) + n * p.s_sn + c * p.s_sc;
  const int64_t W = p.W, S = (W - 1) * p.dilation, ss = p.s_ss;
  acc_t acc = bias != nullptr ? acc_t(bias[c]) : acc_t(0);
  for (int64_t k = 0; k < W; ++k) {
    const int64_t off = (W - 1 - k) * p.dilation;
    acc += acc_t(w[k]) * acc_t(off == 0 ? x : state[(S - off) * ss]);
  }
  for (int64_t s = 0; s + 1 < S; ++s) state[s * ss] = state[(s + 1) * ss];
  if (S > 0) state[(S - 1) * ss] = x;
  return acc;
}

// Backward: the forward's checks plus grad_y's shape, dtype and device.
void check_causal_conv_bwd_args(const at::Tensor& grad_y, const at::Tensor& x,
                                const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                const std::optional<at::Tensor>& initial_state, int64_t dilation,
                                int64_t activation);
// The device-independent part of the backward: the checks, x and grad_y in one layout, weight
// and bias contiguous, the gradients allocated (grad_init/grad_bias empty [0] tensors when there
// is no initial state / bias; weight and bias gradients accumulate in the math type: fp32, fp64
// for double) and the params. The device runs its kernels on q unless x is empty.
struct CausalConvBackward {
  at::Tensor x, gy, w, gx, g_init, gw, gb;
  std::optional<at::Tensor> b;
  bool channels_last;
  at::ScalarType acc_type;
  CausalConvBackwardParams q;
  // (grad_x, grad_weight, grad_bias, grad_initial_state), as the backward op returns them.
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> result() const;
};
CausalConvBackward conv_backward(const at::Tensor& grad_y, const at::Tensor& x,
                                 const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                 const std::optional<at::Tensor>& initial_state, int64_t dilation,
                                 int64_t activation);

}  // namespace fusedgru
