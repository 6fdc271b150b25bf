// Alignment arithmetic shared by the CPU and CUDA code (constexpr: usable in kernels, which nvcc
// compiles with --expt-relaxed-constexpr).
#pragma once

#include <cstdint>

namespace fusedgru {

// v rounded up to a multiple of m (m > 0).
constexpr int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

}  // namespace fusedgru
