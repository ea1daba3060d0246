#include "gemm.h"

#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>

extern "C" void dgemm_(const char* transa, const char* transb, const int* m, const int* n,
                       const int* k, const double* alpha, const double* a, const int* lda,
                       const double* b, const int* ldb, const double* beta, double* c,
                       const int* ldc);

namespace lstm_ext::cpu {
namespace {

// Below this many flops a product runs on the calling thread: forking the
// pool costs more than the work.
constexpr int64_t kParallelFlops = 1 << 20;
constexpr int64_t kTileRows = 64;
constexpr int64_t kSliceDepth = 512;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// An empty sum: BLAS kernels are not all defined for k = 0.
template <typename T>
void zero_unless(bool accumulate, int64_t m, int64_t n, T* c, int64_t ldc) {
  if (accumulate) return;
  for (int64_t i = 0; i < m; ++i) std::fill_n(c + i * ldc, n, T(0));
}

}  // namespace

void gemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
          int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  if (m == 0 || n == 0) return;
  if (k == 0) return zero_unless(accumulate, m, n, c, ldc);
  // Tall products (whole sequences) prefer narrow tiles, per-step ones wide
  // tiles; both keep the kernel count per thread small (kernels are JIT-ed and
  // cached per shape).
  const int64_t tile_n = std::min<int64_t>(n, m > 4 * kTileRows ? 64 : 256);
  const int64_t tiles_m = ceil_div(m, kTileRows), tiles_n = ceil_div(n, tile_n);
  const int64_t grain = 2 * m * n * k < kParallelFlops ? tiles_m * tiles_n : 1;
  at::parallel_for(0, tiles_m * tiles_n, grain, [&](int64_t begin, int64_t end) {
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t i = (tile / tiles_n) * kTileRows, j = (tile % tiles_n) * tile_n;
      // Long sums go in slices, so a tile's operands stay in cache.
      for (int64_t p = 0; p < k; p += kSliceDepth) {
        at::native::cpublas::brgemm(std::min(kTileRows, m - i), std::min(tile_n, n - j),
                                    std::min(kSliceDepth, k - p), lda, ldb, ldc,
                                    accumulate || p > 0, a + i * lda + p, b + p * ldb + j,
                                    c + i * ldc + j);
      }
    }
  });
}

void gemm(int64_t m, int64_t n, int64_t k, const double* a, int64_t lda, const double* b,
          int64_t ldb, double* c, int64_t ldc, bool accumulate) {
  if (m == 0 || n == 0) return;
  if (k == 0) return zero_unless(accumulate, m, n, c, ldc);
  // BLAS is column-major: C^T = B^T A^T. Sizes were checked to fit in int.
  const char no = 'N';
  const int M = static_cast<int>(n), N = static_cast<int>(m), K = static_cast<int>(k);
  const int LDA = static_cast<int>(ldb), LDB = static_cast<int>(lda), LDC = static_cast<int>(ldc);
  const double alpha = 1, beta = accumulate ? 1 : 0;
  dgemm_(&no, &no, &M, &N, &K, &alpha, b, &LDA, a, &LDB, &beta, c, &LDC);
}

}  // namespace lstm_ext::cpu
