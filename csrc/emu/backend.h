#pragma once
// The emulated GPU behind csrc/cuda/executor.cuh: kernels run on the calling
// thread, CUDA thread by CUDA thread; GEMMs go to the Fortran BLAS that
// libtorch_cpu exports (MKL), whose column-major interface cuBLAS copies, so
// the executor's mapping of row-major products onto it runs here exactly as
// it does on the GPU.

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstring>

#include "../blas.h"

// Last: its macros are for our kernels, not for other headers.
#include "shim.h"

namespace lstm_ext::emu {

inline void blas_gemm(const char* transa, const char* transb, const int* m, const int* n,
                      const int* k, const float* alpha, const float* a, const int* lda,
                      const float* b, const int* ldb, const float* beta, float* c,
                      const int* ldc) {
  sgemm_(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

inline void blas_gemm(const char* transa, const char* transb, const int* m, const int* n,
                      const int* k, const double* alpha, const double* a, const int* lda,
                      const double* b, const int* ldb, const double* beta, double* c,
                      const int* ldc) {
  dgemm_(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

struct Backend {
  // Small grids, so that the test shapes take the kernels' grid-stride paths.
  static constexpr int64_t max_blocks = 2;

  template <typename... Params, typename... Args>
  void launch(void (*kernel)(Params...), dim3 grid, dim3 block, const Args&... args) const {
    gridDim = grid;
    blockDim = block;
    for (unsigned b = 0; b < grid.x * grid.y * grid.z; ++b) {
      blockIdx = {b % grid.x, b / grid.x % grid.y, b / (grid.x * grid.y)};
      for (unsigned t = 0; t < block.x * block.y * block.z; ++t) {
        threadIdx = {t % block.x, t / block.x % block.y, t / (block.x * block.y)};
        kernel(args...);
      }
    }
  }

  // cuBLAS's gemm contract, its argument checks included (BLAS only prints
  // a message where cuBLAS fails).
  template <typename T>
  void gemm(char transa, char transb, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
            int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) const {
    TORCH_CHECK((transa == 'n' || transa == 't') && (transb == 'n' || transb == 't'),
                "emulated cuBLAS: bad operation");
    TORCH_CHECK(m >= 0 && n >= 0 && k >= 0, "emulated cuBLAS: negative size");
    TORCH_CHECK(lda >= std::max<int64_t>(1, transa == 'n' ? m : k), "emulated cuBLAS: bad lda");
    TORCH_CHECK(ldb >= std::max<int64_t>(1, transb == 'n' ? k : n), "emulated cuBLAS: bad ldb");
    TORCH_CHECK(ldc >= std::max<int64_t>(1, m), "emulated cuBLAS: bad ldc");
    const int m32 = static_cast<int>(m), n32 = static_cast<int>(n), k32 = static_cast<int>(k);
    const int lda32 = static_cast<int>(lda), ldb32 = static_cast<int>(ldb),
              ldc32 = static_cast<int>(ldc);
    blas_gemm(&transa, &transb, &m32, &n32, &k32, &alpha, a, &lda32, b, &ldb32, &beta, c, &ldc32);
  }

  void memcpy(void* dst, const void* src, size_t bytes) const { std::memcpy(dst, src, bytes); }
};

}  // namespace lstm_ext::emu
