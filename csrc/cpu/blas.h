#pragma once
// Row-major GEMM on raw pointers, straight into BLAS: the time loop calls it
// once or twice per step, so it must not allocate or go through the
// dispatcher. libtorch_cpu exports MKL's Fortran symbols; ATen's own
// cpublas::gemm overloads for float/double are not exported to extensions.

#include <cstdint>
#include <type_traits>

extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc);
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b, const int* ldb,
            const double* beta, double* c, const int* ldc);
}

namespace lstm_ext::cpu {

// C[m,n] = alpha * op(A)[m,k] op(B)[k,n] + beta * C, all row-major. BLAS is
// column-major, so it computes C^T = op(B)^T op(A)^T. Dimensions were checked
// to fit in int by check_layer_args.
template <typename scalar_t>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, scalar_t alpha,
          const scalar_t* a, int64_t lda, const scalar_t* b, int64_t ldb, scalar_t beta,
          scalar_t* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  const char ta = trans_a ? 'T' : 'N', tb = trans_b ? 'T' : 'N';
  const int M = static_cast<int>(m), N = static_cast<int>(n), K = static_cast<int>(k);
  const int LDA = static_cast<int>(lda), LDB = static_cast<int>(ldb), LDC = static_cast<int>(ldc);
  if constexpr (std::is_same_v<scalar_t, float>) {
    sgemm_(&tb, &ta, &N, &M, &K, &alpha, b, &LDB, a, &LDA, &beta, c, &LDC);
  } else {
    static_assert(std::is_same_v<scalar_t, double>);
    dgemm_(&tb, &ta, &N, &M, &K, &alpha, b, &LDB, a, &LDA, &beta, c, &LDC);
  }
}

}  // namespace lstm_ext::cpu
