#pragma once
// One LSTM layer, one direction, a whole packed sequence: the time loop,
// written once for every device.
//
// The recurrence couples the steps of a sequence, never two sequences. A step
// runs as phases, each over hidden units or over output columns (the forward:
// the gates' product and the cell pass by units, then the projection by
// columns). The executor chooses how to share the work between its threads
// (run_steps): by sequences, each thread running every phase of its own rows,
// step after step, with no barrier; or by units and columns, every thread
// taking part of each phase of each step, with a barrier after each phase
// (few sequences per thread: each keeps its slice of the weights in cache).
// Within a phase, the product and the cell pass go a chunk of units at a time,
// while the chunk's gates are in cache.
//
// The executor supplies, on raw pointers, with no allocation or dispatch
// inside the loop:
//   for_each_row_range(steps, flops_per_row, body)   calls body(first, last)
//   split_by_units(steps, flops_per_row, units), for_each_part(extent, align, body)
//   gate_group(H), unit_align(), column_align()      see below
//   chunk_units(rows, H)   units per chunk of a fused product and cell pass
//   weights(b, gates)   a (k, n) weight (any strides) laid out for the products;
//       `gates` says which dimension runs over the 4H gates
//   column(b, k, col0)  column col0 on of a laid-out (k, n) weight
//   step_gemm(m, n, k, a, lda, b, ldb, c, ldc, accumulate), for a step's rows;
//   sequence_gemm(m, n, k, a, lda, b, c, ldc, accumulate), for whole sequences:
//       row-major C[m,n] (+)= A[m,k] B[k,n], b from weights() / column()
//   weight_gemm(m, n, k, a, lda, b, ldb, c, ldc, accumulate)
//       C[m,n] (+)= A[k,m]^T B[k,n], a weight gradient summed over rows
//   cell_forward(...), cell_backward(...), cell_tangent(...)
//       the fused passes over csrc/cell.h, for rows and units of a step; the
//       forward pass writes the activated gates to `activated`: gates itself
//       (in place) when math_t is scalar_t, else a buffer of scalar_t, or
//       null when they are not kept; the backward pass writes the gate
//       gradients also in math_t to `dgates_wide` where math_t is not
//       scalar_t, or null
//   copy(dst, src, n), add(dst, a, b, n)
// Weights are laid out once per call (weights()), so that the loop only
// multiplies them in the form its executor's products want.
//
// Two types: Ex::scalar_t, the storage type of the products' operands (x, the
// weights, h, the gate gradients), and Ex::math_t, that of the products'
// results, the cell math, c and every gradient (float for the native
// bfloat16/float16 path, otherwise scalar_t). h_t is rounded to scalar_t once,
// by the cell pass that makes it.
//
// Gates (the per-row buffers of 4H) are in the executor's gate order
// (gate_order in lstm.h, with groups of gate_group(H) units): the gates of
// units [u0, u1) are the columns [4 u0, 4 u1) when u0 and u1 are multiples of
// the group (or H). Unit ranges start at multiples of unit_align(), output
// column ranges at multiples of column_align(). Gradients of the weights and
// biases come back in PyTorch's order (to_pytorch_gate_order(t, dim, H)).
//
// Within a step, row r is sequence r. Its previous state is row r of the
// previously processed step if r < carried(t), else row r of h0/c0.

#include "lstm.h"

#include <ATen/ops/add.h>
#include <c10/core/ScalarType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <type_traits>

namespace lstm_ext {

template <typename scalar_t>
scalar_t* ptr(const Tensor& t) {
  return t.defined() ? t.data_ptr<scalar_t>() : nullptr;
}

// The executor's math type, and t (which may be undefined) in it.
template <typename Ex>
at::ScalarType math_dtype() {
  return c10::CppTypeToScalarType<typename Ex::math_t>::value;
}

template <typename Ex>
Tensor to_math(const Tensor& t) {
  return t.defined() ? t.to(math_dtype<Ex>()) : t;
}

// Row b of the result is sequence b's row of its last processed step in
// `rows` (a per-row buffer of the given width): h_n from y, c_n from cells.
// Device copies of contiguous ranges, so nothing waits on the host.
template <typename Ex, typename scalar_t>
Tensor final_state(Ex& ex, const Steps& steps, const Tensor& rows, int64_t batch) {
  const int64_t width = rows.size(1);
  Tensor out = at::empty({batch, width}, rows.options());
  for (int64_t t = 0; t < steps.count(); ++t) {
    const auto [first, last] = steps.ending_at(t);
    ex.copy(ptr<scalar_t>(out) + first * width,
            ptr<scalar_t>(rows) + (steps.offset(t) + first) * width, (last - first) * width);
  }
  return out;
}

// What a range of sequences [first, last) does at step t: its rows of the
// step are [first, rows) and start at row `off` of every per-row buffer; rows
// [first, split) continue from the step processed before (whose rows start
// at `prev`), rows [split, rows) start from the initial state.
struct StepRows {
  int64_t t, first, rows, off, carried, prev, split;
};

inline StepRows step_rows(const Steps& steps, int64_t t, int64_t first, int64_t last) {
  const int64_t rows = std::min(last, steps.size(t)), carried = steps.carried(t);
  return {t, first, rows, steps.offset(t), carried,
          carried > 0 ? steps.offset(steps.previous(t)) : 0, std::clamp(carried, first, rows)};
}

// Time index of the i-th of the steps [begin, end) in processing order, or,
// for a backward pass, in its reverse.
inline int64_t step_time(const Steps& steps, int64_t begin, int64_t end, int64_t i,
                         bool backwards) {
  return steps.time(backwards ? end - 1 - (i - begin) : i);
}

// Calls body(StepRows) for the steps [begin, end) (as step_time orders them)
// in which the range of sequences [first, last) has rows.
template <typename Body>
void for_each_step(const Steps& steps, int64_t begin, int64_t end, int64_t first, int64_t last,
                   bool backwards, const Body& body) {
  for (int64_t i = begin; i < end; ++i) {
    const StepRows r = step_rows(steps, step_time(steps, begin, end, i, backwards), first, last);
    if (r.first < r.rows) body(r);
  }
}

// One phase of a step: fn(StepRows, lo, hi) does [lo, hi) of [0, extent)
// (units or columns) for the rows; split, the pieces start at multiples of
// `align`.
template <typename Fn>
struct Phase {
  int64_t extent, align;
  Fn fn;
};

template <typename Fn>
Phase<Fn> phase(int64_t extent, int64_t align, Fn fn) {
  return {extent, align, std::move(fn)};
}

// Runs the steps [begin, end) (backwards: in reverse), each as its phases in
// order, shared between the executor's threads by sequences or by units
// (see the top of this file). A phase of extent 0 is skipped.
template <typename Ex, typename... Phases>
void run_steps(Ex& ex, const Steps& steps, int64_t begin, int64_t end, bool backwards,
               int64_t flops_per_row, int64_t units, const Phases&... phases) {
  if (ex.split_by_units(steps, flops_per_row, units)) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t t = step_time(steps, begin, end, i, backwards);
      const StepRows r = step_rows(steps, t, 0, steps.size(t));
      const auto run = [&](const auto& p) {
        if (p.extent > 0) {
          ex.for_each_part(p.extent, p.align, [&](int64_t lo, int64_t hi) { p.fn(r, lo, hi); });
        }
      };
      (run(phases), ...);
    }
    return;
  }
  ex.for_each_row_range(steps, flops_per_row, [&](int64_t first, int64_t last) {
    for_each_step(steps, begin, end, first, last, backwards, [&](const StepRows& r) {
      const auto run = [&](const auto& p) {
        if (p.extent > 0) p.fn(r, 0, p.extent);
      };
      (run(phases), ...);
    });
  });
}

// Calls fn(a, b) over units [u0, u1) in chunks [a, b) small enough that a
// chunk's gates (of `rows` rows) stay in cache between its product and its
// cell pass.
template <typename Ex, typename Fn>
void for_each_chunk_of_units(const Ex& ex, int64_t rows, int64_t H, int64_t u0, int64_t u1,
                             const Fn& fn) {
  const int64_t chunk = ex.chunk_units(rows, H);
  for (int64_t a = u0; a < u1; a += chunk) fn(a, std::min(u1, a + chunk));
}

// The gates' product of one step for units [a, b), rows [r.first, r.rows):
// gates_t (the step's rows, row stride 4H) += h_{t-1} W_hh^T, h_{t-1} being
// rows of the previously processed step's `out` (at prev) or of `out0` (row
// stride P).
template <typename Ex, typename scalar_t, typename math_t>
void recurrent_product(Ex& ex, const StepRows& r, int64_t a, int64_t b, int64_t P, int64_t G,
                       const scalar_t* out, const scalar_t* out0, const scalar_t* w_hh_t,
                       math_t* gates_t) {
  const scalar_t* w = ex.column(w_hh_t, P, 4 * a);
  ex.step_gemm(r.split - r.first, 4 * (b - a), P, out + (r.prev + r.first) * P, P, w, G,
               gates_t + r.first * G + 4 * a, G, true);
  ex.step_gemm(r.rows - r.split, 4 * (b - a), P, out0 + r.split * P, P, w, G,
               gates_t + r.split * G + 4 * a, G, true);
}

// Runs of rows whose h_{t-1} are consecutive rows of one buffer: calls
// fn(row, count, from_y, source) for the rows [row, row + count) of the steps
// [t0, t1) (time order), whose h_{t-1} are rows [source, source + count) of y
// (from_y) or of h0. A weight's gradient or tangent through h_{t-1} is then a
// product per run, with no copy of the rows: padded input has two runs.
template <typename Fn>
void for_each_previous_h_run(const Steps& steps, int64_t t0, int64_t t1, const Fn& fn) {
  int64_t row = 0, count = 0, source = 0;  // the run from y being extended
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t off = steps.offset(t), carried = steps.carried(t), size = steps.size(t);
    if (carried > 0) {
      const int64_t from = steps.offset(steps.previous(t));
      if (count > 0 && off == row + count && from == source + count) {
        count += carried;
      } else {
        if (count > 0) fn(row, count, true, source);
        row = off, count = carried, source = from;
      }
    }
    if (carried < size) fn(off + carried, size - carried, false, carried);
  }
  if (count > 0) fn(row, count, true, source);
}

// Where the gates of every row need not be kept at once (the forward with no
// backward to come, the backward), they are computed for a block of steps at
// a time into a workspace of about this many elements (8 MB in float32): few
// products of many rows, and memory that does not grow with T.
constexpr int64_t kWorkspace = int64_t(1) << 21;

// The layer's forward. Saving for backward (`save`), it returns y, h_n, c_n
// and the activated gates (scalar_t) and c_t of every row; otherwise y, h_n
// and c_n alone, and it keeps neither: the gates of one block of steps at a
// time, and one c per sequence, updated in place (and c_n at the end).
// Narrowed, the gates' pre-activations go in blocks too, their activations
// to the saved scalar_t buffer.
template <typename Ex>
LayerOut layer_forward(Ex& ex, const LayerDims& d, const Steps& steps, const Tensor& x,
                       const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
                       const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr,
                       bool save) {
  using scalar_t = typename Ex::scalar_t;
  using math_t = typename Ex::math_t;
  constexpr bool narrowed = !std::is_same_v<scalar_t, math_t>;
  const int64_t H = d.hidden, P = d.out, G = 4 * H;
  const auto opts = x.options(), math_opts = opts.dtype(math_dtype<Ex>());

  const Tensor w_ih_t = ex.weights(w_ih.t(), Gates::columns);
  const Tensor w_hh_t = ex.weights(w_hh.t(), Gates::columns);
  const Tensor w_hr_t = w_hr.has_value() ? ex.weights(w_hr->t(), Gates::none) : Tensor();
  const Tensor bias = b_ih.has_value() && b_hh.has_value()
                          ? at::add(to_math<Ex>(*b_ih), to_math<Ex>(*b_hh))
                      : b_ih.has_value() ? to_math<Ex>(*b_ih)
                      : b_hh.has_value() ? to_math<Ex>(*b_hh)
                                         : Tensor();
  const Tensor c0_m = to_math<Ex>(c0);
  // A block's rows start as their input projection; each step adds h W_hh^T,
  // and its cell pass adds the bias and writes the activations to `activated`.
  const int64_t block_rows = save && !narrowed ? d.rows : std::max(kWorkspace / G, d.batch);
  Tensor gates = at::empty({std::min(block_rows, d.rows), G}, math_opts);
  // The activated gates kept for backward (when not narrowed: gates itself).
  Tensor activated = !save ? Tensor() : narrowed ? at::empty({d.rows, G}, opts) : gates;
  Tensor y = at::empty({d.rows, P}, opts);
  Tensor cells = at::empty({save ? d.rows : d.batch, H}, math_opts);
  // With a projection, h_t before it; row r belongs to sequence r. Narrowed,
  // the projection's product comes to y_wide before its rounding into y.
  Tensor h_raw = w_hr.has_value() ? at::empty({d.batch, H}, opts) : Tensor();
  Tensor y_wide = w_hr.has_value() && narrowed ? at::empty({d.batch, P}, math_opts) : Tensor();

  math_t* gates_p = ptr<math_t>(gates);
  scalar_t* activated_p = ptr<scalar_t>(activated);
  math_t* cells_p = ptr<math_t>(cells);
  scalar_t* y_p = ptr<scalar_t>(y);
  scalar_t* h_raw_p = ptr<scalar_t>(h_raw);
  math_t* y_wide_p = ptr<math_t>(y_wide);
  const scalar_t* x_p = ptr<scalar_t>(x);
  const scalar_t* h0_p = ptr<scalar_t>(h0);
  const math_t* c0_p = ptr<math_t>(c0_m);
  const math_t* bias_p = ptr<math_t>(bias);
  const scalar_t* w_ih_t_p = ptr<scalar_t>(w_ih_t);
  const scalar_t* w_hh_t_p = ptr<scalar_t>(w_hh_t);
  const scalar_t* w_hr_t_p = ptr<scalar_t>(w_hr_t);

  const int64_t flops_per_row = 2 * G * P + (h_raw_p ? 2 * H * P : 0);
  for (int64_t begin = 0, end = 0; begin < steps.count(); begin = end) {
    // The block: steps [begin, end) of the processing order, whose rows are
    // contiguous, from row0 on.
    int64_t rows = 0;
    const auto size = [&](int64_t s) { return steps.size(steps.time(s)); };
    while (end < steps.count() && (end == begin || rows + size(end) <= block_rows)) {
      rows += size(end++);
    }
    const int64_t row0 =
        std::min(steps.offset(steps.time(begin)), steps.offset(steps.time(end - 1)));
    ex.sequence_gemm(rows, G, d.input, x_p + row0 * d.input, d.input, w_ih_t_p, gates_p, G,
                     false);
    const auto gates_and_cells = [&](const StepRows& r, int64_t u0, int64_t u1) {
      math_t* gates_t = gates_p + (r.off - row0) * G;
      // Saving, row r's c_t goes to its own row of cells; otherwise to row r
      // of the per-sequence c, which held its c_{t-1}.
      math_t* c_prev = save ? cells_p + r.prev * H : cells_p;
      math_t* c_out = save ? cells_p + r.off * H : cells_p;
      for_each_chunk_of_units(ex, r.rows - r.first, H, u0, u1, [&](int64_t a, int64_t b) {
        recurrent_product(ex, r, a, b, P, G, y_p, h0_p, w_hh_t_p, gates_t);
        ex.cell_forward(r.first, r.rows, a, b, r.carried, H, gates_t,
                        activated_p ? activated_p + r.off * G : nullptr, bias_p, c_prev, c0_p,
                        c_out, h_raw_p ? h_raw_p : y_p + r.off * P);
      });
    };
    const auto projection = [&](const StepRows& r, int64_t p0, int64_t p1) {
      const int64_t rows = r.rows - r.first;
      scalar_t* y_t = y_p + (r.off + r.first) * P + p0;
      const scalar_t* w = ex.column(w_hr_t_p, H, p0);
      if constexpr (narrowed) {
        math_t* wide = y_wide_p + r.first * P + p0;
        ex.step_gemm(rows, p1 - p0, H, h_raw_p + r.first * H, H, w, P, wide, P, false);
        ex.narrow(y_t, P, wide, P, rows, p1 - p0);
      } else {
        ex.step_gemm(rows, p1 - p0, H, h_raw_p + r.first * H, H, w, P, y_t, P, false);
      }
    };
    run_steps(ex, steps, begin, end, false, flops_per_row, H,
              phase(H, ex.unit_align(), gates_and_cells),
              phase(h_raw_p ? P : 0, ex.column_align(), projection));
  }
  Tensor h_n = final_state<Ex, scalar_t>(ex, steps, y, d.batch);
  if (!save) return {y, h_n, cells, Tensor(), Tensor()};
  return {y, h_n, final_state<Ex, math_t>(ex, steps, cells, d.batch), activated, cells};
}

// `groups` as in the backward op's schema: the weight and bias gradients of
// problem g sum the rows g, g + groups, g + 2 groups, ... (rows of a step are
// its sequences, so row r belongs to sequence r % groups's problem).
template <typename Ex>
LayerGrads layer_backward(Ex& ex, const LayerDims& d, const Steps& steps, const GradMask& mask,
                          const OptTensor& dy, const OptTensor& dh_n, const OptTensor& dc_n,
                          const Tensor& x, const Tensor& h0, const Tensor& c0, const Tensor& w_ih,
                          const Tensor& w_hh, const OptTensor& w_hr, const Tensor& y,
                          const Tensor& gates, const Tensor& cells, int64_t groups) {
  using scalar_t = typename Ex::scalar_t;
  using math_t = typename Ex::math_t;
  constexpr bool narrowed = !std::is_same_v<scalar_t, math_t>;
  const int64_t H = d.hidden, P = d.out, G = 4 * H;
  const auto opts = x.options(), math_opts = opts.dtype(math_dtype<Ex>());
  const bool proj = w_hr.has_value();

  const auto math = math_dtype<Ex>();
  const Tensor dy_c =
      dy.has_value() ? dy->to(math).contiguous() : at::zeros({d.rows, P}, math_opts);
  // Per sequence, the gradient flowing into its latest-processed state: they
  // start as dh_n and dc_n and end as dh0 and dc0 (their own copies).
  Tensor dh = dh_n.has_value() ? dh_n->to(math, false, true, at::MemoryFormat::Contiguous)
                               : at::zeros({d.batch, P}, math_opts);
  Tensor dc = dc_n.has_value() ? dc_n->to(math, false, true, at::MemoryFormat::Contiguous)
                               : at::zeros({d.batch, H}, math_opts);
  const Tensor c0_m = to_math<Ex>(c0);
  // The steps go in blocks, in the workspaces below; each block's share of
  // the input, weight and bias gradients is taken before the next.
  const int64_t block_rows = std::max(kWorkspace / G, d.batch);
  const int64_t workspace_rows = std::min(block_rows, d.rows);
  // The gate gradients and, with a projection, the total dL/dy and h_t before
  // it, per row of a block, are operands of products (scalar_t); dL/dh_t
  // before the projection, per sequence, is a product's result.
  Tensor dgates = at::empty({workspace_rows, G}, opts);
  // Narrowed, the bias gradient sums the gate gradients before their
  // rounding: a sum of few rounded ones loses to cancellation (B=1, T=7:
  // 6x nn.LSTM's error).
  Tensor dgates_wide =
      narrowed && mask.bias ? at::empty({workspace_rows, G}, math_opts) : Tensor();
  Tensor dy_total = proj ? at::empty({workspace_rows, P}, opts) : Tensor();
  Tensor h_raw = mask.proj ? at::empty({workspace_rows, H}, opts) : Tensor();
  Tensor dh_raw = proj ? at::empty({d.batch, H}, math_opts) : Tensor();

  const math_t* dy_p = ptr<math_t>(dy_c);
  math_t* dh_p = ptr<math_t>(dh);
  math_t* dc_p = ptr<math_t>(dc);
  scalar_t* dgates_p = ptr<scalar_t>(dgates);
  math_t* dgates_wide_p = ptr<math_t>(dgates_wide);
  scalar_t* dy_total_p = ptr<scalar_t>(dy_total);
  scalar_t* h_raw_p = ptr<scalar_t>(h_raw);
  math_t* dh_raw_p = ptr<math_t>(dh_raw);
  const math_t* c0_p = ptr<math_t>(c0_m);
  const scalar_t* gates_p = ptr<scalar_t>(gates);
  const math_t* cells_p = ptr<math_t>(cells);
  const Tensor w_hh_b = ex.weights(w_hh, Gates::rows);
  const Tensor w_hr_b = proj ? ex.weights(*w_hr, Gates::none) : Tensor();
  const Tensor w_ih_b = mask.input ? ex.weights(w_ih, Gates::rows) : Tensor();
  const scalar_t* w_hh_p = ptr<scalar_t>(w_hh_b);
  const scalar_t* w_hr_p = ptr<scalar_t>(w_hr_b);

  Tensor dx = mask.input ? at::empty({d.rows, d.input}, math_opts) : Tensor();
  Tensor dw_ih, dw_hh, db, dw_hr;
  // C[g] (+)= A[g]^T B[g] over `rows` rows of each problem g: A and B are
  // (rows, m) and (rows, n), and a problem's rows are every groups-th one.
  const auto weight_grad = [&](Tensor& c, int64_t m, int64_t n, int64_t rows, const scalar_t* a,
                               const scalar_t* b) {
    const bool accumulate = c.defined();
    if (!accumulate) {
      c = groups > 1 ? at::empty({groups, m, n}, math_opts) : at::empty({m, n}, math_opts);
    }
    for (int64_t g = 0; g < groups; ++g) {
      ex.weight_gemm(m, n, rows / groups, a + g * m, m * groups, b + g * n, n * groups,
                     ptr<math_t>(c) + g * m * n, n, accumulate);
    }
  };

  const int64_t flops_per_row = 2 * G * P + (proj ? 2 * H * P : 0);
  for (int64_t end = steps.count(), begin = end; end > 0; end = begin) {
    // The block: steps [begin, end) of the processing order (run backwards),
    // whose rows are contiguous, from row0 on.
    int64_t rows = 0;
    const auto size = [&](int64_t s) { return steps.size(steps.time(s)); };
    while (begin > 0 && (begin == end || rows + size(begin - 1) <= block_rows)) {
      rows += size(--begin);
    }
    const int64_t row0 =
        std::min(steps.offset(steps.time(begin)), steps.offset(steps.time(end - 1)));
    // With a projection, first dL/dy_t in total: dy and what the step
    // processed before (later in time) sends back through h_t.
    const auto total_dy = [&](const StepRows& r, int64_t p0, int64_t p1) {
      for (int64_t row = r.first; row < r.rows; ++row) {
        const int64_t at = row * P + p0;
        ex.add(dy_total_p + (r.off - row0) * P + at, dy_p + r.off * P + at, dh_p + at, p1 - p0);
      }
    };
    const auto gates_and_cells = [&](const StepRows& r, int64_t u0, int64_t u1) {
      for_each_chunk_of_units(ex, r.rows - r.first, H, u0, u1, [&](int64_t a, int64_t b) {
        if (proj) {
          ex.step_gemm(r.rows - r.first, b - a, P, dy_total_p + (r.off - row0 + r.first) * P, P,
                       ex.column(w_hr_p, P, a), H, dh_raw_p + r.first * H + a, H, false);
        }
        ex.cell_backward(r.first, r.rows, a, b, r.carried, H, gates_p + r.off * G,
                         cells_p + r.off * H, cells_p + r.prev * H, c0_p,
                         proj ? dh_raw_p : dy_p + r.off * P, proj ? nullptr : dh_p, dc_p,
                         dgates_p + (r.off - row0) * G,
                         dgates_wide_p ? dgates_wide_p + (r.off - row0) * G : nullptr,
                         h_raw_p ? h_raw_p + (r.off - row0) * H : nullptr);
      });
    };
    // Then dL/dh_{t-1}, for the step processed next.
    const auto state = [&](const StepRows& r, int64_t p0, int64_t p1) {
      ex.step_gemm(r.rows - r.first, p1 - p0, G, dgates_p + (r.off - row0 + r.first) * G, G,
                   ex.column(w_hh_p, G, p0), P, dh_p + r.first * P + p0, P, false);
    };
    run_steps(ex, steps, begin, end, true, flops_per_row, H,
              phase(proj ? P : 0, ex.column_align(), total_dy),
              phase(H, ex.unit_align(), gates_and_cells), phase(P, ex.column_align(), state));

    if (mask.input) {
      ex.sequence_gemm(rows, d.input, G, dgates_p, G, ptr<scalar_t>(w_ih_b),
                       ptr<math_t>(dx) + row0 * d.input, d.input, false);
    }
    if (mask.weights) {
      weight_grad(dw_ih, G, d.input, rows, dgates_p, ptr<scalar_t>(x) + row0 * d.input);
      const int64_t t0 = std::min(steps.time(begin), steps.time(end - 1));
      const int64_t t1 = std::max(steps.time(begin), steps.time(end - 1)) + 1;
      for_each_previous_h_run(steps, t0, t1,
                              [&](int64_t row, int64_t count, bool from_y, int64_t source) {
                                weight_grad(dw_hh, G, P, count, dgates_p + (row - row0) * G,
                                            ptr<scalar_t>(from_y ? y : h0) + source * P);
                              });
    }
    if (mask.bias) {
      const Tensor block = (narrowed ? dgates_wide : dgates).narrow(0, 0, rows);
      const Tensor sum = groups > 1 ? block.view({rows / groups, groups, G}).sum({0}, false, math)
                                    : block.sum({0}, false, math);
      db = db.defined() ? db.add_(sum) : sum;
    }
    if (mask.proj) weight_grad(dw_hr, P, H, rows, dy_total_p, h_raw_p);
  }
  const int64_t gates_dim = groups > 1 ? 1 : 0;
  for (Tensor* t : {&dw_ih, &dw_hh, &db}) {
    if (t->defined()) ex.to_pytorch_gate_order(*t, gates_dim, H);
  }
  return {dx, dh, dc, dw_ih, dw_hh, db, dw_hr};
}

// The forward-mode derivative: the same recurrence as layer_forward, run on
// tangents (t_ prefix) with the forward's saved gates and cells.
template <typename Ex>
LayerOutputs layer_jvp(Ex& ex, const LayerDims& d, const Steps& steps, const Tensor& x,
                        const Tensor& h0, const Tensor& c0, const Tensor& w_ih,
                        const Tensor& w_hh, const OptTensor& w_hr, const Tensor& y,
                        const Tensor& gates, const Tensor& cells, const Tangents& tan) {
  using scalar_t = typename Ex::scalar_t;
  const int64_t H = d.hidden, P = d.out, G = 4 * H;
  const auto opts = x.options();

  // Starts as what the gate pre-activations' tangent owes to all but the
  // tangent of h_{t-1}: dx W_ih^T + x dW_ih^T + h_{t-1} dW_hh^T, in
  // whole-sequence products. Each step adds dh_{t-1} W_hh^T, and its cell
  // pass adds db.
  Tensor t_gates = at::empty({d.rows, G}, opts);
  bool started = false;
  const auto add_product = [&](const Tensor& a, const Tensor& w) {
    const Tensor w_t = ex.weights(w.t(), Gates::columns);
    ex.sequence_gemm(d.rows, G, a.size(1), ptr<scalar_t>(a), a.size(1), ptr<scalar_t>(w_t),
                     ptr<scalar_t>(t_gates), G, started);
    started = true;
  };
  if (tan.x.has_value()) add_product(*tan.x, w_ih);
  if (tan.w_ih.has_value()) add_product(x, *tan.w_ih);
  if (tan.w_hh.has_value()) {
    const Tensor w_t = ex.weights(tan.w_hh->t(), Gates::columns);
    // Each run's rows get their first product here if nothing came before.
    for_each_previous_h_run(steps, 0, steps.count(), [&](int64_t row, int64_t count,
                                                         bool from_y, int64_t source) {
      ex.sequence_gemm(count, G, P, ptr<scalar_t>(from_y ? y : h0) + source * P, P,
                       ptr<scalar_t>(w_t), ptr<scalar_t>(t_gates) + row * G, G, started);
    });
    started = true;
  }
  if (!started) t_gates.zero_();

  Tensor t_y = at::empty({d.rows, P}, opts);
  Tensor t_cells = at::empty({d.rows, H}, opts);
  const Tensor t_h0 = tan.h0.has_value() ? *tan.h0 : at::zeros({d.batch, P}, opts);
  const Tensor t_c0 = tan.c0.has_value() ? *tan.c0 : at::zeros({d.batch, H}, opts);
  const bool proj = w_hr.has_value();
  // With a projection, per sequence: the tangent of h_t before it, and h_t
  // itself when the projection's weight has a tangent.
  Tensor t_h_raw = proj ? at::empty({d.batch, H}, opts) : Tensor();
  Tensor h_raw = tan.w_hr.has_value() ? at::empty({d.batch, H}, opts) : Tensor();
  const Tensor w_hh_t = ex.weights(w_hh.t(), Gates::columns);
  const Tensor w_hr_t = proj ? ex.weights(w_hr->t(), Gates::none) : Tensor();
  const Tensor t_w_hr_t =
      tan.w_hr.has_value() ? ex.weights(tan.w_hr->t(), Gates::none) : Tensor();

  scalar_t* t_gates_p = ptr<scalar_t>(t_gates);
  scalar_t* t_y_p = ptr<scalar_t>(t_y);
  scalar_t* t_cells_p = ptr<scalar_t>(t_cells);
  scalar_t* t_h_raw_p = ptr<scalar_t>(t_h_raw);
  scalar_t* h_raw_p = ptr<scalar_t>(h_raw);
  const scalar_t* t_h0_p = ptr<scalar_t>(t_h0);
  const scalar_t* t_c0_p = ptr<scalar_t>(t_c0);
  const scalar_t* t_bias_p = tan.bias.has_value() ? ptr<scalar_t>(*tan.bias) : nullptr;
  const scalar_t* gates_p = ptr<scalar_t>(gates);
  const scalar_t* cells_p = ptr<scalar_t>(cells);
  const scalar_t* c0_p = ptr<scalar_t>(c0);
  const scalar_t* w_hh_t_p = ptr<scalar_t>(w_hh_t);
  const scalar_t* w_hr_t_p = ptr<scalar_t>(w_hr_t);
  const scalar_t* t_w_hr_t_p = ptr<scalar_t>(t_w_hr_t);

  const auto gates_and_cells = [&](const StepRows& r, int64_t u0, int64_t u1) {
    scalar_t* t_gates_t = t_gates_p + r.off * G;
    for_each_chunk_of_units(ex, r.rows - r.first, H, u0, u1, [&](int64_t a, int64_t b) {
      recurrent_product(ex, r, a, b, P, G, t_y_p, t_h0_p, w_hh_t_p, t_gates_t);
      ex.cell_tangent(r.first, r.rows, a, b, r.carried, H, gates_p + r.off * G,
                      cells_p + r.off * H, cells_p + r.prev * H, c0_p, t_bias_p, t_gates_t,
                      t_cells_p + r.prev * H, t_c0_p, t_cells_p + r.off * H,
                      proj ? t_h_raw_p : t_y_p + r.off * P, h_raw_p);
    });
  };
  const auto projection = [&](const StepRows& r, int64_t p0, int64_t p1) {
    scalar_t* t_y_t = t_y_p + (r.off + r.first) * P + p0;
    ex.step_gemm(r.rows - r.first, p1 - p0, H, t_h_raw_p + r.first * H, H,
                 ex.column(w_hr_t_p, H, p0), P, t_y_t, P, false);
    if (h_raw_p) {
      ex.step_gemm(r.rows - r.first, p1 - p0, H, h_raw_p + r.first * H, H,
                   ex.column(t_w_hr_t_p, H, p0), P, t_y_t, P, true);
    }
  };
  const int64_t flops_per_row = 2 * G * P + (proj ? 2 * H * P : 0);
  run_steps(ex, steps, 0, steps.count(), false, flops_per_row, H,
            phase(H, ex.unit_align(), gates_and_cells),
            phase(proj ? P : 0, ex.column_align(), projection));
  return {t_y, final_state<Ex, scalar_t>(ex, steps, t_y, d.batch),
          final_state<Ex, scalar_t>(ex, steps, t_cells, d.batch)};
}

}  // namespace lstm_ext
