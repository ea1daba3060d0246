#pragma once
// The CPU executor for layer.h. The threads split the batch, not the steps:
// sequences are independent but for the weights they read, so each thread
// runs the whole time loop over its own range of sequences with no barrier,
// and its gates and states stay in its own cache. The cell passes are the
// vectorised kernels of kernels.h; products go to gemm.h.

#include "../lstm.h"
#include "gemm.h"
#include "kernels.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>

namespace lstm_ext::cpu {

template <typename scalar_t_>
struct Executor {
  using scalar_t = scalar_t_;

  // Calls body(first, last) once per thread, each with its own range of
  // sequences [first, last), balanced by their numbers of steps. Loops of
  // little work stay on the calling thread: waking the others would cost more.
  template <typename Body>
  void for_each_row_range(const Steps& steps, int64_t flops_per_row, const Body& body) const {
    const int64_t batch = steps.size(0);
    const bool small = steps.rows() * flops_per_row < kParallelFlops;
    const int64_t parts = small ? 1 : std::min<int64_t>(at::get_num_threads(), batch);
    const std::vector<int64_t> bounds = steps.split(parts);
    at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
      for (int64_t part = begin; part < end; ++part) body(bounds[part], bounds[part + 1]);
    });
  }

  Tensor weights(const Tensor& b) const { return weight_layout(b); }

  void step_gemm(int64_t m, int64_t n, int64_t k, const scalar_t* a, int64_t lda,
                 const scalar_t* b, scalar_t* c, int64_t ldc, bool accumulate) const {
    gemm_serial(m, n, k, a, lda, b, c, ldc, accumulate);
  }

  void sequence_gemm(int64_t m, int64_t n, int64_t k, const scalar_t* a, int64_t lda,
                     const scalar_t* b, scalar_t* c, int64_t ldc, bool accumulate) const {
    gemm_parallel(m, n, k, a, lda, b, c, ldc, accumulate);
  }

  void weight_gemm(int64_t m, int64_t n, int64_t k, const scalar_t* a, int64_t lda,
                   const scalar_t* b, int64_t ldb, scalar_t* c, int64_t ldc) const {
    gemm_tn_parallel(m, n, k, a, lda, b, ldb, c, ldc);
  }

  void copy(scalar_t* dst, const scalar_t* src, int64_t n) const {
    if (n > 0) std::memcpy(dst, src, n * sizeof(scalar_t));
  }

  void add(scalar_t* dst, const scalar_t* a, const scalar_t* b, int64_t n) const {
    passes.add(dst, a, b, n);
  }

  // Rows [r0, r1) of one step. gates (row stride 4H): pre-activations less the
  // bias in, activations out; bias (4H) may be null. Row r's c_{t-1} is row r
  // of c_prev if r < carried, else of c0. Writes c_t to c_out, h_t to h_out.
  void cell_forward(int64_t r0, int64_t r1, int64_t carried, int64_t H, scalar_t* gates,
                    const scalar_t* bias, const scalar_t* c_prev, const scalar_t* c0,
                    scalar_t* c_out, scalar_t* h_out) const {
    passes.forward(r0, r1, carried, H, gates, bias, c_prev, c0, c_out, h_out);
  }

  // Rows [r0, r1) of one step; c_{t-1} as in cell_forward. dh (row stride H)
  // plus dh_extra when given is dL/dh_t. dc_state: dL/dc_t in, dL/dc_{t-1}
  // out. Writes the pre-activation gate gradients to dgates and, when h_out
  // is given, h_t.
  void cell_backward(int64_t r0, int64_t r1, int64_t carried, int64_t H, const scalar_t* gates,
                     const scalar_t* cells, const scalar_t* c_prev, const scalar_t* c0,
                     const scalar_t* dh, const scalar_t* dh_extra, scalar_t* dc_state,
                     scalar_t* dgates, scalar_t* h_out) const {
    passes.backward(r0, r1, carried, H, gates, cells, c_prev, c0, dh, dh_extra, dc_state, dgates,
                    h_out);
  }

  // Rows [r0, r1) of one step; c_{t-1} as in cell_forward, its tangent from
  // t_c_prev or t_c0 alike. t_gates (row stride 4H): the tangents of the gate
  // pre-activations less that of the bias (t_bias, may be null). Writes the
  // tangents of c_t and h_t to t_c_out and t_h_out and, when h_out is given,
  // h_t.
  void cell_tangent(int64_t r0, int64_t r1, int64_t carried, int64_t H, const scalar_t* gates,
                    const scalar_t* cells, const scalar_t* c_prev, const scalar_t* c0,
                    const scalar_t* t_bias, const scalar_t* t_gates, const scalar_t* t_c_prev,
                    const scalar_t* t_c0, scalar_t* t_c_out, scalar_t* t_h_out,
                    scalar_t* h_out) const {
    passes.tangent(r0, r1, carried, H, gates, cells, c_prev, c0, t_bias, t_gates, t_c_prev, t_c0,
                   t_c_out, t_h_out, h_out);
  }

  // The cell passes of the level chosen for this CPU.
  const CellKernels<scalar_t>& passes = kernels().cells<scalar_t>();
};

}  // namespace lstm_ext::cpu
