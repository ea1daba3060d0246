#pragma once
// bfloat16/float16 operands as oneDNN's brgemm takes them, the one way into
// it for them, and the tile state around it.
//
// brgemm_pairs checks what the kernels need on every call, so that a
// violation is an error on every CPU that runs the native path, not a crash
// on some: K even (AMX multiplies k in pairs; an odd K dies with SIGILL there,
// while AVX512_BF16's kernel accepts it), B in VNNI pairs (rows 2q and 2q + 1
// of a column side by side) only where this CPU's kernel takes them
// (pairs_kernel), leading dimensions that hold a row.

#include "gemm.h"

#include <cstdint>

namespace lstm_ext::cpu {

// Rows [p0, p1) (p0 even) of the (k, n) matrix b (row stride ldb) in VNNI
// pairs of rows, n wide, at dst: the pair of rows (p, p + 1) is the 2n values
// from dst + (p - p0) * n on, the row past k zero.
template <typename T, typename = IfReduced<T>>
void to_pairs(const T* b, int64_t ldb, int64_t k, int64_t n, int64_t p0, int64_t p1, T* dst);

// C[m,n] (+)= A[m,k] B[k,n]: A row-major (lda), B as k / 2 rows of pairs
// (ldb columns per row of pairs), C float (ldc).
template <typename T, typename = IfReduced<T>>
void brgemm_pairs(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b_pairs,
                  int64_t ldb, float* c, int64_t ldc, bool accumulate);

// The same for any k > 0, B's pairs over k rounded up to even (a zero row
// last): an even k's pairs through brgemm_pairs; an odd k's last row as a
// rank-one update here, so that A needs no zero column (A may be x or h, in
// place). Its products are exact in float, as brgemm's are.
template <typename T, typename = IfReduced<T>>
void pairs_product(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b_pairs,
                   int64_t ldb, float* c, int64_t ldc, bool accumulate);

// ATen keeps, per thread, the brgemm kernel whose AMX tiles it configured
// last, and configures again only for another kernel. Code that runs AMX
// outside ATen's brgemm (oneDNN's own primitives: torch's bf16 matmul,
// nn.LSTM) releases the tiles without ATen knowing: our next call with that
// same kernel would run on unconfigured tiles. So every task of 16-bit
// products (T 16-bit; for other types it does nothing) starts by releasing
// (the first product then configures) and releases at its end, also when it
// throws.
void release_tiles();

template <typename T>
struct TileScope {
  TileScope() {
    if constexpr (is_reduced_precision_v<T>) release_tiles();
  }
  ~TileScope() {
    if constexpr (is_reduced_precision_v<T>) release_tiles();
  }
  TileScope(const TileScope&) = delete;
  TileScope& operator=(const TileScope&) = delete;
};

}  // namespace lstm_ext::cpu
