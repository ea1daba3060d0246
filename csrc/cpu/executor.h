#pragma once
// The CPU executor for layer.h. The threads split the batch, not the steps:
// sequences are independent but for the weights they read, so each thread
// runs the whole time loop over its own range of sequences with no barrier,
// and its gates and states stay in its own cache. The cell passes run
// cell.h on at::vec registers; products go to gemm.h.

#include "../cell.h"
#include "../lstm.h"
#include "gemm.h"

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <array>
#include <cstring>

namespace lstm_ext::cpu {

template <typename scalar_t_>
struct Executor {
  using scalar_t = scalar_t_;
  using Vec = at::vec::Vectorized<scalar_t>;

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
    at::vec::map2([](Vec u, Vec v) { return u + v; }, dst, a, b, n);
  }

  // Rows [r0, r1) of one step. gates (row stride 4H): pre-activations less the
  // bias in, activations out; bias (4H) may be null. Row r's c_{t-1} is row r
  // of c_prev if r < carried, else of c0. Writes c_t to c_out, h_t to h_out.
  void cell_forward(int64_t r0, int64_t r1, int64_t carried, int64_t H, scalar_t* gates,
                    const scalar_t* bias, const scalar_t* c_prev, const scalar_t* c0,
                    scalar_t* c_out, scalar_t* h_out) const {
    for_each_chunk(r0, r1, H, [=](int64_t r, int64_t j, int64_t n) {
      scalar_t* g = gates + r * 4 * H + j;
      auto [i, f, gg, o] = load_gates(g, bias, H, j, n);
      const int64_t e = r * H + j;
      Vec c, h;
      lstm_ext::cell_forward(i, f, gg, o, Vec::loadu((r < carried ? c_prev : c0) + e, n), c, h);
      i.store(g, n);
      f.store(g + H, n);
      gg.store(g + 2 * H, n);
      o.store(g + 3 * H, n);
      c.store(c_out + e, n);
      h.store(h_out + e, n);
    });
  }

  // Rows [r0, r1) of one step; c_{t-1} as in cell_forward. dh (row stride H)
  // plus dh_extra when given is dL/dh_t. dc_state: dL/dc_t in, dL/dc_{t-1}
  // out. Writes the pre-activation gate gradients to dgates and, when h_out
  // is given, h_t.
  void cell_backward(int64_t r0, int64_t r1, int64_t carried, int64_t H, const scalar_t* gates,
                     const scalar_t* cells, const scalar_t* c_prev, const scalar_t* c0,
                     const scalar_t* dh, const scalar_t* dh_extra, scalar_t* dc_state,
                     scalar_t* dgates, scalar_t* h_out) const {
    for_each_chunk(r0, r1, H, [=](int64_t r, int64_t j, int64_t n) {
      const auto [i, f, g, o] = load_gates(gates + r * 4 * H + j, nullptr, H, j, n);
      const int64_t e = r * H + j;
      Vec dh_v = Vec::loadu(dh + e, n);
      if (dh_extra) dh_v = dh_v + Vec::loadu(dh_extra + e, n);
      Vec di, df, dg, do_, dc_prev, h;
      lstm_ext::cell_backward(i, f, g, o, Vec::loadu(cells + e, n),
                              Vec::loadu((r < carried ? c_prev : c0) + e, n), dh_v,
                              Vec::loadu(dc_state + e, n), di, df, dg, do_, dc_prev, h);
      scalar_t* dg_p = dgates + r * 4 * H + j;
      di.store(dg_p, n);
      df.store(dg_p + H, n);
      dg.store(dg_p + 2 * H, n);
      do_.store(dg_p + 3 * H, n);
      dc_prev.store(dc_state + e, n);
      if (h_out) h.store(h_out + e, n);
    });
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
    for_each_chunk(r0, r1, H, [=](int64_t r, int64_t j, int64_t n) {
      const auto [i, f, g, o] = load_gates(gates + r * 4 * H + j, nullptr, H, j, n);
      const auto [t_i, t_f, t_g, t_o] = load_gates(t_gates + r * 4 * H + j, t_bias, H, j, n);
      const int64_t e = r * H + j;
      const bool carried_row = r < carried;
      Vec t_c, t_h, h;
      lstm_ext::cell_tangent(i, f, g, o, Vec::loadu(cells + e, n),
                             Vec::loadu((carried_row ? c_prev : c0) + e, n), t_i, t_f, t_g, t_o,
                             Vec::loadu((carried_row ? t_c_prev : t_c0) + e, n), t_c, t_h, h);
      t_c.store(t_c_out + e, n);
      t_h.store(t_h_out + e, n);
      if (h_out) h.store(h_out + e, n);
    });
  }

 private:
  // The four gates (row stride 4H) of units [j, j + n) at g, plus the bias's
  // when it is given.
  static std::array<Vec, 4> load_gates(const scalar_t* g, const scalar_t* bias, int64_t H,
                                       int64_t j, int64_t n) {
    std::array<Vec, 4> out;
    for (int64_t k = 0; k < 4; ++k) {
      out[k] = Vec::loadu(g + k * H, n);
      if (bias) out[k] = out[k] + Vec::loadu(bias + k * H + j, n);
    }
    return out;
  }

  // Calls fn(row, column, width) over the vector-wide chunks of rows [r0, r1)
  // of a (rows, H) block; the last chunk of a row may be narrower.
  template <typename Fn>
  static void for_each_chunk(int64_t r0, int64_t r1, int64_t H, const Fn& fn) {
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t j = 0; j < H; j += Vec::size()) fn(r, j, std::min<int64_t>(Vec::size(), H - j));
    }
  }
};

}  // namespace lstm_ext::cpu
