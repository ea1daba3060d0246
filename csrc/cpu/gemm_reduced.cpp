// The products of the native bfloat16/float16 path (gemm.h): operands of the
// 16-bit type, accumulation and C in float, through oneDNN's brgemm, which
// runs them on the CPU's bf16/fp16 dot products (AVX512_BF16, AMX, ...), and
// the checked call into it (brgemm_pairs.h). brgemm wants B in the VNNI
// layout: pairs of consecutive k of one column side by side, k rounded up to
// even with a zero row.

#include "gemm.h"

#include "brgemm_pairs.h"
#include "native.h"
#include "tiles.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace lstm_ext::cpu {
namespace {

// Rows [p0, p1) (p0 even) of the (k, n) matrix b (row stride ldb) into VNNI
// pairs of rows of width n at dst: the pair of rows (p, p + 1) is the 2n
// values from dst + (p - p0) * n on; a row past k is zero. On the bits
// (uint16_t), which the compiler vectorises.
template <typename T>
void to_vnni(const T* b, int64_t ldb, int64_t k, int64_t n, int64_t p0, int64_t p1, T* dst) {
  static_assert(sizeof(T) == sizeof(uint16_t));
  const auto* from = reinterpret_cast<const uint16_t*>(b);
  auto* to = reinterpret_cast<uint16_t*>(dst);
  for (int64_t p = p0; p < p1; p += 2) {
    uint16_t* pair = to + (p - p0) * n;
    const uint16_t* first = from + p * ldb;
    if (p + 1 < k) {
      const uint16_t* second = first + ldb;
      for (int64_t c = 0; c < n; ++c) {
        pair[2 * c] = first[c];
        pair[2 * c + 1] = second[c];
      }
    } else {
      for (int64_t c = 0; c < n; ++c) {
        pair[2 * c] = first[c];
        pair[2 * c + 1] = 0;
      }
    }
  }
}

}  // namespace

template <typename T, typename>
void brgemm_pairs(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b_pairs,
                  int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  constexpr auto dtype = c10::CppTypeToScalarType<T>::value;
  TORCH_CHECK(pairs_kernel(dtype), "lstm_ext: a ", dtype, " product with B in VNNI pairs, "
              "which oneDNN's brgemm on this CPU does not take (python -m lstm_ext.check "
              "says why)");
  TORCH_CHECK(m > 0 && n > 0 && k > 0 && k % 2 == 0, "lstm_ext: a ", dtype, " brgemm needs "
              "m and n positive and k even and positive (B's pairs; AMX takes k in pairs), "
              "got m=", m, " n=", n, " k=", k);
  TORCH_CHECK(lda >= k && ldb >= n && ldc >= n, "lstm_ext: a ", dtype, " brgemm's leading "
              "dimensions must hold a row: lda=", lda, " (k=", k, "), ldb=", ldb, " and ldc=",
              ldc, " (n=", n, ")");
  at::native::cpublas::brgemm(m, n, k, lda, ldb, ldc, accumulate, a, b_pairs, c);
}

void release_tiles() { at::native::cpublas::brgemm_release(); }

template <typename T, typename>
void pairs_product(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b_pairs,
                   int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  const int64_t even = k / 2 * 2;
  if (even > 0) brgemm_pairs(m, n, even, a, lda, b_pairs, ldb, c, ldc, accumulate);
  if (even == k) return;
  const T* last = b_pairs + even * ldb;  // row k - 1: the first of each pair
  const bool add = accumulate || even > 0;
  for (int64_t i = 0; i < m; ++i) {
    const float a_i = a[i * lda + even];
    float* c_i = c + i * ldc;
    for (int64_t j = 0; j < n; ++j) {
      const float product = a_i * float(last[2 * j]);
      c_i[j] = add ? c_i[j] + product : product;
    }
  }
}

at::Tensor vnni_panels(const at::Tensor& b) {
  const int64_t k = b.size(0), n = b.size(1), kp = vnni_depth(k);
  at::Tensor panels = at::empty({kp * n}, b.options());
  AT_DISPATCH_REDUCED_FLOATING_TYPES(b.scalar_type(), "vnni_panels", [&] {
    const scalar_t* from = b.const_data_ptr<scalar_t>();
    scalar_t* dst = panels.data_ptr<scalar_t>();
    for (int64_t j = 0; j < n; j += kPanel) {
      to_vnni(from + j, n, k, std::min(kPanel, n - j), 0, kp, dst + kp * j);
    }
  });
  return panels;
}

template <typename T, typename>
void gemm_serial(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b_panels,
                 int64_t /*ldb*/, float* c, int64_t ldc, bool accumulate) {
  if (handled_empty(m, n, k, c, ldc, accumulate)) return;
  panel_tiles(0, tile_count(m, n), m, n, k, a, lda, b_panels, c, ldc, accumulate);
}

template <typename T, typename>
void gemm_parallel(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b_panels,
                   float* c, int64_t ldc, bool accumulate) {
  if (handled_empty(m, n, k, c, ldc, accumulate)) return;
  const int64_t tiles = tile_count(m, n);
  at::parallel_for(0, tiles, grain(2 * m * n * k, tiles), [&](int64_t begin, int64_t end) {
    const TileScope<T> scope;
    panel_tiles(begin, end, m, n, k, a, lda, b_panels, c, ldc, accumulate);
  });
}

// C[m,n] (+)= A[k,m]^T B[k,n]: B in VNNI pairs once (its k rows are a block's
// rows at most), then per band of C's rows each slice of A transposed in
// cache, an odd slice with a zero column facing B's zero row.
template <typename T, typename>
void gemm_tn_parallel(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b,
                      int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  if (handled_empty(m, n, k, c, ldc, accumulate)) return;
  const int64_t kp = vnni_depth(k);
  std::vector<T> b_vnni(kp * n);
  const int64_t pairs = kp / 2;
  at::parallel_for(0, pairs, grain(2 * pairs * n, pairs), [&](int64_t begin, int64_t end) {
    to_vnni(b, ldb, k, n, 2 * begin, 2 * end, b_vnni.data() + 2 * begin * n);
  });
  const int64_t bands = ceil_div(m, kTileRows);
  at::parallel_for(0, bands, grain(2 * m * n * k, bands), [&](int64_t begin, int64_t end) {
    const TileScope<T> scope;
    std::vector<T> slice(kTileRows * kSliceDepth);
    for (int64_t band = begin; band < end; ++band) {
      const int64_t i = band * kTileRows, rows = std::min(kTileRows, m - i);
      for (int64_t p = 0; p < k; p += kSliceDepth) {
        const int64_t depth = std::min(kSliceDepth, k - p), even = vnni_depth(depth);
        for (int64_t r = 0; r < rows; ++r) {
          for (int64_t q = 0; q < depth; ++q) slice[r * kSliceDepth + q] = a[(p + q) * lda + i + r];
          if (even > depth) slice[r * kSliceDepth + depth] = T(0);
        }
        for (int64_t j = 0; j < n; j += 256) {
          brgemm_pairs(rows, std::min<int64_t>(256, n - j), even, slice.data(), kSliceDepth,
                       b_vnni.data() + p * n + 2 * j, n, c + i * ldc + j, ldc,
                       accumulate || p > 0);
        }
      }
    }
  });
}

#define LSTM_EXT_INSTANTIATE(T)                                                               \
  template void brgemm_pairs<T>(int64_t, int64_t, int64_t, const T*, int64_t, const T*, int64_t, \
                                float*, int64_t, bool);                                        \
  template void pairs_product<T>(int64_t, int64_t, int64_t, const T*, int64_t, const T*,        \
                                 int64_t, float*, int64_t, bool);                               \
  template void gemm_serial<T>(int64_t, int64_t, int64_t, const T*, int64_t, const T*, int64_t, \
                               float*, int64_t, bool);                                         \
  template void gemm_parallel<T>(int64_t, int64_t, int64_t, const T*, int64_t, const T*,       \
                                 float*, int64_t, bool);                                       \
  template void gemm_tn_parallel<T>(int64_t, int64_t, int64_t, const T*, int64_t, const T*,    \
                                    int64_t, float*, int64_t, bool);
LSTM_EXT_INSTANTIATE(c10::BFloat16)
LSTM_EXT_INSTANTIATE(c10::Half)
#undef LSTM_EXT_INSTANTIATE

}  // namespace lstm_ext::cpu
