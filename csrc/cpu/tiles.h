#pragma once
// How the CPU's products (gemm.cpp, weight_layout.cpp) cut their work for
// brgemm, whatever the operands' type: tiles of C, slices of long sums, and
// the panels of a laid-out weight made from nn.LSTM's transposed weights.

#include "brgemm_pairs.h"
#include "gemm.h"
#include "kernels.h"

#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
#include <cstdint>

namespace lstm_ext::cpu {

constexpr int64_t kTileRows = 64;
// Long sums go in slices (even: VNNI pairs), so that a tile's operands stay
// in cache.
constexpr int64_t kSliceDepth = 512;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// at::parallel_for's grain for `tasks` tasks doing `flops` in all over
// `weight_bytes` of weights: one task per thread, or all on the calling
// thread when the work is small (worth_threads).
inline int64_t grain(int64_t flops, int64_t tasks, int64_t weight_bytes = 0) {
  return worth_threads(flops, weight_bytes) ? 1 : tasks;
}

inline int64_t tile_count(int64_t m, int64_t n) {
  return ceil_div(m, kTileRows) * ceil_div(n, kPanel);
}

// An empty sum: the kernels are not all defined for k = 0.
template <typename C>
bool handled_empty(int64_t m, int64_t n, int64_t k, C* c, int64_t ldc, bool accumulate) {
  if (m > 0 && n > 0 && k > 0) return false;
  if (!accumulate && k == 0) {
    for (int64_t i = 0; i < m; ++i) std::fill_n(c + i * ldc, n, C(0));
  }
  return true;
}

// C[m,n] (+)= A[m,k] B[k,n] for one tile or slice, A row-major: float
// straight to brgemm, B row-major (ldb); 16-bit through pairs_product, B in
// pairs (ldb columns), any k.
inline void tile_product(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                         const float* b, int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  at::native::cpublas::brgemm(m, n, k, lda, ldb, ldc, accumulate, a, b, c);
}

template <typename T, typename = IfReduced<T>>
void tile_product(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b,
                  int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  pairs_product(m, n, k, a, lda, b, ldb, c, ldc, accumulate);
}

// Tiles [begin, end) of C, each kTileRows rows by one panel of B (laid out by
// weight_layout), the panel index fastest so that a task's tiles share rows
// of A. Long sums go in slices of kSliceDepth (even: a 16-bit panel's pairs
// split between slices only at the end).
template <typename T>
void panel_tiles(int64_t begin, int64_t end, int64_t m, int64_t n, int64_t k, const T* a,
                 int64_t lda, const T* b_panels, float* c, int64_t ldc, bool accumulate) {
  const int64_t tiles_n = ceil_div(n, kPanel);
  for (int64_t tile = begin; tile < end; ++tile) {
    const int64_t i = (tile / tiles_n) * kTileRows, j = (tile % tiles_n) * kPanel;
    const int64_t rows = std::min(kTileRows, m - i), width = std::min(kPanel, n - j);
    for (int64_t p = 0; p < k; p += kSliceDepth) {
      tile_product(rows, width, std::min(kSliceDepth, k - p), a + i * lda + p, lda,
                   column(b_panels, k, j) + p * width, width, c + i * ldc + j, ldc,
                   accumulate || p > 0);
    }
  }
}

// Calls fn(j, width) for every column panel of a (k, n) matrix, the panels
// shared between the threads when the matrix is worth it (laying a weight out
// is bound by memory: both threads' bandwidth, and their page faults, count).
template <typename Fn>
void for_each_panel(int64_t n, int64_t bytes, const Fn& fn) {
  const int64_t panels = ceil_div(n, kPanel);
  at::parallel_for(0, panels, grain(0, panels, bytes), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) fn(p * kPanel, std::min(kPanel, n - p * kPanel));
  });
}

// The column panels (kPanel wide, each `depth` 32-bit words deep) of a (depth,
// n) matrix whose column c is row source(c) of `from` (row stride depth): the
// runs of columns from consecutive rows, transposed 16 x 16.
template <typename Source>
void transposed_panels(const float* from, int64_t depth, int64_t n, const Source& source,
                       float* dst) {
  for_each_panel(n, depth * n * 4, [&](int64_t j, int64_t width) {
    float* panel = dst + depth * j;
    for (int64_t c = j, run = 1; c < j + width; c += run, run = 1) {
      while (c + run < j + width && source(c + run) == source(c) + run) ++run;
      kernels().transpose(from + source(c) * depth, depth, run, depth, panel + (c - j), width);
    }
  });
}

}  // namespace lstm_ext::cpu
