// Branch-free sigmoid and tanh that compilers auto-vectorize (no libm calls, selects instead of
// branches; build with -fno-trapping-math). float: Cephes-style polynomials, within 2 ulp of
// libm over the whole range, with libm's values at the extremes (exp overflows to inf and
// underflows to 0, so sigmoid(+-inf) = 1 / 0 and tanh(+-inf) = +-1 exactly), NaN propagates.
// double: libm (the float64 path serves gradcheck). Always inlined: called out of line from a
// cloned loop (FUSEDGRU_CLONES) they run as compiled for the baseline target, without the FMA
// contractions of the AVX-512 and AVX2 clones, so a call site that GCC chose not to inline gave
// other bits (a cell step's row alone against the same row among 4, twenty-third session).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "isa.h"

namespace fusedgru {
namespace cpu {

// How the element loops see a dtype: the type they read and write (storage) and conversions
// to and from the math type by value. c10::BFloat16 and c10::Half are structs, and GCC does not
// vectorize a loop that copies structs ("more than one data ref"), so their loops take the
// 16-bit patterns (raw() casts the pointers) and convert in registers: bf16 widens by a shift
// and narrows by branch-free round-to-nearest-even (NaN stays a quiet NaN), as c10 does.
// (Helpers taking pointers would not do: the vectorizer loses the callers' __restrict through
// them.)
template <typename T>
struct Elem {
  using storage = T;
  static T load(T v) { return v; }
  static T store(T v) { return v; }
};

template <>
struct Elem<c10::BFloat16> {
  using storage = uint16_t;
  static float load(uint16_t b) {
    const uint32_t bits = static_cast<uint32_t>(b) << 16;
    float v;
    std::memcpy(&v, &bits, sizeof(v));
    return v;
  }
  static uint16_t store(float v) {
    uint32_t u;
    std::memcpy(&u, &v, sizeof(u));
    const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    return static_cast<uint16_t>((u & 0x7FFFFFFFu) > 0x7F800000u ? 0x7FC0u : rounded);
  }
};

template <>
struct Elem<c10::Half> {
  using storage = uint16_t;
  static float load(uint16_t b) { return c10::detail::fp16_ieee_to_fp32_value(b); }
  static uint16_t store(float v) { return c10::detail::fp16_ieee_from_fp32_value(v); }
};

template <typename T>
using storage_t = typename Elem<T>::storage;

template <typename T>
inline storage_t<T>* raw(T* p) {
  return reinterpret_cast<storage_t<T>*>(p);
}
template <typename T>
inline const storage_t<T>* raw(const T* p) {
  return reinterpret_cast<const storage_t<T>*>(p);
}

// exp(x) for float: range reduction x = n ln2 + r, |r| <= ln2 / 2, degree-6 polynomial for e^r,
// then 2^n as two factors that each stay a normal float, so the result overflows to inf above
// ln(FLT_MAX) = 88.72 and underflows gradually through the denormals to 0, as libm's expf does
// (sigmoid(-89) = 0 and sigmoid(-inf) = 0 exactly, as torch.sigmoid; NaN propagates).
FUSEDGRU_INLINE float exp_f32(float x) {
  // Past these bounds the result is inf or 0 anyway; they keep n in [-150, 129]. (x < lo) ? lo
  // : x keeps NaN (a comparison with NaN is false).
  x = x > 89.0f ? 89.0f : x;
  x = x < -104.0f ? -104.0f : x;
  const float t = x * 1.44269504088896341f;
  const float n = (t + 12582912.0f) - 12582912.0f;  // round to nearest, |t| < 2^22
  float r = x - n * 0.693359375f;                   // ln2 split in two for an exact product
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const int32_t ni = static_cast<int32_t>(n);
  const int32_t n1 = ni >> 1, n2 = ni - n1;  // each in [-75, 65]
  const uint32_t bits1 = static_cast<uint32_t>(n1 + 127) << 23;
  const uint32_t bits2 = static_cast<uint32_t>(n2 + 127) << 23;
  float s1, s2;
  std::memcpy(&s1, &bits1, sizeof(s1));
  std::memcpy(&s2, &bits2, sizeof(s2));
  return y * s1 * s2;
}

FUSEDGRU_INLINE float sigmoid_f32(float x) { return 1.0f / (1.0f + exp_f32(-x)); }

// tanh for float: odd polynomial for |x| <= 0.625, 1 - 2 / (e^{2|x|} + 1) beyond.
FUSEDGRU_INLINE float tanh_f32(float x) {
  const float ax = std::fabs(x);
  const float z = x * x;
  const float small = ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z - 5.37397155531e-2f) * z +
                        1.33314422036e-1f) *
                           z -
                       3.33332819422e-1f) *
                          z * x +
                      x;
  const float big = std::copysign(1.0f - 2.0f / (exp_f32(2.0f * ax) + 1.0f), x);
  return ax > 0.625f ? big : small;
}

FUSEDGRU_INLINE float sigmoid(float x) { return sigmoid_f32(x); }
FUSEDGRU_INLINE float tanh(float x) { return tanh_f32(x); }
FUSEDGRU_INLINE double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
FUSEDGRU_INLINE double tanh(double x) { return std::tanh(x); }

}  // namespace cpu
}  // namespace fusedgru
