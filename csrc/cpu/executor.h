#pragma once
// The CPU executor for layer.h: BLAS for the per-step GEMMs, and the cell
// passes of cell.h run on at::vec registers, parallel over rows and columns.

#include "../cell.h"
#include "gemm.h"

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstring>

namespace lstm_ext {

// Both from one exp and one division. Sleef's tanh, behind Vectorized::tanh,
// costs several times more; this form loses relative (not absolute) accuracy
// only near 0, where the absolute error stays at one unit of 1.0.
template <typename T>
struct Activations<at::vec::Vectorized<T>> {
  using V = at::vec::Vectorized<T>;
  static V sigmoid(V x) { return V(T(1)) / (V(T(1)) + x.neg().exp()); }
  static V tanh(V x) { return V(T(1)) - V(T(2)) / ((x + x).exp() + V(T(1))); }
};

namespace cpu {

template <typename scalar_t_>
struct Executor {
  using scalar_t = scalar_t_;
  using Vec = at::vec::Vectorized<scalar_t>;

  // Work smaller than this many elements runs on the calling thread: waking
  // the pool costs more than the cell pass itself.
  static constexpr int64_t kGrainElements = 2048;

  void gemm(int64_t m, int64_t n, int64_t k, const scalar_t* a, int64_t lda, const scalar_t* b,
            int64_t ldb, scalar_t* c, int64_t ldc, bool accumulate) const {
    cpu::gemm(m, n, k, a, lda, b, ldb, c, ldc, accumulate);
  }

  void copy(scalar_t* dst, const scalar_t* src, int64_t n) const {
    if (n > 0) std::memcpy(dst, src, n * sizeof(scalar_t));
  }

  void add(scalar_t* dst, const scalar_t* a, const scalar_t* b, int64_t n) const {
    at::vec::map2([](Vec u, Vec v) { return u + v; }, dst, a, b, n);
  }

  // gates (rows, 4H): pre-activations less the bias in, activations out.
  // bias (4H) may be null. c_state (rows, H): c_{t-1} in, c_t out; c_t is also
  // written to c_out and h_t to h_out.
  void cell_forward(int64_t rows, int64_t H, scalar_t* gates, const scalar_t* bias,
                    scalar_t* c_state, scalar_t* c_out, scalar_t* h_out) const {
    for_each_chunk(rows, H, [=](int64_t r, int64_t j, int64_t n) {
      scalar_t* g = gates + r * 4 * H + j;
      Vec i = Vec::loadu(g, n), f = Vec::loadu(g + H, n), gg = Vec::loadu(g + 2 * H, n),
          o = Vec::loadu(g + 3 * H, n);
      if (bias) {
        i = i + Vec::loadu(bias + j, n);
        f = f + Vec::loadu(bias + H + j, n);
        gg = gg + Vec::loadu(bias + 2 * H + j, n);
        o = o + Vec::loadu(bias + 3 * H + j, n);
      }
      Vec c, h;
      lstm_ext::cell_forward(i, f, gg, o, Vec::loadu(c_state + r * H + j, n), c, h);
      i.store(g, n);
      f.store(g + H, n);
      gg.store(g + 2 * H, n);
      o.store(g + 3 * H, n);
      c.store(c_state + r * H + j, n);
      c.store(c_out + r * H + j, n);
      h.store(h_out + r * H + j, n);
    });
  }

  // Rows [0, carried) take c_{t-1} from c_prev, the rest from c0 (same row).
  // dh_extra, when given, is added to dh. dc_state: dL/dc_t in, dL/dc_{t-1} out.
  // h_out, when given, receives h_t (pre-projection).
  void cell_backward(int64_t rows, int64_t carried, int64_t H, const scalar_t* gates,
                     const scalar_t* cells, const scalar_t* c_prev, const scalar_t* c0,
                     const scalar_t* dh, const scalar_t* dh_extra, scalar_t* dc_state,
                     scalar_t* dgates, scalar_t* h_out) const {
    for_each_chunk(rows, H, [=](int64_t r, int64_t j, int64_t n) {
      const scalar_t* g = gates + r * 4 * H + j;
      const int64_t e = r * H + j;
      const scalar_t* cp = r < carried ? c_prev : c0;
      Vec dh_v = Vec::loadu(dh + e, n);
      if (dh_extra) dh_v = dh_v + Vec::loadu(dh_extra + e, n);
      Vec di, df, dg, do_, dc_prev, h;
      lstm_ext::cell_backward(Vec::loadu(g, n), Vec::loadu(g + H, n), Vec::loadu(g + 2 * H, n),
                    Vec::loadu(g + 3 * H, n), Vec::loadu(cells + e, n), Vec::loadu(cp + e, n),
                    dh_v, Vec::loadu(dc_state + e, n), di, df, dg, do_, dc_prev, h);
      scalar_t* dg_p = dgates + r * 4 * H + j;
      di.store(dg_p, n);
      df.store(dg_p + H, n);
      dg.store(dg_p + 2 * H, n);
      do_.store(dg_p + 3 * H, n);
      dc_prev.store(dc_state + e, n);
      if (h_out) h.store(h_out + e, n);
    });
  }

 private:
  // Calls fn(row, column, width) over every vector-wide chunk of a (rows, H)
  // block, the last chunk of a row possibly narrower.
  template <typename Fn>
  static void for_each_chunk(int64_t rows, int64_t H, const Fn& fn) {
    const int64_t per_row = (H + Vec::size() - 1) / Vec::size();
    const int64_t grain = std::max<int64_t>(1, kGrainElements / Vec::size());
    at::parallel_for(0, rows * per_row, grain, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        const int64_t r = k / per_row, j = (k % per_row) * Vec::size();
        fn(r, j, std::min<int64_t>(Vec::size(), H - j));
      }
    });
  }
};

}  // namespace cpu
}  // namespace lstm_ext
