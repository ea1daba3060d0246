#pragma once
// Row-major C[m,n] (+)= A[m,k] B[k,n] on raw pointers, for the time loop and
// the whole-sequence products alike: no allocation, no dispatcher.
//
// float goes to oneDNN's brgemm micro-kernel through ATen's public
// at::native::cpublas::brgemm (JIT, AVX2 up to AVX-512; ATen falls back to
// its own BLAS call where oneDNN cannot run), tiled across threads. On the
// machines we measure, MKL's sgemm reaches half of that (it takes a generic
// code path on non-Intel CPUs). double has no brgemm: MKL's dgemm, which
// libtorch_cpu exports.

#include <cstdint>

namespace lstm_ext::cpu {

void gemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
          int64_t ldb, float* c, int64_t ldc, bool accumulate);
void gemm(int64_t m, int64_t n, int64_t k, const double* a, int64_t lda, const double* b,
          int64_t ldb, double* c, int64_t ldc, bool accumulate);

}  // namespace lstm_ext::cpu
