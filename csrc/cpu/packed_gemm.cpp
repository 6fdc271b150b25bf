// The packed fp32 GEMM of packed_gemm.h: packing, the micro-tiles (AVX-512F; AVX2 + FMA), and
// the CPU Matmul that uses them for the GRU's large products.
#include "packed_gemm.h"

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <vector>

#include "../align.h"
#include "../fusedgru.h"
#include "isa.h"
#include "vec_math.h"

#ifdef FUSEDGRU_X86
#include <immintrin.h>
#endif

namespace fusedgru {
namespace cpu {

// A micro-tile: up to 8 rows x 3 panels, 24 of the 32 AVX-512 registers as accumulators, 3 for
// B, 1 for the broadcast of A (measured on a Zen 4 core: 8 x 3 and 8 x 2 reach 117 GFLOP/s,
// the FMA rate; 4 x 6 97, 16 x 1 54).
constexpr int kTileRows = 8;
constexpr int kTilePanels = 3;

// A tile's kTilePanels panels (K x 192 bytes) stay in a core's L2 share (1 MB on Zen 4, 2 MB on
// Sapphire Rapids) across its row tiles up to this K; longer reductions (the backward's weight
// gradients, K = T N) go to ATen, which blocks K.
constexpr int64_t kMaxPackedK = 4096;
// cpu_matmul's tasks: blocks of this many rows of A (x K floats: 256 KB at K = 1024, in L2).
constexpr int64_t kRowBlock = 64;

namespace {

// Rows [k0, K) of a panel element by element (pack_panel's contract).
void pack_elements(const float* const* src, int64_t w, int64_t k0, int64_t K, int64_t sk,
                   float* dst) {
  for (int64_t k = k0; k < K; ++k) {
    for (int64_t l = 0; l < w; ++l) dst[k * kPanel + l] = src[l][k * sk];
    for (int64_t l = w; l < kPanel; ++l) dst[k * kPanel + l] = 0.0f;
  }
}

#ifdef FUSEDGRU_X86
// A full panel of a transposed operand: columns l = 0..15 are 16 rows of stride 1 in memory.
// Per 8 k and each half of the panel, 8 row loads, an 8 x 8 transpose in registers, 8 stores
// (element by element, packing took ~20% of T=128 N=1 H=1024 on Zen 2, benchmarks/NOTES.md);
// the last K mod 8 rows element by element.
FUSEDGRU_AVX2 void pack_panel_transposed_avx2(const float* const* src, int64_t K, float* dst) {
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    for (int half = 0; half < 2; ++half) {
      const float* const* s = src + 8 * half;
      __m256 r[8], t[8];
      for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(s[i] + k);
      for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);      // (i, i+1) at k 0, 1 | 4, 5
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);  // k 2, 3 | 6, 7
      }
      for (int i = 0; i < 8; i += 4) {
        r[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));          // k 0 | 4
        r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));      // k 1 | 5
        r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));  // k 2 | 6
        r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));  // k 3 | 7
      }
      float* d = dst + k * kPanel + 8 * half;
      for (int i = 0; i < 4; ++i) {
        _mm256_storeu_ps(d + i * kPanel, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
        _mm256_storeu_ps(d + (i + 4) * kPanel, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
      }
    }
  }
  pack_elements(src, kPanel, k, K, 1, dst);
}
#endif

}  // namespace

void pack_panel(const float* const* src, int64_t w, int64_t K, int64_t sk, float* dst) {
  if (w == kPanel) {
#ifdef FUSEDGRU_X86
    if (sk == 1 && cpu_has_avx2_fma()) {
      pack_panel_transposed_avx2(src, K, dst);
      return;
    }
#endif
    bool consecutive = true;
    for (int64_t l = 1; l < kPanel; ++l) consecutive = consecutive && src[l] == src[0] + l;
    if (consecutive) {
      for (int64_t k = 0; k < K; ++k)
        std::memcpy(dst + k * kPanel, src[0] + k * sk, kPanel * sizeof(float));
      return;
    }
  }
  pack_elements(src, w, 0, K, sk, dst);
}

PackedB::PackedB(int64_t K_, int64_t panels_) : K(K_), panels(panels_), isa(packed_isa()) {
  // Not zero-filled: pack() writes every column it is given and zeroes a last panel's padding.
  buf = at::empty({panels * K * kPanel}, at::TensorOptions().dtype(at::kFloat));
}

PackedBf16::PackedBf16(int64_t K_, int64_t panels_) : K(K_), pairs((K_ + 1) / 2), panels(panels_) {
  buf = at::empty({panels * pairs * 2 * kPanel}, at::TensorOptions().dtype(at::kBFloat16));
}

void PackedBf16::pack_panel_bf16(const uint16_t* const* src, int64_t w, int64_t sk,
                                 uint16_t* dst) const {
  const int64_t full = K / 2;
  if (sk == 1 && w == kPanel) {  // rows of W: each pair is one 32-bit word of a row
    uint32_t* d = reinterpret_cast<uint32_t*>(dst);
    for (int64_t p = 0; p < full; ++p)
      for (int64_t l = 0; l < kPanel; ++l) std::memcpy(d + p * kPanel + l, src[l] + 2 * p, 4);
  } else {
    for (int64_t p = 0; p < full; ++p)
      for (int64_t l = 0; l < kPanel; ++l) {
        dst[(p * kPanel + l) * 2] = l < w ? src[l][2 * p * sk] : 0;
        dst[(p * kPanel + l) * 2 + 1] = l < w ? src[l][(2 * p + 1) * sk] : 0;
      }
  }
  if (full < pairs)
    for (int64_t l = 0; l < kPanel; ++l) {
      dst[(full * kPanel + l) * 2] = l < w ? src[l][(K - 1) * sk] : 0;
      dst[(full * kPanel + l) * 2 + 1] = 0;
    }
}

bool bf16_dot_enabled() { return cpu_multiplies(at::kBFloat16) && packed_gemm_enabled(); }

bool cpu_multiplies(at::ScalarType dtype) {
  const char* env = std::getenv("FUSEDGRU_PACKED_GEMM");
  if (env != nullptr && (std::strcmp(env, "fp32") == 0 || std::strcmp(env, "avx2") == 0))
    return false;
  return dtype == at::kBFloat16 ? cpu_has_avx512bf16() : cpu_has_avx512fp16();
}

bool fp32_products_in_bf16() {
  at::Context& ctx = at::globalContext();
  if (ctx.float32Precision(at::Float32Backend::MKLDNN, at::Float32Op::MATMUL) !=
          at::Float32Precision::BF16 ||
      !ctx.userEnabledMkldnn()) {
    return false;
  }
  // torch's test, asked once: the op exists where torch was built with oneDNN.
  static const bool cpu_takes_bf16 = [] {
    const auto op =
        c10::Dispatcher::singleton().findSchema({"mkldnn::_is_mkldnn_bf16_supported", ""});
    return op.has_value() && op->typed<bool()>().call();
  }();
  return cpu_takes_bf16;
}

bool aten_product_rounds(at::ScalarType dtype, int64_t M, int64_t K, int64_t N) {
  if (dtype != at::kFloat || M <= 0 || K <= 0 || N <= 0 || !fp32_products_in_bf16()) return false;
  if (M * K * N > kMaxProbedProduct) return true;
  static std::mutex mutex;
  static std::map<std::array<int64_t, 3>, bool> known;  // by (M, K, N)
  const std::array<int64_t, 3> shape{M, K, N};
  {
    const std::lock_guard<std::mutex> lock(mutex);
    const auto it = known.find(shape);
    if (it != known.end()) return it->second;
  }
  // A's column 0 holds 1 + 2^-12, which has no bf16 value (8 significant bits) and rounds to 1;
  // the rest of A is 0 and B is ones. Every exact fp32 sum is 1 + 2^-12; with bf16 operands, 1.
  constexpr float kOffBf16 = 1.0f + 1.0f / 4096;
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  at::Tensor a = at::zeros({M, K}, f32);
  a.select(1, 0).fill_(kOffBf16);
  const at::Tensor b = at::ones({N, K}, f32).t();  // W^T, as the GRU's products take it
  at::Tensor c = at::empty({M, N}, f32);
  at::mm_out(c, a, b);
  const bool rounds = !c.eq(kOffBf16).all().item<bool>();
  const std::lock_guard<std::mutex> lock(mutex);
  known.emplace(shape, rounds);
  return rounds;
}

bool packed_gemm_enabled() {
  const char* env = std::getenv("FUSEDGRU_PACKED_GEMM");
  return (cpu_has_avx512f() || cpu_has_avx2_fma()) &&
         !(env != nullptr && std::strcmp(env, "0") == 0);
}

PackedIsa packed_isa() {
  const char* env = std::getenv("FUSEDGRU_PACKED_GEMM");
  const bool avx2 = env != nullptr && std::strcmp(env, "avx2") == 0 && cpu_has_avx2_fma();
  return cpu_has_avx512f() && !avx2 ? PackedIsa::kAvx512 : PackedIsa::kAvx2;
}

#ifdef FUSEDGRU_X86
namespace {

// Keeps a loaded panel vector in a register for the tile's rows. Without it GCC (12, -O3) folded
// the panel load into each row's FMA as a memory operand in the 2- and 3-row tiles (tile<2, 3>,
// tile<3, 3>, and tile<2, 2>, tile<3, 2> inlined; objdump): MR loads of the same vector per k
// instead of one. On a 2-core Ice Lake Xeon a step of 3 rows took twice that of 4 rows; pinned,
// steps of 2 and 3 rows (and the last row tile of N = 10, 11, ...) ran 1.4-1.9x faster at two
// threads (benchmarks/NOTES.md, twenty-third session; tests/test_cpu_codegen.py keeps it so).
// An empty asm: no instruction, the same FMAs in the same order (the same bits). Not applied to
// the bf16 and AVX2 tiles: there it made GCC keep the accumulators on the stack.
template <typename V>
inline void in_register(V& v) {
  __asm__("" : "+v"(v));
}

// C[MR rows, NR panels] (+)= A[MR, K] B[K, NR panels]; b: the first panel, the next at + K * 16.
// Columns from ncols on (within this tile) are not written.
template <int MR, int NR>
FUSEDGRU_AVX512 inline void tile(const float* a, int64_t sam, int64_t sak, const float* b,
                                 int64_t K, float* c, int64_t ldc, int64_t ncols, bool accumulate) {
  __m512 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    __m512 bv[NR];
    for (int j = 0; j < NR; ++j) bv[j] = _mm512_loadu_ps(b + (j * K + k) * kPanel);
    if constexpr (MR > 1)
      for (int j = 0; j < NR; ++j) in_register(bv[j]);
    for (int i = 0; i < MR; ++i) {
      const __m512 av = _mm512_set1_ps(a[i * sam + k * sak]);
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_fmadd_ps(av, bv[j], acc[i][j]);
    }
  }
  for (int j = 0; j < NR; ++j) {
    const int64_t w = std::min<int64_t>(kPanel, ncols - j * kPanel);
    if (w <= 0) break;
    const __mmask16 m = static_cast<__mmask16>((1u << w) - 1u);
    for (int i = 0; i < MR; ++i) {
      float* ci = c + i * ldc + j * kPanel;
      __m512 v = acc[i][j];
      if (accumulate) v = _mm512_add_ps(_mm512_maskz_loadu_ps(m, ci), v);
      _mm512_mask_storeu_ps(ci, m, v);
    }
  }
}

template <int NR>
FUSEDGRU_AVX512 inline void tile_rows(int64_t mr, const float* a, int64_t sam, int64_t sak,
                                      const float* b, int64_t K, float* c, int64_t ldc,
                                      int64_t ncols, bool acc) {
  switch (mr) {
    case 8:
      return tile<8, NR>(a, sam, sak, b, K, c, ldc, ncols, acc);
    case 7:
      return tile<7, NR>(a, sam, sak, b, K, c, ldc, ncols, acc);
    case 6:
      return tile<6, NR>(a, sam, sak, b, K, c, ldc, ncols, acc);
    case 5:
      return tile<5, NR>(a, sam, sak, b, K, c, ldc, ncols, acc);
    case 4:
      return tile<4, NR>(a, sam, sak, b, K, c, ldc, ncols, acc);
    case 3:
      return tile<3, NR>(a, sam, sak, b, K, c, ldc, ncols, acc);
    case 2:
      return tile<2, NR>(a, sam, sak, b, K, c, ldc, ncols, acc);
    default:
      return tile<1, NR>(a, sam, sak, b, K, c, ldc, ncols, acc);
  }
}
static_assert(kTileRows == 8 && kTilePanels == 3, "tile_rows and gemm_packed_avx512 spell these");

// Panel groups outermost, so a group's panels stay in L2 across the row tiles.
FUSEDGRU_AVX512 void gemm_packed_avx512(const float* a, int64_t sam, int64_t sak, int64_t M,
                                        const PackedB& b, int64_t p0, int64_t p1, int64_t ncols,
                                        float* c, int64_t ldc, bool accumulate) {
  const int64_t K = b.K;
  for (int64_t p = p0; p < p1; p += kTilePanels) {
    const int64_t np = std::min<int64_t>(kTilePanels, p1 - p);
    const int64_t c0 = (p - p0) * kPanel, w = std::min(np * kPanel, ncols - c0);
    if (w <= 0) break;
    const float* bp = b.data() + p * K * kPanel;
    for (int64_t i = 0; i < M; i += kTileRows) {
      const int64_t mr = std::min<int64_t>(kTileRows, M - i);
      const float* ai = a + i * sam;
      float* ci = c + i * ldc + c0;
      if (np == 3) {
        tile_rows<3>(mr, ai, sam, sak, bp, K, ci, ldc, w, accumulate);
      } else if (np == 2) {
        tile_rows<2>(mr, ai, sam, sak, bp, K, ci, ldc, w, accumulate);
      } else {
        tile_rows<1>(mr, ai, sam, sak, bp, K, ci, ldc, w, accumulate);
      }
    }
  }
}

// AVX512-BF16: C[MR rows, NR panels] = A[MR, K] B[K, NR panels] (bf16 A rows and pairs of B,
// fp32 C); b: the first panel, the next at + pairs * 2 * 16. An odd K's last pair takes A's last
// element alone (B's second element of that pair is zero; A's would be past the row).
template <int MR, int NR>
FUSEDGRU_AVX512BF16 inline void tile_bf16(const uint16_t* a, int64_t sam, const uint16_t* b,
                                          int64_t K, float* c, int64_t ldc, int64_t ncols) {
  const int64_t pairs = (K + 1) / 2, full = K / 2;
  __m512 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_ps();
  __m512bh bv[NR];
  for (int64_t p = 0; p < full; ++p) {
    for (int j = 0; j < NR; ++j)
      bv[j] = (__m512bh)_mm512_loadu_si512(b + (j * pairs + p) * 2 * kPanel);
    for (int i = 0; i < MR; ++i) {
      uint32_t word;  // k = 2p in the low half (memory order), 2p + 1 in the high half
      std::memcpy(&word, a + i * sam + 2 * p, sizeof(word));
      const __m512bh av = (__m512bh)_mm512_set1_epi32(static_cast<int>(word));
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], av, bv[j]);
    }
  }
  if (full < pairs) {
    for (int j = 0; j < NR; ++j)
      bv[j] = (__m512bh)_mm512_loadu_si512(b + (j * pairs + full) * 2 * kPanel);
    for (int i = 0; i < MR; ++i) {
      const __m512bh av = (__m512bh)_mm512_set1_epi32(a[i * sam + K - 1]);
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], av, bv[j]);
    }
  }
  for (int j = 0; j < NR; ++j) {
    const int64_t w = std::min<int64_t>(kPanel, ncols - j * kPanel);
    if (w <= 0) break;
    const __mmask16 m = static_cast<__mmask16>((1u << w) - 1u);
    for (int i = 0; i < MR; ++i) _mm512_mask_storeu_ps(c + i * ldc + j * kPanel, m, acc[i][j]);
  }
}

template <int NR>
FUSEDGRU_AVX512BF16 inline void tile_rows_bf16(int64_t mr, const uint16_t* a, int64_t sam,
                                               const uint16_t* b, int64_t K, float* c, int64_t ldc,
                                               int64_t ncols) {
  switch (mr) {
    case 8:
      return tile_bf16<8, NR>(a, sam, b, K, c, ldc, ncols);
    case 7:
      return tile_bf16<7, NR>(a, sam, b, K, c, ldc, ncols);
    case 6:
      return tile_bf16<6, NR>(a, sam, b, K, c, ldc, ncols);
    case 5:
      return tile_bf16<5, NR>(a, sam, b, K, c, ldc, ncols);
    case 4:
      return tile_bf16<4, NR>(a, sam, b, K, c, ldc, ncols);
    case 3:
      return tile_bf16<3, NR>(a, sam, b, K, c, ldc, ncols);
    case 2:
      return tile_bf16<2, NR>(a, sam, b, K, c, ldc, ncols);
    default:
      return tile_bf16<1, NR>(a, sam, b, K, c, ldc, ncols);
  }
}

FUSEDGRU_AVX512BF16 void gemm_packed_bf16_avx512(const uint16_t* a, int64_t sam, int64_t M,
                                                 const PackedBf16& b, int64_t ncols, float* c,
                                                 int64_t ldc) {
  const int64_t K = b.K, panel = b.pairs * 2 * kPanel;
  for (int64_t p = 0; p < b.panels; p += kTilePanels) {
    const int64_t np = std::min<int64_t>(kTilePanels, b.panels - p);
    const int64_t c0 = p * kPanel, w = std::min(np * kPanel, ncols - c0);
    if (w <= 0) break;
    const uint16_t* bp = b.data() + p * panel;
    for (int64_t i = 0; i < M; i += kTileRows) {
      const int64_t mr = std::min<int64_t>(kTileRows, M - i);
      if (np == 3) {
        tile_rows_bf16<3>(mr, a + i * sam, sam, bp, K, c + i * ldc + c0, ldc, w);
      } else if (np == 2) {
        tile_rows_bf16<2>(mr, a + i * sam, sam, bp, K, c + i * ldc + c0, ldc, w);
      } else {
        tile_rows_bf16<1>(mr, a + i * sam, sam, bp, K, c + i * ldc + c0, ldc, w);
      }
    }
  }
}

// AVX2 + FMA: a panel is two 8-float vectors. Micro-tiles of MR rows x NR panels hold
// 2 MR NR <= 12 of the 16 vector registers as accumulators (the rest: B and the broadcast of A):
// 6 x 1 for full row tiles (the shape of BLIS's Haswell kernel), and for the last rows fewer
// rows over more panels (1 x 3, 2 x 3, 3 x 2), so at least 6 independent FMA chains hide the
// FMA latency even for a one-row product.
constexpr int kTileRowsAvx2 = 6;
// How far ahead (in k) an AVX2 tile prefetches its panels' rows into L1. At K = 1024 a panel
// (64 KB) streams through Zen 2's 32 KB L1 past the tile's rows of A, and without the prefetch
// the 6 x 16 tile ran at ~57% of a core's FMA rate (T=128 N=16 H=1024, one thread: ~420 -> ~370
// ms with it; 16 and 32 measured alike; benchmarks/NOTES.md). Not added to the AVX-512 tiles,
// which no machine of this session could time.
constexpr int64_t kPrefetchK = 16;

template <int MR, int NR>
FUSEDGRU_AVX2 inline void tile_avx2(const float* a, int64_t sam, int64_t sak, const float* b,
                                    int64_t K, float* c, int64_t ldc, int64_t ncols,
                                    bool accumulate) {
  constexpr int kV = 2 * NR;  // vectors per row
  __m256 acc[MR][kV];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < kV; ++v) acc[i][v] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    if (k + kPrefetchK < K) {
      for (int j = 0; j < NR; ++j)
        _mm_prefetch(reinterpret_cast<const char*>(b + (j * K + k + kPrefetchK) * kPanel),
                     _MM_HINT_T0);
    }
    __m256 bv[kV];
    for (int v = 0; v < kV; ++v)
      bv[v] = _mm256_loadu_ps(b + ((v / 2) * K + k) * kPanel + (v % 2) * 8);
    for (int i = 0; i < MR; ++i) {
      // set1 of a loaded value, not _mm256_broadcast_ss(pointer): the pointer form kept acc in
      // memory, every FMA's result stored back in the k loop (GCC 12).
      const __m256 av = _mm256_set1_ps(a[i * sam + k * sak]);
      for (int v = 0; v < kV; ++v) acc[i][v] = _mm256_fmadd_ps(av, bv[v], acc[i][v]);
    }
  }
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int v = 0; v < kV; ++v) {
    const int64_t w = std::min<int64_t>(8, ncols - v * 8);
    if (w <= 0) break;
    const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(w)), lane);
    for (int i = 0; i < MR; ++i) {
      float* ci = c + i * ldc + v * 8;
      __m256 r = acc[i][v];
      if (w == 8) {
        if (accumulate) r = _mm256_add_ps(_mm256_loadu_ps(ci), r);
        _mm256_storeu_ps(ci, r);
      } else {
        if (accumulate) r = _mm256_add_ps(_mm256_maskload_ps(ci, m), r);
        _mm256_maskstore_ps(ci, m, r);
      }
    }
  }
}

// MR rows over np <= kTilePanels panels, NR at a time (2 MR NR <= 12 accumulators); each panel
// holds some of the ncols columns.
template <int MR>
FUSEDGRU_AVX2 inline void tile_panels_avx2(int64_t np, const float* a, int64_t sam, int64_t sak,
                                           const float* b, int64_t K, float* c, int64_t ldc,
                                           int64_t ncols, bool acc) {
  constexpr int NR = MR <= 2 ? 3 : MR == 3 ? 2 : 1;
  static_assert(2 * MR * NR <= 12 && NR <= kTilePanels, "accumulators beyond the registers");
  for (int64_t q = 0; q < np; q += NR) {
    const float* bq = b + q * K * kPanel;
    float* cq = c + q * kPanel;
    const int64_t wq = ncols - q * kPanel;
    if (np - q >= NR) {
      tile_avx2<MR, NR>(a, sam, sak, bq, K, cq, ldc, wq, acc);
    } else if constexpr (NR >= 3) {
      if (np - q == 2) {
        tile_avx2<MR, 2>(a, sam, sak, bq, K, cq, ldc, wq, acc);
      } else {
        tile_avx2<MR, 1>(a, sam, sak, bq, K, cq, ldc, wq, acc);
      }
    } else {
      tile_avx2<MR, 1>(a, sam, sak, bq, K, cq, ldc, wq, acc);
    }
  }
}

// Panel groups of kTilePanels outermost, as gemm_packed_avx512; full 6-row tiles, then the rest.
FUSEDGRU_AVX2 void gemm_packed_avx2(const float* a, int64_t sam, int64_t sak, int64_t M,
                                    const PackedB& b, int64_t p0, int64_t p1, int64_t ncols,
                                    float* c, int64_t ldc, bool accumulate) {
  const int64_t K = b.K;
  for (int64_t p = p0; p < p1; p += kTilePanels) {
    const int64_t c0 = (p - p0) * kPanel;
    const int64_t w = std::min(std::min<int64_t>(kTilePanels, p1 - p) * kPanel, ncols - c0);
    if (w <= 0) break;
    const int64_t np = (w + kPanel - 1) / kPanel;  // the group's panels that hold columns
    const float* bp = b.data() + p * K * kPanel;
    // Full row tiles one panel at a time, so a panel (K x 64 bytes: 192 KB at K = 3072) stays
    // in L2 across them; a group of three would not in Zen 2's 512 KB.
    const int64_t full = M - M % kTileRowsAvx2;
    for (int64_t q = 0; q < np; ++q) {
      for (int64_t i = 0; i < full; i += kTileRowsAvx2) {
        tile_avx2<kTileRowsAvx2, 1>(a + i * sam, sam, sak, bp + q * K * kPanel, K,
                                    c + i * ldc + c0 + q * kPanel, ldc, w - q * kPanel, accumulate);
      }
    }
    const int64_t i = full;
    const float* ai = a + i * sam;
    float* ci = c + i * ldc + c0;
    static_assert(kTileRowsAvx2 == 6, "the switch below spells the remainders");
    switch (M - i) {
      case 5:
        tile_panels_avx2<5>(np, ai, sam, sak, bp, K, ci, ldc, w, accumulate);
        break;
      case 4:
        tile_panels_avx2<4>(np, ai, sam, sak, bp, K, ci, ldc, w, accumulate);
        break;
      case 3:
        tile_panels_avx2<3>(np, ai, sam, sak, bp, K, ci, ldc, w, accumulate);
        break;
      case 2:
        tile_panels_avx2<2>(np, ai, sam, sak, bp, K, ci, ldc, w, accumulate);
        break;
      case 1:
        tile_panels_avx2<1>(np, ai, sam, sak, bp, K, ci, ldc, w, accumulate);
        break;
      default:
        break;
    }
  }
}

}  // namespace
#endif

void gemm_packed(const float* a, int64_t sam, int64_t sak, int64_t M, const PackedB& b, int64_t p0,
                 int64_t p1, int64_t ncols, float* c, int64_t ldc, bool accumulate) {
#ifdef FUSEDGRU_X86
  if (b.isa == PackedIsa::kAvx512) {
    gemm_packed_avx512(a, sam, sak, M, b, p0, p1, ncols, c, ldc, accumulate);
  } else {
    gemm_packed_avx2(a, sam, sak, M, b, p0, p1, ncols, c, ldc, accumulate);
  }
#else
  TORCH_CHECK(false, "fusedgru: the packed GEMM needs x86-64 with AVX-512F or AVX2 + FMA");
#endif
}

void gemm_packed_bf16(const c10::BFloat16* a, int64_t sam, int64_t M, const PackedBf16& b,
                      int64_t ncols, float* c, int64_t ldc) {
#ifdef FUSEDGRU_X86
  TORCH_CHECK(cpu_has_avx512bf16(), "fusedgru: the bf16 packed GEMM needs AVX512-BF16");
  gemm_packed_bf16_avx512(reinterpret_cast<const uint16_t*>(a), sam, M, b, ncols, c, ldc);
#else
  TORCH_CHECK(false, "fusedgru: the bf16 packed GEMM needs x86-64 with AVX512-BF16");
#endif
}

// A product whose reduction has few terms (the weight gradients of a call of T N rows, e.g. a
// decoder trained step by step; an input projection from C features) is a sum of outer
// products written straight out: write-bound, nothing to reuse. On the 2-core Xeon (torch 2.13)
// ATen's [3072, 1] x [1, 1024] took ~1 ms in bf16 and ~18 ms in fp16 (oneDNN), 0.33 ms in fp32
// (MKL), and the packed fp32 tiles lost to MKL there. Up to this many terms the sum won, per
// dtype, over whole training calls (benchmarks/NOTES.md, twenty-first session): fp32 against the
// packed tiles 1.25x at K = 1, 1.05-1.12x at 2, even at 4, 0.88-0.94x at 16; bf16 against
// oneDNN 1.29x at 2, 1.04x at 8, 0.91-0.93x at 16; fp16 1.35x at 16 (not measured beyond).
// FUSEDGRU_PACKED_GEMM=0 leaves these to ATen too.
constexpr int64_t kMaxFewTermsFp32 = 2, kMaxFewTermsBf16 = 8, kMaxFewTermsHalf = 16;
constexpr int64_t kMaxFewTermsK = kMaxFewTermsHalf;  // the largest of the three
// Columns of out accumulated in registers/L1 at a time.
constexpr int64_t kFewTermsChunk = 256;

// Rows [i0, i1) of out = sum_k a[i, k] b32[k, :] (+ out): the sum in fp32 in k order, the old
// out added last, then one rounding to T. A product of two bf16 or two fp16 values is exact in
// fp32, so each term adds with one fp32 rounding whether or not the compiler fuses it into an
// FMA, and the clones agree bitwise; at K <= 2 this is the exact sum rounded once to fp32, then
// to T. (fp32 operands: an FMA chain in the AVX-512 and AVX2 clones.) The last term is added in
// the loop that stores, so no loop is a plain copy (GCC turned one into scalar 8-byte moves).
template <typename T>
FUSEDGRU_CLONES void few_terms_rows(storage_t<T>* out, int64_t ldo, const storage_t<T>* a,
                                    int64_t sam, int64_t sak, const float* b32, int64_t K,
                                    int64_t cols, int64_t i0, int64_t i1, bool accumulate) {
  using E = Elem<T>;
  float acc[kFewTermsChunk];
  float ai[kMaxFewTermsK];
  for (int64_t i = i0; i < i1; ++i) {
    for (int64_t k = 0; k < K; ++k) ai[k] = E::load(a[i * sam + k * sak]);
    const float s0 = ai[0], sl = ai[K - 1];
    storage_t<T>* o = out + i * ldo;
    for (int64_t j0 = 0; j0 < cols; j0 += kFewTermsChunk) {
      const int64_t w = std::min(kFewTermsChunk, cols - j0);
      const float* b0 = b32 + j0;
      const float* bl = b0 + (K - 1) * cols;
      storage_t<T>* oj = o + j0;
      if (K == 1) {
        if (accumulate) {
          for (int64_t j = 0; j < w; ++j) oj[j] = E::store(sl * bl[j] + E::load(oj[j]));
        } else {
          for (int64_t j = 0; j < w; ++j) oj[j] = E::store(sl * bl[j]);
        }
        continue;
      }
      for (int64_t j = 0; j < w; ++j) acc[j] = s0 * b0[j];
      for (int64_t k = 1; k + 1 < K; ++k) {
        const float s = ai[k];
        const float* bk = b0 + k * cols;
        for (int64_t j = 0; j < w; ++j) acc[j] += s * bk[j];
      }
      if (accumulate) {
        for (int64_t j = 0; j < w; ++j) oj[j] = E::store((acc[j] + sl * bl[j]) + E::load(oj[j]));
      } else {
        for (int64_t j = 0; j < w; ++j) oj[j] = E::store(acc[j] + sl * bl[j]);
      }
    }
  }
}

template <typename T>
void few_terms_product(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
  const int64_t M = a.size(0), K = a.size(1), cols = b.size(1);
  // B widened once (K x cols floats: 64 KB at K = 16, cols = 1024), rows of stride cols.
  std::vector<float> b32(K * cols);
  const storage_t<T>* bs = raw(b.const_data_ptr<T>());
  for (int64_t k = 0; k < K; ++k) {
    for (int64_t j = 0; j < cols; ++j)
      b32[k * cols + j] = Elem<T>::load(bs[k * b.stride(0) + j * b.stride(1)]);
  }
  const storage_t<T>* as = raw(a.const_data_ptr<T>());
  storage_t<T>* os = raw(out.mutable_data_ptr<T>());
  // Tasks of about 32K elements of out each.
  const int64_t grain = std::max<int64_t>(1, (int64_t{32} << 10) / cols);
  at::parallel_for(0, M, grain, [&](int64_t i0, int64_t i1) {
    few_terms_rows<T>(os, out.stride(0), as, a.stride(0), a.stride(1), b32.data(), K, cols, i0, i1,
                      accumulate);
  });
}

void cpu_matmul(at::Tensor& out, const at::Tensor& a_in, const at::Tensor& b, double beta) {
  const int64_t M = a_in.size(0), K = a_in.size(1), cols = b.size(1);
  const at::ScalarType dtype = out.scalar_type();
  const bool plain = a_in.scalar_type() == dtype && b.scalar_type() == dtype &&
                     (beta == 0 || beta == 1) && out.stride(1) == 1 && M > 0 && cols > 0;
  if (plain && K >= 1 && packed_gemm_enabled()) {
    if (dtype == at::kBFloat16 && K <= kMaxFewTermsBf16) {
      few_terms_product<c10::BFloat16>(out, a_in, b, beta != 0);
      return;
    }
    if (dtype == at::kHalf && K <= kMaxFewTermsHalf) {
      few_terms_product<c10::Half>(out, a_in, b, beta != 0);
      return;
    }
    if (dtype == at::kFloat && K <= kMaxFewTermsFp32 && !aten_product_rounds(dtype, M, K, cols)) {
      few_terms_product<float>(out, a_in, b, beta != 0);
      return;
    }
  }
  if (plain && K >= 1 && (dtype == at::kBFloat16 || dtype == at::kHalf) && !cpu_multiplies(dtype) &&
      packed_gemm_enabled() && !aten_product_rounds(at::kFloat, M, K, cols)) {
    // No bf16/fp16 arithmetic on this CPU: the product of the operands widened to fp32 (exact),
    // accumulated in fp32 with the old out and rounded once, ATen's contract for the dtype,
    // 1.7-7x faster than ATen's product in the dtype there (cpu_multiplies).
    at::Tensor c32 =
        beta != 0 ? out.to(at::kFloat) : at::empty({M, cols}, out.options().dtype(at::kFloat));
    cpu_matmul(c32, a_in.to(at::kFloat), b.to(at::kFloat), beta);
    out.copy_(c32);
    return;
  }
  if (!packing_pays(dtype, M) || !plain || K > kMaxPackedK || K == 0 ||
      aten_product_rounds(dtype, M, K, cols)) {
    aten_matmul(out, a_in, b, beta);
    return;
  }
  // A transposed (the weight gradients' dG^T, rows of stride 1): each k of a tile would read a
  // new cache line and page of A, over again for every panel; one copy to rows costs less (T=128
  // N=16 H=1024 forward + backward on AVX2: 1084 -> 648 ms, benchmarks/NOTES.md).
  const at::Tensor a = a_in.stride(1) == 1 ? a_in : a_in.contiguous();
  const int64_t panels = (cols + kPanel - 1) / kPanel;
  PackedB pb(K, panels);
  const float* bsrc = b.const_data_ptr<float>();
  at::parallel_for(0, panels, 1, [&](int64_t q0, int64_t q1) {
    const int64_t sc = b.stride(1);
    pb.pack(q0, std::min(cols, q1 * kPanel) - q0 * kPanel, b.stride(0),
            [&](int64_t c) { return bsrc + (q0 * kPanel + c) * sc; });
  });
  // Tasks: row blocks x panel chunks (chunks only when there are fewer row blocks than threads).
  const int64_t row_blocks = (M + kRowBlock - 1) / kRowBlock;
  const int64_t threads = at::get_num_threads();
  const int64_t chunks = row_blocks >= threads ? 1 : (threads + row_blocks - 1) / row_blocks;
  const int64_t chunk = round_up((panels + chunks - 1) / chunks, kTilePanels);
  const float* asrc = a.const_data_ptr<float>();
  float* dst = out.mutable_data_ptr<float>();
  at::parallel_for(0, row_blocks * chunks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t i0 = (t / chunks) * kRowBlock, q0 = (t % chunks) * chunk;
      const int64_t q1 = std::min(panels, q0 + chunk);
      if (q0 >= q1) continue;
      gemm_packed(asrc + i0 * a.stride(0), a.stride(0), a.stride(1), std::min(kRowBlock, M - i0),
                  pb, q0, q1, cols - q0 * kPanel, dst + i0 * out.stride(0) + q0 * kPanel,
                  out.stride(0), beta != 0);
    }
  });
}

}  // namespace cpu
}  // namespace fusedgru
