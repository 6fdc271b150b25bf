// Named argument checks with messages that say what is wrong. All raise RuntimeError unless the
// macro says otherwise (TORCH_CHECK_VALUE: ValueError, TORCH_CHECK_TYPE: TypeError).
#pragma once

#include <ATen/ATen.h>

#define FUSEDGRU_CHECK_DIM(x, d)                                                                \
  TORCH_CHECK((x).dim() == (d), #x " must have " #d " dimensions, got ", (x).dim(), " (shape ", \
              (x).sizes(), ")")

// CHECK_SHAPE(w, G, C) -> "w must have shape (G, C) = [6, 4], got [6, 5]"
#define FUSEDGRU_CHECK_SHAPE(x, ...)                                                       \
  TORCH_CHECK((x).sizes() == at::IntArrayRef({__VA_ARGS__}),                               \
              #x " must have shape (" #__VA_ARGS__ ") = ", at::IntArrayRef({__VA_ARGS__}), \
              ", got ", (x).sizes())

#define FUSEDGRU_CHECK_SAME_DTYPE(a, b)                                                    \
  TORCH_CHECK((a).scalar_type() == (b).scalar_type(),                                      \
              #a " and " #b " must have the same dtype, got ", (a).scalar_type(), " and ", \
              (b).scalar_type())

#define FUSEDGRU_CHECK_SAME_DEVICE(a, b)                                                       \
  TORCH_CHECK((a).device() == (b).device(), #a " and " #b " must be on the same device, got ", \
              (a).device(), " and ", (b).device())

#define FUSEDGRU_CHECK_FLOATING(x)                                                   \
  TORCH_CHECK_TYPE(at::isFloatingType((x).scalar_type()),                            \
                   #x                                                                \
                   " must be a floating point tensor (float64, float32, float16 or " \
                   "bfloat16), got ",                                                \
                   (x).scalar_type())
