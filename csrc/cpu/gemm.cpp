#include "gemm.h"

#include "../blas.h"
#include "kernels.h"
#include "tiles.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
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

}  // namespace

at::Tensor weight_layout(const at::Tensor& b, Gates gates, int64_t group) {
  const int64_t k = b.size(0), n = b.size(1);
  const bool gate_columns = gates == Gates::columns, gate_rows = gates == Gates::rows;
  // order[i]: the source index of position i along the gates dimension.
  const std::vector<int64_t> order =
      gates == Gates::none ? std::vector<int64_t>() : gate_order((gate_rows ? k : n) / 4, group);
  const auto column = [&](int64_t c) { return gate_columns ? order[c] : c; };
  // b in the gate order, contiguous.
  const auto ordered = [&] {
    if (order.empty()) return b.contiguous();
    const at::Tensor index = at::empty({int64_t(order.size())}, b.options().dtype(at::kLong));
    std::copy(order.begin(), order.end(), index.data_ptr<int64_t>());
    return b.index_select(gate_rows ? 0 : 1, index).contiguous();
  };
  // nn.LSTM's weights come transposed (b = w.t()): their panels are
  // transposed blocks of w, with no transposed copy of w made first.
  const bool of_transpose = !gate_rows && b.stride(0) == 1 && b.stride(1) != 1;
  const auto type = b.scalar_type();
  if (type == at::kBFloat16 || type == at::kHalf) {
    // A pair of rows of a VNNI panel is a 32-bit word of a row of w.
    if (!of_transpose || b.stride(1) != k || k % 2 != 0) return vnni_panels(ordered());
    at::Tensor panels = at::empty({k, n}, b.options());
    transposed_panels(reinterpret_cast<const float*>(b.const_data_ptr()), k / 2, n, column,
                      reinterpret_cast<float*>(panels.data_ptr()));
    return panels;
  }
  if (type != at::kFloat) return ordered();
  const at::Tensor src = of_transpose ? b.t().contiguous() : b.contiguous();
  at::Tensor panels = at::empty({k, n}, b.options());
  const float* from = src.const_data_ptr<float>();
  float* dst = panels.data_ptr<float>();
  if (of_transpose) {
    transposed_panels(from, k, n, column, dst);
    return panels;
  }
  // The panel of columns [j, j + width) starts at k * j.
  for (int64_t j = 0; j < n; j += kPanel) {
    const int64_t width = std::min(kPanel, n - j);
    float* panel = dst + k * j;
    for (int64_t p = 0; p < k; ++p) {
      const float* row = from + (gate_rows ? order[p] : p) * n;
      float* out = panel + p * width;
      for (int64_t c = j; c < j + width; ++c) out[c - j] = row[column(c)];
    }
  }
  return panels;
}

namespace {

// Moves the element of each position p of `order.size()` blocks of `width`
// values at t (block stride `width`) to position order[p], cycle by cycle.
template <typename T>
void permute_blocks(T* t, const std::vector<int64_t>& order, int64_t width) {
  std::vector<bool> done(order.size());
  std::vector<T> carry(width), next(width);
  for (size_t start = 0; start < order.size(); ++start) {
    if (done[start]) continue;
    std::copy_n(t + start * width, width, carry.begin());
    for (size_t p = start; !done[p]; p = order[p]) {
      done[p] = true;
      T* to = t + order[p] * width;
      std::copy_n(to, width, next.begin());
      std::copy_n(carry.begin(), width, to);
      std::swap(carry, next);
    }
  }
}

}  // namespace

void to_pytorch_gate_order(at::Tensor& t, int64_t dim, int64_t group) {
  const int64_t hidden = t.size(dim) / 4;
  if (group >= hidden) return;
  const std::vector<int64_t> order = gate_order(hidden, group);
  const int64_t outer = t.numel() / (t.size(dim) * t.stride(dim)), width = t.stride(dim);
  AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "to_pytorch_gate_order", [&] {
    for (int64_t o = 0; o < outer; ++o) {
      permute_blocks(t.data_ptr<scalar_t>() + o * t.size(dim) * width, order, width);
    }
  });
}

void gemm_serial(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                 const float* b_panels, int64_t /*ldb*/, float* c, int64_t ldc, bool accumulate) {
  if (handled_empty(m, n, k, c, ldc, accumulate)) return;
  if (m <= kFewRows) {
    return kernels().few_rows_gemm(m, n, k, a, lda, b_panels, kPanel, c, ldc, accumulate);
  }
  panel_tiles(0, tile_count(m, n), m, n, k, a, lda, b_panels, c, ldc, accumulate);
}

void gemm_parallel(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                   const float* b_panels, float* c, int64_t ldc, bool accumulate) {
  if (handled_empty(m, n, k, c, ldc, accumulate)) return;
  const int64_t tiles = tile_count(m, n);
  at::parallel_for(0, tiles, grain(2 * m * n * k, tiles), [&](int64_t begin, int64_t end) {
    panel_tiles(begin, end, m, n, k, a, lda, b_panels, c, ldc, accumulate);
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

namespace {

// C[m,n] (+)= A[k,m]^T B[k,n] by slices of A transposed in cache.
void float_tn(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
              int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  // One task per band of kTileRows output rows: it transposes each slice of
  // its columns of A once and reuses it for every tile along n.
  const int64_t bands = ceil_div(m, kTileRows);
  at::parallel_for(0, bands, grain(2 * m * n * k, bands), [&](int64_t begin, int64_t end) {
    std::vector<float> slice(kTileRows * kSliceDepth);
    for (int64_t band = begin; band < end; ++band) {
      const int64_t i = band * kTileRows, rows = std::min(kTileRows, m - i);
      for (int64_t p = 0; p < k; p += kSliceDepth) {
        const int64_t depth = std::min(kSliceDepth, k - p);
        kernels().transpose(a + p * lda + i, lda, depth, rows, slice.data(), kSliceDepth);
        for (int64_t j = 0; j < n; j += 256) {
          at::native::cpublas::brgemm(rows, std::min<int64_t>(256, n - j), depth, kSliceDepth, ldb,
                                      ldc, accumulate || p > 0, slice.data(), b + p * ldb + j,
                                      c + i * ldc + j);
        }
      }
    }
  });
}

}  // namespace

void gemm_tn_parallel(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                      const float* b, int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  if (handled_empty(m, n, k, c, ldc, accumulate)) return;
  if (m <= n) return float_tn(m, n, k, a, lda, b, ldb, c, ldc, accumulate);
  // Transposing the narrower operand costs less (the gates are 4H wide, the
  // inputs and states often H): B^T once (n x k, which a block of rows
  // bounds), then C^T = B^T A a band of C's rows at a time, each transposed
  // into C: no buffer the size of C.
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

void gemm_tn_parallel(int64_t m, int64_t n, int64_t k, const double* a, int64_t lda,
                      const double* b, int64_t ldb, double* c, int64_t ldc, bool accumulate) {
  dgemm(m, n, k, a, lda, b, ldb, c, ldc, accumulate, true);
}

}  // namespace lstm_ext::cpu
