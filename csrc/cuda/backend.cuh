#pragma once
// The real GPU behind executor.cuh: kernel launches, cuBLAS and copies, all
// on the current stream, none waiting on the host. cuBLAS runs on torch's
// handle for that stream, so its workspace (allocated by torch, as CUDA graph
// capture needs) and its TF32 setting are torch's. ATen's own gemm wrapper
// (at::cuda::blas::gemm) is not exported from libtorch_cuda, hence cuBLAS.

#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/Exceptions.h>
#include <c10/cuda/CUDAException.h>

namespace lstm_ext::cuda {

inline cublasOperation_t cublas_op(char op) { return op == 't' ? CUBLAS_OP_T : CUBLAS_OP_N; }

inline cublasStatus_t cublas_gemm(cublasHandle_t handle, cublasOperation_t transa,
                                  cublasOperation_t transb, int m, int n, int k,
                                  const float* alpha, const float* a, int lda, const float* b,
                                  int ldb, const float* beta, float* c, int ldc) {
  return cublasSgemm(handle, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

inline cublasStatus_t cublas_gemm(cublasHandle_t handle, cublasOperation_t transa,
                                  cublasOperation_t transb, int m, int n, int k,
                                  const double* alpha, const double* a, int lda, const double* b,
                                  int ldb, const double* beta, double* c, int ldc) {
  return cublasDgemm(handle, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

struct Backend {
  // Enough blocks of 256 threads to fill any GPU many times over; a step
  // with more cells (over 16 million) loops in the kernels.
  static constexpr int64_t max_blocks = 65535;

  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  cublasHandle_t handle = at::cuda::getCurrentCUDABlasHandle();

  template <typename... Params, typename... Args>
  void launch(void (*kernel)(Params...), dim3 grid, dim3 block, const Args&... args) const {
    kernel<<<grid, block, 0, stream>>>(args...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  // Sizes and leading dimensions fit in int: check_layer_args bounds them.
  template <typename T>
  void gemm(char transa, char transb, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
            int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) const {
    TORCH_CUDABLAS_CHECK(cublas_gemm(handle, cublas_op(transa), cublas_op(transb),
                                     static_cast<int>(m), static_cast<int>(n),
                                     static_cast<int>(k), &alpha, a, static_cast<int>(lda), b,
                                     static_cast<int>(ldb), &beta, c, static_cast<int>(ldc)));
  }

  void memcpy(void* dst, const void* src, size_t bytes) const {
    C10_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream));
  }
};

}  // namespace lstm_ext::cuda
