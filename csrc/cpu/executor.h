#pragma once
// The CPU executor for the step engine (step_engine.h) and layer.h. The
// threads share a step's work in one of two ways, chosen from the shape
// (split_by_units): by sequences, each thread running the whole time loop
// over its own range of sequences with no barrier, its gates and states in
// its own cache; or, with few sequences per thread, by hidden units, every
// thread taking part of each phase of each step (its slice of the weights in
// its cache) with a barrier after each phase. The cell passes are the
// vectorised kernels of kernels.h; products go to gemm.h.
//
// scalar_t is the storage type of the products' operands (the input, the
// weights, h, the gate gradients), math_t that of their results, the cell
// math and the cell state: float for bfloat16 and float16 (the native path,
// native.h), scalar_t otherwise.

#include "../cell.h"
#include "../types.h"
#include "brgemm_pairs.h"
#include "gemm.h"
#include "kernels.h"
#include "native.h"
#include "profile.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstring>

namespace lstm_ext::cpu {

// Forces the split of the time loop's work for tests (_cpu_split): -1 lets
// the shape choose, 0 splits the sequences, 1 the hidden units.
inline std::atomic<int> forced_split{-1};

template <typename scalar_t_>
struct Executor {
  using scalar_t = scalar_t_;
  using math_t = std::conditional_t<is_reduced_precision_v<scalar_t>, float, scalar_t>;

  // Whether float16/bfloat16 layers run natively on this CPU (native.h).
  static constexpr bool kHasNative = true;
  static bool runs_native(at::ScalarType dtype) { return cpu::runs_native(dtype); }

  // Calls body(first, last) once per thread, each with its own range of
  // sequences [first, last), balanced by their numbers of steps. Loops of
  // little work stay on the calling thread: waking the others would cost more.
  template <typename Body>
  void for_each_row_range(const Steps& steps, int64_t flops_per_row, const Body& body) const {
    const int64_t batch = steps.size(0);
    const int64_t parts = small(steps, flops_per_row) ? 1 : std::min(threads(), batch);
    const std::vector<int64_t> bounds = steps.split(parts);
    const Timed timed(Work::time_loop, 0);
    at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
      const TileScope<scalar_t> tiles;
      for (int64_t part = begin; part < end; ++part) body(bounds[part], bounds[part + 1]);
    });
  }

  // Whether each step is split between the threads by hidden units (each
  // thread then streams its slice of the weights, with a barrier per phase)
  // rather than the batch by sequences (no barrier): when the threads would
  // get few sequences each for the hidden size. Measured (benchmarks/README.md): with 1-2
  // sequences per thread the units win from H = 128 (1.2-1.7x), with 4 from
  // H = 256, with 8 from H = 512 (1.2x at H = 1024); otherwise the sequences,
  // by up to 1.2x (B = 8, H = 128: a step is too short for a barrier).
  bool split_by_units(const Steps& steps, int64_t flops_per_row, int64_t units) const {
    const int forced = forced_split.load();
    if (forced >= 0) return forced == 1 && threads() > 1;
    const int64_t rows_per_thread = (steps.size(0) + threads() - 1) / threads();
    return !small(steps, flops_per_row) && threads() > 1 && units >= kUnitAlign * threads() &&
           units >= kUnitsPerRow * rows_per_thread;
  }

  // Calls body(lo, hi), one part per thread, over [0, extent) cut at
  // multiples of align; returns when all are done.
  template <typename Body>
  void for_each_part(int64_t extent, int64_t align, const Body& body) const {
    const int64_t pieces = (extent + align - 1) / align;
    const int64_t parts = std::min(threads(), pieces);
    const Timed timed(Work::time_loop, 0);
    at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
      const TileScope<scalar_t> tiles;
      for (int64_t p = begin; p < end; ++p) {
        body(pieces * p / parts * align, std::min(extent, pieces * (p + 1) / parts * align));
      }
    });
  }

  // The gate order (layer.h): the four gates of each group of this many
  // units are one panel of a laid-out weight.
  int64_t gate_group(int64_t /*H*/) const { return kPanel / 4; }
  // Unit and column ranges start at panel boundaries of laid-out weights.
  int64_t unit_align() const { return kUnitAlign; }
  int64_t column_align() const { return kPanel; }

  // Chunks whose gates take about kChunkBytes, in cache between the product
  // and the cell pass.
  int64_t chunk_units(int64_t rows, int64_t /*H*/) const {
    const int64_t units = kChunkBytes / (std::max<int64_t>(rows, 1) * 4 * sizeof(math_t));
    return std::max(kUnitAlign, units / kUnitAlign * kUnitAlign);
  }

  Tensor weights(const Tensor& b, Gates gates) const {
    const Timed timed(Work::layout, 0);
    return weight_layout(b, gates, gate_group(0));
  }

  void to_pytorch_gate_order(Tensor& t, int64_t dim, int64_t H) const {
    cpu::to_pytorch_gate_order(t, dim, gate_group(H));
  }

  const scalar_t* column(const scalar_t* b, int64_t k, int64_t col0) const {
    return cpu::column(b, k, col0);
  }

  int64_t laid_out_numel(int64_t k, int64_t n) const {
    return (is_reduced_precision_v<scalar_t> ? vnni_depth(k) : k) * n;
  }

  void step_gemm(int64_t m, int64_t n, int64_t k, const scalar_t* a, int64_t lda,
                 const scalar_t* b, int64_t ldb, math_t* c, int64_t ldc, bool accumulate) const {
    const Timed timed(Work::step_gemm, 2 * m * n * k);
    gemm_serial(m, n, k, a, lda, b, ldb, c, ldc, accumulate);
  }

  void sequence_gemm(int64_t m, int64_t n, int64_t k, const scalar_t* a, int64_t lda,
                     const scalar_t* b, math_t* c, int64_t ldc, bool accumulate) const {
    const Timed timed(Work::sequence_gemm, 2 * m * n * k);
    gemm_parallel(m, n, k, a, lda, b, c, ldc, accumulate);
  }

  void weight_gemm(int64_t m, int64_t n, int64_t k, const scalar_t* a, int64_t lda,
                   const scalar_t* b, int64_t ldb, math_t* c, int64_t ldc,
                   bool accumulate) const {
    const Timed timed(Work::weight_gemm, 2 * m * n * k);
    gemm_tn_parallel(m, n, k, a, lda, b, ldb, c, ldc, accumulate);
  }

  template <typename T>
  void copy(T* dst, const T* src, int64_t n) const {
    if (n > 0) std::memcpy(dst, src, n * sizeof(T));
  }

  // dst = src rounded to the storage type, rows x cols, row strides ld_dst and ld_src.
  void narrow(scalar_t* dst, int64_t ld_dst, const math_t* src, int64_t ld_src, int64_t rows,
              int64_t cols) const {
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) dst[r * ld_dst + c] = scalar_t(src[r * ld_src + c]);
    }
  }

  void add(scalar_t* dst, const math_t* a, const math_t* b, int64_t n) const {
    passes.add(dst, a, b, n);
  }

  // Few values per step (a step's rows of h): the compiler's loops suffice.
  template <typename T>
  void scale(T* dst, const T* a, const math_t* s, int64_t n) const {
    for (int64_t i = 0; i < n; ++i) dst[i] = T(static_cast<math_t>(a[i]) * s[i]);
  }

  // dst += a ⊙ s.
  void add_scaled(math_t* dst, const math_t* a, const math_t* s, int64_t n) const {
    for (int64_t i = 0; i < n; ++i) dst[i] += a[i] * s[i];
  }

  // Zoneout on h (cell.h): dst = zoneout(dst, prev, d), in math_t.
  void zoneout(scalar_t* dst, const scalar_t* prev, const math_t* d, int64_t n) const {
    for (int64_t i = 0; i < n; ++i) {
      dst[i] = scalar_t(lstm_ext::zoneout(static_cast<math_t>(dst[i]),
                                          static_cast<math_t>(prev[i]), d[i]));
    }
  }

  // Its backward for dL/dh = a + b: the fresh value's part to `fresh`
  // (scalar_t or math_t), the previous one's to `kept`.
  template <typename T>
  void zoneout_backward(T* fresh, math_t* kept, const math_t* a, const math_t* b,
                        const math_t* d, int64_t n) const {
    for (int64_t i = 0; i < n; ++i) {
      math_t f;
      lstm_ext::zoneout_backward(a[i] + b[i], d[i], f, kept[i]);
      fresh[i] = T(f);
    }
  }

  // LayerNorm of each of `rows` rows of src (row stride `width`, normalised
  // over all of it): columns [c0, c1) of dst's rows (the same stride) get, or
  // with `accumulate` add, x̂ ⊙ gamma (gamma null: x̂); each row's rstd to
  // rstd_out when given. dst may be src (all columns, not accumulating): a
  // row's statistics come first. The threads share a block's rows; a step's
  // (inside a phase) stay on the phase's thread. Profiled as a cell pass (in
  // the backward too, where it makes x̂ again).
  void layer_norm_into(math_t* dst, const math_t* src, int64_t rows, int64_t width,
                       const math_t* gamma, int64_t c0, int64_t c1, bool accumulate,
                       math_t* rstd_out = nullptr) const {
    const Timed timed(Work::cell_forward, rows * (c1 - c0));
    for_each_row_part(rows, width, [&](int64_t r0, int64_t r1) {
      passes.layer_norm(dst + r0 * width, src + r0 * width, r1 - r0, width, gamma, c0, c1,
                        accumulate, rstd_out ? rstd_out + r0 : nullptr);
    });
  }

  // LayerNorm's backward over rows of `width`: columns [c0, c1) of dst get
  // dL/dv (cell.h's layer_norm_backward) from dy (dL/d(x̂ γ)), x̂ and each
  // row's rstd. Row strides `width`; threads as in layer_norm_into.
  void layer_norm_backward_into(scalar_t* dst, const math_t* dy, const math_t* x_hat,
                                const math_t* rstd, const math_t* gamma, int64_t rows,
                                int64_t width, int64_t c0, int64_t c1) const {
    const Timed timed(Work::cell_backward, rows * (c1 - c0));
    for_each_row_part(rows, width, [&](int64_t r0, int64_t r1) {
      const int64_t at = r0 * width;
      passes.layer_norm_backward(dst + at, dy + at, x_hat + at, rstd + r0, gamma, r1 - r0, width,
                                 c0, c1);
    });
  }

  // The backward of cell_output_layer_norm for rows [r0, r1) and units [u0,
  // u1): from dL/dh (dh, plus dh_extra when given), o's gradient into
  // dgates (and dgates_wide when given; the gate order), dL/dĉ (ĉ =
  // LN(c̃)) into dc_hat (row stride H), h into h_out when given.
  void cell_backward_layer_norm_output(int64_t r0, int64_t r1, int64_t u0, int64_t u1,
                                       int64_t H, const scalar_t* gates, const math_t* c,
                                       const math_t* gamma, const math_t* beta,
                                       const math_t* dh, const math_t* dh_extra,
                                       scalar_t* dgates, math_t* dgates_wide, math_t* dc_hat,
                                       scalar_t* h_out) const {
    const Timed timed(Work::cell_backward, (r1 - r0) * (u1 - u0));
    passes.backward_output_layer_norm(r0, r1, u0, u1, H, gate_group(H), gates, c, gamma, beta,
                                      dh, dh_extra, dgates, dgates_wide, dc_hat, h_out);
  }

  // Then the cell's state: dL/dc̃ from dc_hat through LayerNorm plus the
  // dL/dc_t carried in dc_state (zoneout's share taken off, `zone` as in
  // cell_forward), the gradients of i, f, g into dgates (and dgates_wide),
  // dL/dc_{t-1} into dc_state; for the LayerNorm parameters' gradients,
  // dc_hat ⊙ ĉ's x̂ into dgamma (row stride H).
  void cell_backward_layer_norm_state(int64_t r0, int64_t r1, int64_t u0, int64_t u1,
                                      int64_t carried, int64_t H, const scalar_t* gates,
                                      const math_t* c, const math_t* c_prev, const math_t* c0,
                                      const math_t* zone, const math_t* gamma,
                                      const math_t* dc_hat, math_t* dc_state, scalar_t* dgates,
                                      math_t* dgates_wide, math_t* dgamma) const {
    const Timed timed(Work::cell_backward, (r1 - r0) * (u1 - u0));
    passes.backward_state_layer_norm(r0, r1, u0, u1, carried, H, gate_group(H), gates, c, c_prev,
                                     c0, zone, gamma, dc_hat, dc_state, dgates, dgates_wide,
                                     dgamma);
  }

  // h of rows [r0, r1) and units [u0, u1) with LayerNorm on c̃ (cell.h's
  // cell_output_layer_norm): o from `activated` (row stride 4H, the gate
  // order), c̃ from c (row stride H); gamma and beta (H) in unit order.
  void cell_output_layer_norm(int64_t r0, int64_t r1, int64_t u0, int64_t u1, int64_t H,
                              const scalar_t* activated, const math_t* c, const math_t* gamma,
                              const math_t* beta, scalar_t* h_out) const {
    const Timed timed(Work::cell_forward, (r1 - r0) * (u1 - u0));
    passes.output_layer_norm(r0, r1, u0, u1, H, gate_group(H), activated, c, gamma, beta, h_out);
  }

  // Rows [r0, r1) and units [u0, u1) of one step, gates (row stride 4H) in the
  // gate order: pre-activations less the bias in; their activations out to
  // `activated` (the same layout; it may be gates itself, or null: not kept);
  // bias (4H, PyTorch's order) may be null. Row r's c_{t-1} is row r of c_prev if r <
  // carried, else of c0. Writes c_t to c_out (which may be c_prev), h_t to
  // h_out (row stride H). With zoneout weights `zone` (row stride H, or
  // null), c_t is cell_forward_zoneout's, and c̃ goes to c_fresh when given.
  void cell_forward(int64_t r0, int64_t r1, int64_t u0, int64_t u1, int64_t carried, int64_t H,
                    const math_t* gates, scalar_t* activated, const math_t* bias,
                    const math_t* c_prev, const math_t* c0, const math_t* zone, math_t* c_fresh,
                    math_t* c_out, scalar_t* h_out) const {
    const Timed timed(Work::cell_forward, (r1 - r0) * (u1 - u0));
    passes.forward(r0, r1, u0, u1, carried, H, gate_group(H), gates, activated, bias, c_prev, c0,
                   zone, c_fresh, c_out, h_out);
  }

  // Rows and units as in cell_forward. cells: c_t, or with `zone`, c̃.
  // dh (row stride H) plus dh_extra when
  // given is dL/dh_t. dc_state: dL/dc_t in, dL/dc_{t-1} out. Writes the
  // pre-activation gate gradients to dgates, and in math_t to dgates_wide
  // when given, and, when h_out is given, h_t.
  void cell_backward(int64_t r0, int64_t r1, int64_t u0, int64_t u1, int64_t carried, int64_t H,
                     const scalar_t* gates, const math_t* cells, const math_t* c_prev,
                     const math_t* c0, const math_t* zone, const math_t* dh,
                     const math_t* dh_extra, math_t* dc_state, scalar_t* dgates,
                     math_t* dgates_wide, scalar_t* h_out) const {
    const Timed timed(Work::cell_backward, (r1 - r0) * (u1 - u0));
    passes.backward(r0, r1, u0, u1, carried, H, gate_group(H), gates, cells, c_prev, c0, zone,
                    dh, dh_extra, dc_state, dgates, dgates_wide, h_out);
  }

  // Rows and units as in cell_forward; c_{t-1} as there, its tangent from
  // t_c_prev or t_c0 alike. t_gates: the tangents of the gate
  // pre-activations less that of the bias (t_bias, may be null). Writes the
  // tangents of c_t and h_t to t_c_out and t_h_out and, when h_out is given,
  // h_t.
  void cell_tangent(int64_t r0, int64_t r1, int64_t u0, int64_t u1, int64_t carried, int64_t H,
                    const scalar_t* gates, const scalar_t* cells, const scalar_t* c_prev,
                    const scalar_t* c0, const scalar_t* t_bias, const scalar_t* t_gates,
                    const scalar_t* t_c_prev, const scalar_t* t_c0, scalar_t* t_c_out,
                    scalar_t* t_h_out, scalar_t* h_out) const {
    passes.tangent(r0, r1, u0, u1, carried, H, gate_group(H), gates, cells, c_prev, c0, t_bias,
                   t_gates, t_c_prev, t_c0, t_c_out, t_h_out, h_out);
  }

  // The cell passes of the level chosen for this CPU.
  const CellKernels<math_t, scalar_t>& passes = kernels().cells<scalar_t>();

 private:
  static constexpr int64_t kChunkBytes = 32 * 1024;
  // Row-wise passes go to the threads in parts of at least this many values.
  static constexpr int64_t kRowPartValues = 16 * 1024;
  // Split by units from this many hidden units per sequence of a thread.
  static constexpr int64_t kUnitsPerRow = 64;
  // Unit ranges start at multiples of this: gates of kPanel / 4 units and the
  // projection's kPanel columns are panels.
  static constexpr int64_t kUnitAlign = kPanel;

  static int64_t threads() { return at::get_num_threads(); }

  // body(r0, r1) over [0, rows) of `width` values each, in parts for the
  // threads (inside a parallel region, on its thread alone).
  template <typename Body>
  static void for_each_row_part(int64_t rows, int64_t width, const Body& body) {
    at::parallel_for(0, rows, std::max<int64_t>(1, kRowPartValues / width), body);
  }

  // A row's flops are two per weight it multiplies.
  static bool small(const Steps& steps, int64_t flops_per_row) {
    return !worth_threads(steps.rows() * flops_per_row,
                          flops_per_row / 2 * static_cast<int64_t>(sizeof(scalar_t)));
  }
};

}  // namespace lstm_ext::cpu
