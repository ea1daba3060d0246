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
//   cell_forward(...), cell_backward(...)  the fused passes over csrc/cell.h
//   copy(dst, src, n), add(dst, a, b, n)
// Weights are laid out once per call (weights()), so that the loop only
// multiplies them in the form its executor's products want.
//
// Within a step, row r is sequence r. Its previous state is row r of the
// previously processed step if r < carried(t), else row r of h0/c0.

#include "lstm.h"

#include <ATen/ops/add.h>
#include <ATen/ops/empty.h>
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

template <typename Ex>
LayerOut layer_forward(Ex& ex, const LayerDims& d, const Steps& steps, const Tensor& x,
                       const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
                       const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr) {
  using scalar_t = typename Ex::scalar_t;
  const int64_t H = d.hidden, P = d.out, G = 4 * H;
  const auto opts = x.options();

  const Tensor w_ih_t = ex.weights(w_ih.t()), w_hh_t = ex.weights(w_hh.t());
  const Tensor w_hr_t = w_hr.has_value() ? ex.weights(w_hr->t()) : Tensor();
  const Tensor bias = b_ih.has_value() && b_hh.has_value() ? at::add(*b_ih, *b_hh)
                      : b_ih.has_value()                    ? *b_ih
                      : b_hh.has_value()                    ? *b_hh
                                                            : Tensor();
  // Starts as the input projection of every step; each step adds h W_hh^T,
  // and its cell pass adds the bias and leaves the activated gates.
  Tensor gates = at::empty({d.rows, G}, opts);
  Tensor y = at::empty({d.rows, P}, opts);
  Tensor cells = at::empty({d.rows, H}, opts);
  // With a projection, h_t before it; row r belongs to sequence r.
  Tensor h_raw = w_hr.has_value() ? at::empty({d.batch, H}, opts) : Tensor();

  scalar_t* gates_p = ptr<scalar_t>(gates);
  scalar_t* cells_p = ptr<scalar_t>(cells);
  scalar_t* y_p = ptr<scalar_t>(y);
  scalar_t* h_raw_p = ptr<scalar_t>(h_raw);
  const scalar_t* h0_p = ptr<scalar_t>(h0);
  const scalar_t* c0_p = ptr<scalar_t>(c0);
  const scalar_t* bias_p = ptr<scalar_t>(bias);
  const scalar_t* w_hh_t_p = ptr<scalar_t>(w_hh_t);
  const scalar_t* w_hr_t_p = ptr<scalar_t>(w_hr_t);

  ex.sequence_gemm(d.rows, G, d.input, ptr<scalar_t>(x), d.input, ptr<scalar_t>(w_ih_t), gates_p,
                   G, false);
  const int64_t flops_per_row = 2 * G * P + (h_raw_p ? 2 * H * P : 0);
  ex.for_each_row_range(steps, flops_per_row, [&](int64_t first, int64_t last) {
    for (int64_t s = 0; s < steps.count(); ++s) {
      const int64_t t = steps.time(s), rows = std::min(last, steps.size(t));
      if (first >= rows) continue;
      const int64_t off = steps.offset(t), carried = steps.carried(t);
      const int64_t prev = carried > 0 ? steps.offset(steps.previous(t)) : 0;
      const int64_t split = std::clamp(carried, first, rows);
      scalar_t* gates_t = gates_p + off * G;
      scalar_t* y_t = y_p + off * P;
      ex.step_gemm(split - first, G, P, y_p + (prev + first) * P, P, w_hh_t_p,
                   gates_t + first * G, G, true);
      ex.step_gemm(rows - split, G, P, h0_p + split * P, P, w_hh_t_p, gates_t + split * G, G,
                   true);
      ex.cell_forward(first, rows, carried, H, gates_t, bias_p, cells_p + prev * H, c0_p,
                      cells_p + off * H, h_raw_p ? h_raw_p : y_t);
      if (h_raw_p) {
        ex.step_gemm(rows - first, P, H, h_raw_p + first * H, H, w_hr_t_p, y_t + first * P, P,
                     false);
      }
    }
  });
  return {y, final_state<Ex, scalar_t>(ex, steps, y, d.batch),
          final_state<Ex, scalar_t>(ex, steps, cells, d.batch), gates, cells};
}

template <typename Ex>
LayerGrads layer_backward(Ex& ex, const LayerDims& d, const Steps& steps, const GradMask& mask,
                          const OptTensor& dy, const OptTensor& dh_n, const OptTensor& dc_n,
                          const Tensor& x, const Tensor& h0, const Tensor& c0, const Tensor& w_ih,
                          const Tensor& w_hh, const OptTensor& w_hr, const Tensor& y,
                          const Tensor& gates, const Tensor& cells) {
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
  // Row r holds the h_{t-1} that row r of the gates saw: dw_hh in one product.
  Tensor h_prev = mask.weights ? at::empty({d.rows, P}, opts) : Tensor();
  // With a projection: the total dL/dy per row, h_t before it per row, and
  // dL/dh_t before it per sequence.
  Tensor dy_total = proj ? at::empty({d.rows, P}, opts) : Tensor();
  Tensor h_raw = mask.proj ? at::empty({d.rows, H}, opts) : Tensor();
  Tensor dh_raw = proj ? at::empty({d.batch, H}, opts) : Tensor();

  const scalar_t* dy_p = ptr<scalar_t>(dy_c);
  scalar_t* dh_p = ptr<scalar_t>(dh);
  scalar_t* dc_p = ptr<scalar_t>(dc);
  scalar_t* dgates_p = ptr<scalar_t>(dgates);
  scalar_t* h_prev_p = ptr<scalar_t>(h_prev);
  scalar_t* dy_total_p = ptr<scalar_t>(dy_total);
  scalar_t* h_raw_p = ptr<scalar_t>(h_raw);
  scalar_t* dh_raw_p = ptr<scalar_t>(dh_raw);
  const scalar_t* y_p = ptr<scalar_t>(y);
  const scalar_t* h0_p = ptr<scalar_t>(h0);
  const scalar_t* c0_p = ptr<scalar_t>(c0);
  const scalar_t* gates_p = ptr<scalar_t>(gates);
  const scalar_t* cells_p = ptr<scalar_t>(cells);
  const Tensor w_hh_step = ex.weights(w_hh);
  const Tensor w_hr_step = proj ? ex.weights(*w_hr) : Tensor();
  const scalar_t* w_hh_p = ptr<scalar_t>(w_hh_step);
  const scalar_t* w_hr_p = ptr<scalar_t>(w_hr_step);

  const int64_t flops_per_row = 2 * G * P + (proj ? 2 * H * P : 0);
  ex.for_each_row_range(steps, flops_per_row, [&](int64_t first, int64_t last) {
    for (int64_t s = steps.count() - 1; s >= 0; --s) {
      const int64_t t = steps.time(s), rows = std::min(last, steps.size(t));
      if (first >= rows) continue;
      const int64_t off = steps.offset(t), carried = steps.carried(t);
      const int64_t prev = carried > 0 ? steps.offset(steps.previous(t)) : 0;
      const int64_t split = std::clamp(carried, first, rows);
      if (h_prev_p) {
        ex.copy(h_prev_p + (off + first) * P, y_p + (prev + first) * P, (split - first) * P);
        ex.copy(h_prev_p + (off + split) * P, h0_p + split * P, (rows - split) * P);
      }
      const scalar_t* dh_t = dy_p + off * P;
      const scalar_t* dh_extra = dh_p;
      if (proj) {
        scalar_t* dy_total_t = dy_total_p + off * P;
        ex.add(dy_total_t + first * P, dh_t + first * P, dh_p + first * P, (rows - first) * P);
        ex.step_gemm(rows - first, H, P, dy_total_t + first * P, P, w_hr_p,
                     dh_raw_p + first * H, H, false);
        dh_t = dh_raw_p;
        dh_extra = nullptr;
      }
      ex.cell_backward(first, rows, carried, H, gates_p + off * G, cells_p + off * H,
                       cells_p + prev * H, c0_p, dh_t, dh_extra, dc_p, dgates_p + off * G,
                       h_raw_p ? h_raw_p + off * H : nullptr);
      ex.step_gemm(rows - first, P, G, dgates_p + (off + first) * G, G, w_hh_p,
                   dh_p + first * P, P, false);
    }
  });

  Tensor dx, dw_ih, dw_hh, db, dw_hr;
  if (mask.input) {
    dx = at::empty({d.rows, d.input}, opts);
    const Tensor w_ih_b = ex.weights(w_ih);
    ex.sequence_gemm(d.rows, d.input, G, dgates_p, G, ptr<scalar_t>(w_ih_b), ptr<scalar_t>(dx),
                     d.input, false);
  }
  if (mask.weights) {
    dw_ih = at::empty({G, d.input}, opts);
    dw_hh = at::empty({G, P}, opts);
    ex.weight_gemm(G, d.input, d.rows, dgates_p, G, ptr<scalar_t>(x), d.input,
                   ptr<scalar_t>(dw_ih), d.input);
    ex.weight_gemm(G, P, d.rows, dgates_p, G, h_prev_p, P, ptr<scalar_t>(dw_hh), P);
  }
  if (mask.bias) db = dgates.sum(0);
  if (mask.proj) {
    dw_hr = at::empty({P, H}, opts);
    ex.weight_gemm(P, H, d.rows, dy_total_p, P, h_raw_p, H, ptr<scalar_t>(dw_hr), H);
  }
  return {dx, dh, dc, dw_ih, dw_hh, db, dw_hr};
}

}  // namespace lstm_ext
