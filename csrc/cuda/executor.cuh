#pragma once
// The executor of layer.h for a GPU, on top of a Backend that owns the
// device: real CUDA (backend.cuh) or its host emulation (csrc/emu/backend.h).
// Everything here, the launch geometry and the mapping of row-major products
// onto column-major BLAS included, runs the same in both. A Backend supplies
//   launch(kernel, grid, block, args...)    on the current stream
//   gemm(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
//                                           cuBLAS's column-major contract
//   memcpy(dst, src, bytes)                 device to device, on the current stream
//   max_blocks                              the largest grid to launch
// Nothing here waits on the host or allocates, so a whole layer can be
// captured in a CUDA graph.

#include "../types.h"
#include "kernels.cuh"

#include <algorithm>

namespace lstm_ext::cuda {

template <typename Backend, typename scalar_t_>
struct Executor {
  using scalar_t = scalar_t_;
  // Products and cells in the same type (device_ops.h upcasts float16 and bfloat16).
  using math_t = scalar_t;
  static constexpr bool kHasNative = false;
  static constexpr int64_t kThreads = 256;

  Backend backend;

  // The steps of a sequence are serial, the sequences of a step are one
  // launch: a single range covers the whole batch, whatever the work.
  template <typename Body>
  void for_each_row_range(const Steps& steps, int64_t /*flops_per_row*/, const Body& body) const {
    body(0, steps.size(0));
  }

  // Each step is one launch per pass over the whole batch: never split.
  bool split_by_units(const Steps&, int64_t, int64_t) const { return false; }

  template <typename Body>
  void for_each_part(int64_t extent, int64_t /*align*/, const Body& body) const {
    body(0, extent);
  }

  // PyTorch's gate order (layer.h); ranges are whole.
  int64_t gate_group(int64_t H) const { return H; }
  int64_t unit_align() const { return 1; }
  int64_t column_align() const { return 1; }

  // One launch per pass: no chunks.
  int64_t chunk_units(int64_t /*rows*/, int64_t H) const { return H; }

  // cuBLAS takes the weights row-major, the gates in PyTorch's order.
  Tensor weights(const Tensor& b, Gates /*gates*/) const { return b.contiguous(); }
  int64_t laid_out_numel(int64_t k, int64_t n) const { return k * n; }

  void to_pytorch_gate_order(Tensor& /*t*/, int64_t /*dim*/, int64_t /*H*/) const {}

  const scalar_t* column(const scalar_t* b, int64_t /*k*/, int64_t col0) const {
    return b + col0;
  }

  void step_gemm(int64_t m, int64_t n, int64_t k, const scalar_t* a, int64_t lda,
                 const scalar_t* b, int64_t ldb, scalar_t* c, int64_t ldc,
                 bool accumulate) const {
    gemm(m, n, k, a, lda, b, ldb, c, ldc, accumulate);
  }

  void sequence_gemm(int64_t m, int64_t n, int64_t k, const scalar_t* a, int64_t lda,
                     const scalar_t* b, scalar_t* c, int64_t ldc, bool accumulate) const {
    gemm(m, n, k, a, lda, b, n, c, ldc, accumulate);
  }

  // Row-major C = A^T B is column-major C^T = B^T A, A read transposed.
  void weight_gemm(int64_t m, int64_t n, int64_t k, const scalar_t* a, int64_t lda,
                   const scalar_t* b, int64_t ldb, scalar_t* c, int64_t ldc,
                   bool accumulate) const {
    if (m == 0 || n == 0) return;
    backend.gemm('n', 't', n, m, k, scalar_t(1), b, ld(ldb), a, ld(lda), scalar_t(accumulate), c,
                 ldc);
  }

  void copy(scalar_t* dst, const scalar_t* src, int64_t n) const {
    if (n > 0) backend.memcpy(dst, src, n * sizeof(scalar_t));
  }

  void add(scalar_t* dst, const scalar_t* a, const scalar_t* b, int64_t n) const {
    launch(n, add_kernel<scalar_t>, dst, a, b, n);
  }

  void scale(scalar_t* dst, const scalar_t* a, const scalar_t* s, int64_t n) const {
    launch(n, mul_kernel<scalar_t>, dst, a, s, n);
  }

  void layer_norm_into(scalar_t* dst, const scalar_t* src, int64_t rows, int64_t width,
                       const scalar_t* gamma, int64_t c0, int64_t c1, bool accumulate,
                       scalar_t* rstd_out = nullptr) const {
    launch(rows, layer_norm_into_kernel<scalar_t>, dst, src, rows, width, gamma, c0, c1,
           accumulate, rstd_out);
  }

  void layer_norm_backward_into(scalar_t* dst, const scalar_t* dy, const scalar_t* x_hat,
                                const scalar_t* rstd, const scalar_t* gamma, int64_t rows,
                                int64_t width, int64_t c0, int64_t c1) const {
    launch(rows, layer_norm_backward_kernel<scalar_t>, dst, dy, x_hat, rstd, gamma, rows, width,
           c0, c1);
  }

  void cell_backward_layer_norm_output(int64_t r0, int64_t r1, int64_t u0, int64_t u1,
                                       int64_t H, const scalar_t* gates, const scalar_t* c,
                                       const scalar_t* gamma, const scalar_t* beta,
                                       const scalar_t* dh, const scalar_t* dh_extra,
                                       scalar_t* dgates, scalar_t* /*dgates_wide*/,
                                       scalar_t* dc_hat, scalar_t* h_out) const {
    launch(r1 - r0, cell_backward_layer_norm_output_kernel<scalar_t>, r0, r1, u0, u1, H, gates,
           c, gamma, beta, dh, dh_extra, dgates, dc_hat, h_out);
  }

  void cell_backward_layer_norm_state(int64_t r0, int64_t r1, int64_t u0, int64_t u1,
                                      int64_t carried, int64_t H, const scalar_t* gates,
                                      const scalar_t* c, const scalar_t* c_prev,
                                      const scalar_t* c0, const scalar_t* zone,
                                      const scalar_t* gamma, const scalar_t* dc_hat,
                                      scalar_t* dc_state, scalar_t* dgates,
                                      scalar_t* /*dgates_wide*/, scalar_t* dgamma) const {
    launch(r1 - r0, cell_backward_layer_norm_state_kernel<scalar_t>, r0, r1, u0, u1, carried, H,
           gates, c, c_prev, c0, zone, gamma, dc_hat, dc_state, dgates, dgamma);
  }

  void cell_output_layer_norm(int64_t r0, int64_t r1, int64_t u0, int64_t u1, int64_t H,
                              const scalar_t* activated, const scalar_t* c,
                              const scalar_t* gamma, const scalar_t* beta,
                              scalar_t* h_out) const {
    launch(r1 - r0, cell_output_layer_norm_kernel<scalar_t>, r0, r1, u0, u1, H, activated, c,
           gamma, beta, h_out);
  }

  void add_scaled(scalar_t* dst, const scalar_t* a, const scalar_t* s, int64_t n) const {
    launch(n, add_mul_kernel<scalar_t>, dst, a, s, n);
  }

  void zoneout(scalar_t* dst, const scalar_t* prev, const scalar_t* d, int64_t n) const {
    launch(n, zoneout_kernel<scalar_t>, dst, prev, d, n);
  }

  void zoneout_backward(scalar_t* fresh, scalar_t* kept, const scalar_t* a, const scalar_t* b,
                        const scalar_t* d, int64_t n) const {
    launch(n, zoneout_backward_kernel<scalar_t>, fresh, kept, a, b, d, n);
  }

  // The semantics of cpu::Executor::cell_forward, cell_backward and
  // cell_tangent, in PyTorch's gate order.
  // Its activations go to gates in place: layer.h passes `activated` apart
  // from gates, and `dgates_wide`, only to executors whose math_t differs
  // from scalar_t.
  void cell_forward(int64_t r0, int64_t r1, int64_t u0, int64_t u1, int64_t carried, int64_t H,
                    scalar_t* gates, scalar_t* /*activated*/, const scalar_t* bias,
                    const scalar_t* c_prev, const scalar_t* c0, const scalar_t* zone,
                    scalar_t* c_fresh, scalar_t* c_out, scalar_t* h_out) const {
    launch((r1 - r0) * (u1 - u0), cell_forward_kernel<scalar_t>, r0, r1, u0, u1, carried, H,
           gates, bias, c_prev, c0, zone, c_fresh, c_out, h_out);
  }

  void cell_backward(int64_t r0, int64_t r1, int64_t u0, int64_t u1, int64_t carried, int64_t H,
                     const scalar_t* gates, const scalar_t* cells, const scalar_t* c_prev,
                     const scalar_t* c0, const scalar_t* zone, const scalar_t* dh,
                     const scalar_t* dh_extra, scalar_t* dc_state, scalar_t* dgates,
                     scalar_t* /*dgates_wide*/, scalar_t* h_out) const {
    launch((r1 - r0) * (u1 - u0), cell_backward_kernel<scalar_t>, r0, r1, u0, u1, carried, H,
           gates, cells, c_prev, c0, zone, dh, dh_extra, dc_state, dgates, h_out);
  }

  void cell_tangent(int64_t r0, int64_t r1, int64_t u0, int64_t u1, int64_t carried, int64_t H,
                    const scalar_t* gates, const scalar_t* cells, const scalar_t* c_prev,
                    const scalar_t* c0, const scalar_t* t_bias, const scalar_t* t_gates,
                    const scalar_t* t_c_prev, const scalar_t* t_c0, scalar_t* t_c_out,
                    scalar_t* t_h_out, scalar_t* h_out) const {
    launch((r1 - r0) * (u1 - u0), cell_tangent_kernel<scalar_t>, r0, r1, u0, u1, carried, H,
           gates, cells, c_prev, c0, t_bias, t_gates, t_c_prev, t_c0, t_c_out, t_h_out, h_out);
  }

 private:
  // Row-major C = A B is column-major C^T = B^T A^T: the operands swap.
  void gemm(int64_t m, int64_t n, int64_t k, const scalar_t* a, int64_t lda, const scalar_t* b,
            int64_t ldb, scalar_t* c, int64_t ldc, bool accumulate) const {
    if (m == 0 || n == 0) return;
    backend.gemm('n', 'n', n, m, k, scalar_t(1), b, ld(ldb), a, ld(lda), scalar_t(accumulate), c,
                 ldc);
  }

  // cuBLAS wants every leading dimension >= 1, even that of an operand with
  // no columns (an input of size 0), which it never reads.
  static int64_t ld(int64_t v) { return std::max<int64_t>(v, 1); }

  // One thread per element, up to max_blocks blocks; the kernels loop over the rest.
  template <typename Kernel, typename... Args>
  void launch(int64_t elements, Kernel kernel, const Args&... args) const {
    if (elements <= 0) return;
    const int64_t blocks = std::min((elements + kThreads - 1) / kThreads, Backend::max_blocks);
    backend.launch(kernel, dim3(static_cast<unsigned>(blocks)), dim3(kThreads), args...);
  }
};

}  // namespace lstm_ext::cuda
