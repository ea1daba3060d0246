#pragma once
// One LSTM layer, one direction, a whole packed sequence: the time loop,
// written once for every device.
//
// The recurrence couples the steps of a sequence, never two sequences, so
// the loop runs over a range of sequences [first, last): the executor decides
// how to cover the batch with ranges (one per CPU thread; the whole batch on
// a GPU). It supplies, on raw pointers, with no allocation or dispatch inside
// the loop:
//   for_each_row_range(steps, flops_per_row, body)   calls body(first, last)
//   weights(b)   a (k, n) weight (any strides) laid out for the products below
//   step_gemm / sequence_gemm(m, n, k, a, lda, b, c, ldc, accumulate)
//       row-major C[m,n] (+)= A[m,k] B[k,n], b from weights(), for a step's
//       rows / whole sequences
//   weight_gemm(m, n, k, a, lda, b, ldb, c, ldc)
//       C[m,n] = A[k,m]^T B[k,n], a weight gradient summed over a whole sequence
//   cell_forward(...), cell_backward(...), cell_tangent(...)
//       the fused passes over csrc/cell.h
//   copy(dst, src, n), add(dst, a, b, n)
// Weights are laid out once per call (weights()), so that the loop only
// multiplies them in the form its executor's products want.
//
// Within a step, row r is sequence r. Its previous state is row r of the
// previously processed step if r < carried(t), else row r of h0/c0.

#include "lstm.h"

#include <ATen/ops/add.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>

#include <algorithm>

namespace lstm_ext {

template <typename scalar_t>
scalar_t* ptr(const Tensor& t) {
  return t.defined() ? t.data_ptr<scalar_t>() : nullptr;
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

// Calls body(StepRows) for the steps [begin, end) of the processing order
// (in reverse, for a backward pass) in which the range [first, last) has rows.
template <typename Body>
void for_each_step(const Steps& steps, int64_t begin, int64_t end, int64_t first, int64_t last,
                   bool backwards, const Body& body) {
  for (int64_t i = begin; i < end; ++i) {
    const int64_t t = steps.time(backwards ? end - 1 - (i - begin) : i);
    const int64_t rows = std::min(last, steps.size(t));
    if (first >= rows) continue;
    const int64_t carried = steps.carried(t);
    body(StepRows{t, first, rows, steps.offset(t), carried,
                  carried > 0 ? steps.offset(steps.previous(t)) : 0,
                  std::clamp(carried, first, rows)});
  }
}

// The forward recurrence over the steps [begin, end) of the processing order,
// shared by the layer, its inference and its tangent. Per step, gates (row
// stride 4H, holding rows from row0 on) += h_{t-1} W_hh^T, h_{t-1} being the
// previously processed step's rows of `out` or rows of `out0` (row stride
// P); then cell(StepRows) runs the cell pass and writes the step's rows of
// `out`.
template <typename Ex, typename scalar_t, typename Cell>
void recurrence(Ex& ex, const Steps& steps, int64_t begin, int64_t end, int64_t flops_per_row,
                int64_t G, int64_t P, scalar_t* gates, int64_t row0, const scalar_t* out,
                const scalar_t* out0, const scalar_t* w_hh_t, const Cell& cell) {
  ex.for_each_row_range(steps, flops_per_row, [&](int64_t first, int64_t last) {
    for_each_step(steps, begin, end, first, last, false, [&](const StepRows& r) {
      scalar_t* gates_t = gates + (r.off - row0) * G;
      ex.step_gemm(r.split - r.first, G, P, out + (r.prev + r.first) * P, P, w_hh_t,
                   gates_t + r.first * G, G, true);
      ex.step_gemm(r.rows - r.split, G, P, out0 + r.split * P, P, w_hh_t, gates_t + r.split * G,
                   G, true);
      cell(r);
    });
  });
}

// Row r of the result is the h_{t-1} that row r of the gates saw: a row of
// the previously processed step's output, or of h0. With it, a weight's
// gradient or tangent through h_{t-1} is one whole-sequence product.
template <typename Ex, typename scalar_t>
Tensor previous_h(Ex& ex, const Steps& steps, const Tensor& y, const Tensor& h0) {
  const int64_t P = y.size(1);
  Tensor out = at::empty_like(y);
  scalar_t* out_p = ptr<scalar_t>(out);
  const scalar_t* y_p = ptr<scalar_t>(y);
  const scalar_t* h0_p = ptr<scalar_t>(h0);
  ex.for_each_row_range(steps, P, [&](int64_t first, int64_t last) {
    for_each_step(steps, 0, steps.count(), first, last, false, [&](const StepRows& r) {
      ex.copy(out_p + (r.off + r.first) * P, y_p + (r.prev + r.first) * P,
              (r.split - r.first) * P);
      ex.copy(out_p + (r.off + r.split) * P, h0_p + r.split * P, (r.rows - r.split) * P);
    });
  });
  return out;
}

// With no backward to come, the input projection is computed for a block of
// steps at a time, into a workspace of about this many elements: one product
// of many rows per block, and memory that does not grow with T.
constexpr int64_t kInferenceWorkspace = int64_t(1) << 21;

// The layer's forward. Saving for backward (`save`), it returns y, h_n, c_n
// and the activated gates and c_t of every row; otherwise y, h_n and c_n
// alone, and it keeps neither: the gates of one block of steps at a time, and
// one c per sequence, updated in place (and c_n at the end).
template <typename Ex>
LayerOut layer_forward(Ex& ex, const LayerDims& d, const Steps& steps, const Tensor& x,
                       const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
                       const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr,
                       bool save) {
  using scalar_t = typename Ex::scalar_t;
  const int64_t H = d.hidden, P = d.out, G = 4 * H;
  const auto opts = x.options();

  const Tensor w_ih_t = ex.weights(w_ih.t()), w_hh_t = ex.weights(w_hh.t());
  const Tensor w_hr_t = w_hr.has_value() ? ex.weights(w_hr->t()) : Tensor();
  const Tensor bias = b_ih.has_value() && b_hh.has_value() ? at::add(*b_ih, *b_hh)
                      : b_ih.has_value()                    ? *b_ih
                      : b_hh.has_value()                    ? *b_hh
                                                            : Tensor();
  // A block's rows start as their input projection; each step adds h W_hh^T,
  // and its cell pass adds the bias and leaves the activated gates.
  const int64_t block_rows = save ? d.rows : std::max(kInferenceWorkspace / G, d.batch);
  Tensor gates = at::empty({std::min(block_rows, d.rows), G}, opts);
  Tensor y = at::empty({d.rows, P}, opts);
  Tensor cells = at::empty({save ? d.rows : d.batch, H}, opts);
  // With a projection, h_t before it; row r belongs to sequence r.
  Tensor h_raw = w_hr.has_value() ? at::empty({d.batch, H}, opts) : Tensor();

  scalar_t* gates_p = ptr<scalar_t>(gates);
  scalar_t* cells_p = ptr<scalar_t>(cells);
  scalar_t* y_p = ptr<scalar_t>(y);
  scalar_t* h_raw_p = ptr<scalar_t>(h_raw);
  const scalar_t* x_p = ptr<scalar_t>(x);
  const scalar_t* h0_p = ptr<scalar_t>(h0);
  const scalar_t* c0_p = ptr<scalar_t>(c0);
  const scalar_t* bias_p = ptr<scalar_t>(bias);
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
    recurrence(ex, steps, begin, end, flops_per_row, G, P, gates_p, row0, y_p, h0_p, w_hh_t_p,
               [&](const StepRows& r) {
                 scalar_t* y_t = y_p + r.off * P;
                 // Saving, row r's c_t goes to its own row of cells; otherwise
                 // to row r of the per-sequence c, which held its c_{t-1}.
                 scalar_t* c_prev = save ? cells_p + r.prev * H : cells_p;
                 scalar_t* c_out = save ? cells_p + r.off * H : cells_p;
                 ex.cell_forward(r.first, r.rows, r.carried, H, gates_p + (r.off - row0) * G,
                                 bias_p, c_prev, c0_p, c_out, h_raw_p ? h_raw_p : y_t);
                 if (h_raw_p) {
                   ex.step_gemm(r.rows - r.first, P, H, h_raw_p + r.first * H, H, w_hr_t_p,
                                y_t + r.first * P, P, false);
                 }
               });
  }
  Tensor h_n = final_state<Ex, scalar_t>(ex, steps, y, d.batch);
  if (!save) return {y, h_n, cells, Tensor(), Tensor()};
  return {y, h_n, final_state<Ex, scalar_t>(ex, steps, cells, d.batch), gates, cells};
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
  const int64_t H = d.hidden, P = d.out, G = 4 * H;
  const auto opts = x.options();
  const bool proj = w_hr.has_value();

  const Tensor dy_c = dy.has_value() ? dy->contiguous() : at::zeros({d.rows, P}, opts);
  // Per sequence, the gradient flowing into its latest-processed state: they
  // start as dh_n and dc_n and end as dh0 and dc0.
  Tensor dh = dh_n.has_value() ? dh_n->clone(at::MemoryFormat::Contiguous)
                               : at::zeros({d.batch, P}, opts);
  Tensor dc = dc_n.has_value() ? dc_n->clone(at::MemoryFormat::Contiguous)
                               : at::zeros({d.batch, H}, opts);
  Tensor dgates = at::empty({d.rows, G}, opts);
  const Tensor h_prev = mask.weights ? previous_h<Ex, scalar_t>(ex, steps, y, h0) : Tensor();
  // With a projection: the total dL/dy per row, h_t before it per row, and
  // dL/dh_t before it per sequence.
  Tensor dy_total = proj ? at::empty({d.rows, P}, opts) : Tensor();
  Tensor h_raw = mask.proj ? at::empty({d.rows, H}, opts) : Tensor();
  Tensor dh_raw = proj ? at::empty({d.batch, H}, opts) : Tensor();

  const scalar_t* dy_p = ptr<scalar_t>(dy_c);
  scalar_t* dh_p = ptr<scalar_t>(dh);
  scalar_t* dc_p = ptr<scalar_t>(dc);
  scalar_t* dgates_p = ptr<scalar_t>(dgates);
  const scalar_t* h_prev_p = ptr<scalar_t>(h_prev);
  scalar_t* dy_total_p = ptr<scalar_t>(dy_total);
  scalar_t* h_raw_p = ptr<scalar_t>(h_raw);
  scalar_t* dh_raw_p = ptr<scalar_t>(dh_raw);
  const scalar_t* c0_p = ptr<scalar_t>(c0);
  const scalar_t* gates_p = ptr<scalar_t>(gates);
  const scalar_t* cells_p = ptr<scalar_t>(cells);
  const Tensor w_hh_step = ex.weights(w_hh);
  const Tensor w_hr_step = proj ? ex.weights(*w_hr) : Tensor();
  const scalar_t* w_hh_p = ptr<scalar_t>(w_hh_step);
  const scalar_t* w_hr_p = ptr<scalar_t>(w_hr_step);

  const int64_t flops_per_row = 2 * G * P + (proj ? 2 * H * P : 0);
  ex.for_each_row_range(steps, flops_per_row, [&](int64_t first, int64_t last) {
    for_each_step(steps, 0, steps.count(), first, last, true, [&](const StepRows& r) {
      const int64_t n = r.rows - r.first;
      const scalar_t* dh_t = dy_p + r.off * P;
      const scalar_t* dh_extra = dh_p;
      if (proj) {
        scalar_t* dy_total_t = dy_total_p + (r.off + r.first) * P;
        ex.add(dy_total_t, dh_t + r.first * P, dh_p + r.first * P, n * P);
        ex.step_gemm(n, H, P, dy_total_t, P, w_hr_p, dh_raw_p + r.first * H, H, false);
        dh_t = dh_raw_p;
        dh_extra = nullptr;
      }
      ex.cell_backward(r.first, r.rows, r.carried, H, gates_p + r.off * G, cells_p + r.off * H,
                       cells_p + r.prev * H, c0_p, dh_t, dh_extra, dc_p, dgates_p + r.off * G,
                       h_raw_p ? h_raw_p + r.off * H : nullptr);
      ex.step_gemm(n, P, G, dgates_p + (r.off + r.first) * G, G, w_hh_p, dh_p + r.first * P, P,
                   false);
    });
  });

  Tensor dx, dw_ih, dw_hh, db, dw_hr;
  if (mask.input) {
    dx = at::empty({d.rows, d.input}, opts);
    const Tensor w_ih_b = ex.weights(w_ih);
    ex.sequence_gemm(d.rows, d.input, G, dgates_p, G, ptr<scalar_t>(w_ih_b), ptr<scalar_t>(dx),
                     d.input, false);
  }
  // C[g] = A[g]^T B[g] over the rows of each problem g: A and B are (rows, m)
  // and (rows, n), and a problem's rows are every groups-th one.
  const int64_t group_rows = d.rows / groups;
  const auto weight_grad = [&](int64_t m, int64_t n, const scalar_t* a, const scalar_t* b) {
    Tensor c = groups > 1 ? at::empty({groups, m, n}, opts) : at::empty({m, n}, opts);
    for (int64_t g = 0; g < groups; ++g) {
      ex.weight_gemm(m, n, group_rows, a + g * m, m * groups, b + g * n, n * groups,
                     ptr<scalar_t>(c) + g * m * n, n);
    }
    return c;
  };
  if (mask.weights) {
    dw_ih = weight_grad(G, d.input, dgates_p, ptr<scalar_t>(x));
    dw_hh = weight_grad(G, P, dgates_p, h_prev_p);
  }
  if (mask.bias) db = groups > 1 ? dgates.view({group_rows, groups, G}).sum(0) : dgates.sum(0);
  if (mask.proj) dw_hr = weight_grad(P, H, dy_total_p, h_raw_p);
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
    const Tensor w_t = ex.weights(w.t());
    ex.sequence_gemm(d.rows, G, a.size(1), ptr<scalar_t>(a), a.size(1), ptr<scalar_t>(w_t),
                     ptr<scalar_t>(t_gates), G, started);
    started = true;
  };
  if (tan.x.has_value()) add_product(*tan.x, w_ih);
  if (tan.w_ih.has_value()) add_product(x, *tan.w_ih);
  if (tan.w_hh.has_value()) add_product(previous_h<Ex, scalar_t>(ex, steps, y, h0), *tan.w_hh);
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
  const Tensor w_hh_t = ex.weights(w_hh.t());
  const Tensor w_hr_t = proj ? ex.weights(w_hr->t()) : Tensor();
  const Tensor t_w_hr_t = tan.w_hr.has_value() ? ex.weights(tan.w_hr->t()) : Tensor();

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

  const int64_t flops_per_row = 2 * G * P + (proj ? 2 * H * P : 0);
  recurrence(ex, steps, 0, steps.count(), flops_per_row, G, P, t_gates_p, 0, t_y_p, t_h0_p,
             w_hh_t_p, [&](const StepRows& r) {
               const int64_t n = r.rows - r.first;
               scalar_t* t_y_t = t_y_p + r.off * P;
               ex.cell_tangent(r.first, r.rows, r.carried, H, gates_p + r.off * G,
                               cells_p + r.off * H, cells_p + r.prev * H, c0_p, t_bias_p,
                               t_gates_p + r.off * G, t_cells_p + r.prev * H, t_c0_p,
                               t_cells_p + r.off * H, proj ? t_h_raw_p : t_y_t, h_raw_p);
               if (proj) {
                 ex.step_gemm(n, P, H, t_h_raw_p + r.first * H, H, w_hr_t_p,
                              t_y_t + r.first * P, P, false);
               }
               if (h_raw_p) {
                 ex.step_gemm(n, P, H, h_raw_p + r.first * H, H, t_w_hr_t_p,
                              t_y_t + r.first * P, P, true);
               }
             });
  return {t_y, final_state<Ex, scalar_t>(ex, steps, t_y, d.batch),
          final_state<Ex, scalar_t>(ex, steps, t_cells, d.batch)};
}

}  // namespace lstm_ext
