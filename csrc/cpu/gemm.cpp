// The CPU's products (gemm.h): float, bfloat16 and float16 through oneDNN's
// brgemm in tiles and slices (tiles.h), double through MKL's dgemm.

#include "gemm.h"

#include "../blas.h"
#include "brgemm_pairs.h"
#include "kernels.h"
#include "tiles.h"

#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
#include <type_traits>
#include <vector>

namespace lstm_ext::cpu {
namespace {

// A is (m, k) row-major, or (k, m) when transpose_a.
void dgemm(int64_t m, int64_t n, int64_t k, const double* a, int64_t lda, const double* b,
           int64_t ldb, double* c, int64_t ldc, bool accumulate, bool transpose_a = false) {
  if (handled_empty(m, n, k, c, ldc, accumulate)) return;
  // BLAS is column-major: C^T = B^T A^T. Sizes were checked to fit in int.
  const char no = 'N', ta = transpose_a ? 'T' : 'N';
  const int M = static_cast<int>(n), N = static_cast<int>(m), K = static_cast<int>(k);
  const int LDA = static_cast<int>(ldb), LDB = static_cast<int>(lda), LDC = static_cast<int>(ldc);
  const double alpha = 1, beta = accumulate ? 1 : 0;
  dgemm_(&no, &ta, &M, &N, &K, &alpha, b, &LDA, a, &LDB, &beta, c, &LDC);
}

// float's C[m,n] (+)= A[k,m]^T B[k,n] where n < m: transposing the narrower
// operand costs less (the gates are 4H wide, the inputs and states often H).
// B^T once (n x k, which a block of rows bounds), then C^T = B^T A a band of
// C's rows at a time, each transposed into C: no buffer the size of C.
void tn_by_b_transposed(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                        const float* b, int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  constexpr int64_t kBand = 256;
  std::vector<float> b_t(n * k);
  kernels().transpose(b, ldb, k, n, b_t.data(), k);
  const int64_t bands = ceil_div(m, kBand);
  at::parallel_for(0, bands, grain(2 * m * n * k, bands), [&](int64_t begin, int64_t end) {
    std::vector<float> c_t(n * kBand), rows(accumulate ? kBand * n : 0);
    for (int64_t band = begin; band < end; ++band) {
      const int64_t j = band * kBand, width = std::min(kBand, m - j);
      for (int64_t i = 0; i < n; i += kTileRows) {
        const int64_t tile = std::min(kTileRows, n - i);
        for (int64_t p = 0; p < k; p += kSliceDepth) {
          at::native::cpublas::brgemm(tile, width, std::min(kSliceDepth, k - p), k, lda, width,
                                      p > 0, b_t.data() + i * k + p, a + p * lda + j,
                                      c_t.data() + i * width);
        }
      }
      if (!accumulate) {
        kernels().transpose(c_t.data(), width, n, width, c + j * ldc, ldc);
        continue;
      }
      kernels().transpose(c_t.data(), width, n, width, rows.data(), n);
      for (int64_t r = 0; r < width; ++r) {
        kernels().f.add(c + (j + r) * ldc, c + (j + r) * ldc, rows.data() + r * n, n);
      }
    }
  });
}

}  // namespace

template <typename T, typename>
void gemm_serial(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b_panels,
                 int64_t /*ldb*/, float* c, int64_t ldc, bool accumulate) {
  if (handled_empty(m, n, k, c, ldc, accumulate)) return;
  if constexpr (std::is_same_v<T, float>) {
    if (m <= kFewRows) {
      return kernels().few_rows_gemm(m, n, k, a, lda, b_panels, kPanel, c, ldc, accumulate);
    }
  }
  panel_tiles(0, tile_count(m, n), m, n, k, a, lda, b_panels, c, ldc, accumulate);
}

template <typename T, typename>
void gemm_parallel(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b_panels,
                   float* c, int64_t ldc, bool accumulate) {
  if (handled_empty(m, n, k, c, ldc, accumulate)) return;
  const int64_t tiles = tile_count(m, n);
  at::parallel_for(0, tiles, grain(2 * m * n * k, tiles, k * n * sizeof(T)),
                   [&](int64_t begin, int64_t end) {
    const TileScope<T> scope;
    panel_tiles(begin, end, m, n, k, a, lda, b_panels, c, ldc, accumulate);
  });
}

// One task per band of kTileRows rows of C: it transposes each slice of its
// columns of A once, in cache, and multiplies it by B 256 columns at a time.
// B as the products take it: float as it is, 16-bit in pairs, made once (its
// k rows are a block's rows at most).
template <typename T, typename>
void gemm_tn_parallel(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b,
                      int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  if (handled_empty(m, n, k, c, ldc, accumulate)) return;
  if constexpr (std::is_same_v<T, float>) {
    if (m > n) return tn_by_b_transposed(m, n, k, a, lda, b, ldb, c, ldc, accumulate);
  }
  std::vector<T> pairs;
  if constexpr (is_reduced_precision_v<T>) {
    const int64_t count = vnni_depth(k) / 2;
    pairs.resize(2 * count * n);
    at::parallel_for(0, count, grain(2 * count * n, count), [&](int64_t begin, int64_t end) {
      to_pairs(b, ldb, k, n, 2 * begin, 2 * end, pairs.data() + 2 * begin * n);
    });
    b = pairs.data();
    ldb = n;
  }
  // A column of B takes this many values of a row of b.
  constexpr int64_t column_width = is_reduced_precision_v<T> ? 2 : 1;
  const int64_t bands = ceil_div(m, kTileRows);
  at::parallel_for(0, bands, grain(2 * m * n * k, bands), [&](int64_t begin, int64_t end) {
    const TileScope<T> scope;
    std::vector<T> slice(kTileRows * kSliceDepth);
    for (int64_t band = begin; band < end; ++band) {
      const int64_t i = band * kTileRows, rows = std::min(kTileRows, m - i);
      for (int64_t p = 0; p < k; p += kSliceDepth) {
        const int64_t depth = std::min(kSliceDepth, k - p);
        // Columns [i, i + rows) of A's rows [p, p + depth), transposed: rows of the slice.
        kernels().transpose(a + p * lda + i, lda, depth, rows, slice.data(), kSliceDepth);
        for (int64_t j = 0; j < n; j += 256) {
          tile_product(rows, std::min<int64_t>(256, n - j), depth, slice.data(), kSliceDepth,
                       b + p * ldb + column_width * j, ldb, c + i * ldc + j, ldc,
                       accumulate || p > 0);
        }
      }
    }
  });
}

// MKL threads dgemm itself, and runs it on one thread inside a parallel region.
void gemm_serial(int64_t m, int64_t n, int64_t k, const double* a, int64_t lda, const double* b,
                 int64_t ldb, double* c, int64_t ldc, bool accumulate) {
  dgemm(m, n, k, a, lda, b, ldb, c, ldc, accumulate);
}

void gemm_parallel(int64_t m, int64_t n, int64_t k, const double* a, int64_t lda,
                   const double* b, double* c, int64_t ldc, bool accumulate) {
  dgemm(m, n, k, a, lda, b, n, c, ldc, accumulate);
}

void gemm_tn_parallel(int64_t m, int64_t n, int64_t k, const double* a, int64_t lda,
                      const double* b, int64_t ldb, double* c, int64_t ldc, bool accumulate) {
  dgemm(m, n, k, a, lda, b, ldb, c, ldc, accumulate, true);
}

#define LSTM_EXT_INSTANTIATE(T)                                                               \
  template void gemm_serial<T>(int64_t, int64_t, int64_t, const T*, int64_t, const T*, int64_t, \
                               float*, int64_t, bool);                                         \
  template void gemm_parallel<T>(int64_t, int64_t, int64_t, const T*, int64_t, const T*,       \
                                 float*, int64_t, bool);                                       \
  template void gemm_tn_parallel<T>(int64_t, int64_t, int64_t, const T*, int64_t, const T*,    \
                                    int64_t, float*, int64_t, bool);
LSTM_EXT_INSTANTIATE(float)
LSTM_EXT_INSTANTIATE(c10::BFloat16)
LSTM_EXT_INSTANTIATE(c10::Half)
#undef LSTM_EXT_INSTANTIATE

}  // namespace lstm_ext::cpu
