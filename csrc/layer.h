#pragma once
// One LSTM layer, one direction, a whole packed sequence: the time loop,
// written once for every device.
//
// An Executor supplies the per-step work on raw pointers, with no allocation
// or dispatch inside the loop:
//   gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
//       row-major C[m,n] = alpha * op(A)[m,k] op(B)[k,n] + beta * C
//   cell_forward(...), cell_backward(...)   the fused passes over csrc/cell.h
//   copy(dst, src, n), add(dst, a, b, n)
// Whole-sequence work (input projection, weight gradients) is a handful of
// ATen calls per layer, which run on any device.

#include "lstm.h"

#include <ATen/ops/add.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>

namespace lstm_ext {

template <typename Ex>
LayerOut layer_forward(Ex& ex, const LayerDims& d, const Steps& steps, const Tensor& x,
                       const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
                       const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr) {
  using scalar_t = typename Ex::scalar_t;
  const int64_t H = d.hidden, P = d.out, G = 4 * H;

  // The input projection of every step at once; the loop adds h @ w_hh^T in place.
  Tensor gates;
  if (b_ih.has_value() || b_hh.has_value()) {
    const Tensor bias = b_ih.has_value() && b_hh.has_value() ? at::add(*b_ih, *b_hh)
                        : b_ih.has_value()                    ? *b_ih
                                                              : *b_hh;
    gates = at::addmm(bias, x, w_ih.t());
  } else {
    gates = at::mm(x, w_ih.t());
  }
  Tensor h = h0.clone(at::MemoryFormat::Contiguous);
  Tensor c = c0.clone(at::MemoryFormat::Contiguous);
  Tensor y = at::empty({d.rows, P}, x.options());
  Tensor cells = at::empty({d.rows, H}, x.options());
  Tensor h_raw = w_hr.has_value() ? at::empty({d.batch, H}, x.options()) : Tensor();

  scalar_t* gates_p = gates.data_ptr<scalar_t>();
  scalar_t* cells_p = cells.data_ptr<scalar_t>();
  scalar_t* y_p = y.data_ptr<scalar_t>();
  scalar_t* h_p = h.data_ptr<scalar_t>();
  scalar_t* c_p = c.data_ptr<scalar_t>();
  const scalar_t* w_hh_p = w_hh.const_data_ptr<scalar_t>();
  const scalar_t* w_hr_p = w_hr.has_value() ? w_hr->const_data_ptr<scalar_t>() : nullptr;
  scalar_t* h_raw_p = w_hr.has_value() ? h_raw.data_ptr<scalar_t>() : nullptr;

  // h and c hold each sequence's latest state: rows a step does not touch keep
  // theirs, so they end as h_n and c_n, and a reverse sequence joining late
  // finds its h0 and c0 there.
  for (int64_t s = 0; s < steps.count(); ++s) {
    const int64_t t = steps.time(s), rows = steps.size(t);
    scalar_t* gates_t = gates_p + steps.offset(t) * G;
    scalar_t* y_t = y_p + steps.offset(t) * P;
    ex.gemm(false, true, rows, G, P, 1, h_p, P, w_hh_p, P, 1, gates_t, G);
    ex.cell_forward(rows, H, gates_t, c_p, cells_p + steps.offset(t) * H,
                    w_hr_p ? h_raw_p : y_t);
    if (w_hr_p) ex.gemm(false, true, rows, P, H, 1, h_raw_p, H, w_hr_p, H, 0, y_t, P);
    ex.copy(h_p, y_t, rows * P);
  }
  return {y, h, c, gates, cells};
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
  Tensor dh = dh_n.has_value() ? dh_n->clone(at::MemoryFormat::Contiguous)
                               : at::zeros({d.batch, P}, opts);
  Tensor dc = dc_n.has_value() ? dc_n->clone(at::MemoryFormat::Contiguous)
                               : at::zeros({d.batch, H}, opts);
  Tensor dgates = at::empty({d.rows, G}, opts);
  // Row r holds the h_{t-1} that row r of the gates saw: dw_hh in one GEMM.
  Tensor h_prev = mask.weights ? at::empty({d.rows, P}, opts) : Tensor();
  // With a projection: the total dL/dy_t per row, h_t recomputed, dL/dh_t (pre-projection).
  Tensor dy_total = proj ? at::empty({d.rows, P}, opts) : Tensor();
  Tensor h_raw = mask.proj ? at::empty({d.rows, H}, opts) : Tensor();
  Tensor dh_raw = proj ? at::empty({d.batch, H}, opts) : Tensor();

  const scalar_t* dy_p = dy_c.const_data_ptr<scalar_t>();
  scalar_t* dh_p = dh.data_ptr<scalar_t>();
  scalar_t* dc_p = dc.data_ptr<scalar_t>();
  scalar_t* dgates_p = dgates.data_ptr<scalar_t>();
  scalar_t* h_prev_p = mask.weights ? h_prev.data_ptr<scalar_t>() : nullptr;
  scalar_t* dy_total_p = proj ? dy_total.data_ptr<scalar_t>() : nullptr;
  scalar_t* h_raw_p = mask.proj ? h_raw.data_ptr<scalar_t>() : nullptr;
  scalar_t* dh_raw_p = proj ? dh_raw.data_ptr<scalar_t>() : nullptr;
  const scalar_t* y_p = y.const_data_ptr<scalar_t>();
  const scalar_t* h0_p = h0.const_data_ptr<scalar_t>();
  const scalar_t* c0_p = c0.const_data_ptr<scalar_t>();
  const scalar_t* gates_p = gates.const_data_ptr<scalar_t>();
  const scalar_t* cells_p = cells.const_data_ptr<scalar_t>();
  const scalar_t* w_hh_p = w_hh.const_data_ptr<scalar_t>();
  const scalar_t* w_hr_p = proj ? w_hr->const_data_ptr<scalar_t>() : nullptr;

  // dh and dc hold, per sequence, the gradient flowing into its latest-processed
  // state: they start as dh_n, dc_n and end as dh0, dc0.
  for (int64_t s = steps.count() - 1; s >= 0; --s) {
    const int64_t t = steps.time(s), rows = steps.size(t), off = steps.offset(t);
    const int64_t carried = steps.carried(t);
    const int64_t prev_off = carried > 0 ? steps.offset(steps.previous(t)) : 0;
    const scalar_t* c_prev = cells_p + prev_off * H;

    if (h_prev_p) {
      ex.copy(h_prev_p + off * P, y_p + prev_off * P, carried * P);
      ex.copy(h_prev_p + (off + carried) * P, h0_p + carried * P, (rows - carried) * P);
    }
    if (proj) {
      ex.add(dy_total_p + off * P, dy_p + off * P, dh_p, rows * P);
      ex.gemm(false, false, rows, H, P, 1, dy_total_p + off * P, P, w_hr_p, H, 0, dh_raw_p, H);
      ex.cell_backward(rows, carried, H, gates_p + off * G, cells_p + off * H, c_prev, c0_p,
                       dh_raw_p, nullptr, dc_p, dgates_p + off * G,
                       h_raw_p ? h_raw_p + off * H : nullptr);
    } else {
      ex.cell_backward(rows, carried, H, gates_p + off * G, cells_p + off * H, c_prev, c0_p,
                       dy_p + off * P, dh_p, dc_p, dgates_p + off * G, nullptr);
    }
    ex.gemm(false, false, rows, P, G, 1, dgates_p + off * G, G, w_hh_p, P, 0, dh_p, P);
  }

  Tensor dx, dw_ih, dw_hh, db, dw_hr;
  if (mask.input) dx = at::mm(dgates, w_ih);
  if (mask.weights) {
    dw_ih = at::mm(dgates.t(), x);
    dw_hh = at::mm(dgates.t(), h_prev);
  }
  if (mask.bias) db = dgates.sum(0);
  if (mask.proj) dw_hr = at::mm(dy_total.t(), h_raw);
  return {dx, dh, dc, dw_ih, dw_hh, db, dw_hr};
}

}  // namespace lstm_ext
