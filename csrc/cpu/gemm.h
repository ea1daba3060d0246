#pragma once
// Row-major C[m,n] (+)= A[m,k] B[k,n] on raw pointers: no allocation, no
// dispatcher (weight_layout aside: it runs once per call, before the loop).
//
// float goes to oneDNN's brgemm micro-kernel through ATen's public
// at::native::cpublas::brgemm (JIT, AVX2 up to AVX-512; ATen falls back to
// its own BLAS call where oneDNN cannot run), in tiles and K slices. On the
// machines we measure, MKL's sgemm reaches half of that (it takes a generic
// code path on non-Intel CPUs). bfloat16 and float16 go the same way, on
// operands in pairs (brgemm_pairs.h). double has no brgemm: MKL's dgemm,
// which libtorch_cpu exports.

#include "../types.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <type_traits>

namespace lstm_ext::cpu {

// Below this many flops, work runs on the calling thread: waking the pool
// costs more than it saves...
constexpr int64_t kParallelFlops = 1 << 20;
// ...unless it streams at least this many bytes of weights: products of a
// few rows (a decode step) are bound by reading their weights, which the
// threads read faster together (benchmarks/README.md, decode steps).
constexpr int64_t kParallelBytes = 1 << 19;

inline bool worth_threads(int64_t flops, int64_t weight_bytes) {
  return flops >= kParallelFlops || weight_bytes >= kParallelBytes;
}

// Panels of laid-out float, bfloat16 and float16 weights are this many
// columns wide.
constexpr int64_t kPanel = 64;

// The products by a weight, which is the same at every step: it is laid out
// once per call, its gates dimension (if any) in the gate order of `group`
// (gate_order). float goes in column panels, each kPanel wide (the last one
// narrower) and contiguous over k, which brgemm streams without a stride
// (10-25% faster than row-major here); bfloat16 and float16 likewise, in VNNI
// pairs (vnni_panels); double is made row-major for MKL. `b` is (k, n), any
// strides.
at::Tensor weight_layout(const at::Tensor& b, Gates gates, int64_t group);

// t (float or double, contiguous), whose dimension dim runs over gates in the
// gate order of `group`, put in PyTorch's order in place.
void to_pytorch_gate_order(at::Tensor& t, int64_t dim, int64_t group);

// Column col0 on of a laid-out (k, n) weight, as the products below take it
// (with n as ldb). In column panels, col0 must be the first column of a
// panel.
inline const float* column(const float* b, int64_t k, int64_t col0) { return b + k * col0; }
inline const double* column(const double* b, int64_t, int64_t col0) { return b + col0; }

// The products of the native path's types (native.h), and all those that
// brgemm runs.
template <typename T>
using IfReduced = std::enable_if_t<is_reduced_precision_v<T>>;
template <typename T>
using IfBrgemm = std::enable_if_t<std::is_same_v<T, float> || is_reduced_precision_v<T>>;

// A contiguous bfloat16/float16 (k, n) matrix as brgemm takes it: column
// panels kPanel wide (the last one narrower), each over k rounded up to even
// (a zero row), in pairs of rows: rows 2q and 2q + 1 of the panel's columns
// interleaved (the VNNI layout).
at::Tensor vnni_panels(const at::Tensor& b);

// The depth of a VNNI panel over k: k rounded up to even.
inline int64_t vnni_depth(int64_t k) { return (k + 1) / 2 * 2; }

template <typename T, typename = IfReduced<T>>
const T* column(const T* b, int64_t k, int64_t col0) {
  return b + vnni_depth(k) * col0;
}

// The products. float, bfloat16 and float16 (T) go through brgemm, C in
// float (b laid out by weight_layout); double through MKL (b row-major).

// On the calling thread: the time loop calls it from inside its own threads.
// b is from column(); ldb is the laid-out weight's n (double only).
template <typename T, typename = IfBrgemm<T>>
void gemm_serial(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b_laid_out,
                 int64_t ldb, float* c, int64_t ldc, bool accumulate);
void gemm_serial(int64_t m, int64_t n, int64_t k, const double* a, int64_t lda,
                 const double* b_laid_out, int64_t ldb, double* c, int64_t ldc,
                 bool accumulate);

// Tiles spread over ATen's intra-op threads: the whole-sequence products.
template <typename T, typename = IfBrgemm<T>>
void gemm_parallel(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b_laid_out,
                   float* c, int64_t ldc, bool accumulate);
void gemm_parallel(int64_t m, int64_t n, int64_t k, const double* a, int64_t lda,
                   const double* b_laid_out, double* c, int64_t ldc, bool accumulate);

// C[m,n] (+)= A[k,m]^T B[k,n], parallel: weight gradients, which sum over the
// k rows of a sequence. A is transposed slice by slice in cache; float with
// m > n transposes B once instead (n x k, which a block bounds), 16-bit puts
// B in pairs once.
template <typename T, typename = IfBrgemm<T>>
void gemm_tn_parallel(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b,
                      int64_t ldb, float* c, int64_t ldc, bool accumulate);
void gemm_tn_parallel(int64_t m, int64_t n, int64_t k, const double* a, int64_t lda,
                      const double* b, int64_t ldb, double* c, int64_t ldc, bool accumulate);

}  // namespace lstm_ext::cpu
