#pragma once
// One LSTM layer, one direction, a whole packed sequence: the time loop,
// written once for every device.
//
// An Executor supplies the work on raw pointers, with no allocation or
// dispatch inside the loop:
//   gemm(m, n, k, a, lda, b, ldb, c, ldc, accumulate)
//       row-major C[m,n] (+)= A[m,k] B[k,n]
//   cell_forward(...), cell_backward(...)   the fused passes over csrc/cell.h
//   copy(dst, src, n), add(dst, a, b, n)
// Every product is laid out here, once per call, so that the executor only
// ever multiplies untransposed row-major operands.

#include "lstm.h"

#include <ATen/ops/add.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>

namespace lstm_ext {

// A contiguous copy of t^T (t is 2-D).
inline Tensor transposed(const Tensor& t) { return t.t().contiguous(); }

template <typename scalar_t>
scalar_t* ptr(const Tensor& t) {
  return t.defined() ? t.data_ptr<scalar_t>() : nullptr;
}

template <typename Ex>
LayerOut layer_forward(Ex& ex, const LayerDims& d, const Steps& steps, const Tensor& x,
                       const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
                       const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr) {
  using scalar_t = typename Ex::scalar_t;
  const int64_t H = d.hidden, P = d.out, G = 4 * H;
  const auto opts = x.options();

  const Tensor w_ih_t = transposed(w_ih), w_hh_t = transposed(w_hh);
  const Tensor w_hr_t = w_hr.has_value() ? transposed(*w_hr) : Tensor();
  const Tensor bias = b_ih.has_value() && b_hh.has_value() ? at::add(*b_ih, *b_hh)
                      : b_ih.has_value()                    ? *b_ih
                      : b_hh.has_value()                    ? *b_hh
                                                            : Tensor();
  // The input projection of every step at once; the loop adds h W_hh^T in
  // place, the cell pass adds the bias and turns them into activated gates.
  Tensor gates = at::empty({d.rows, G}, opts);
  Tensor h = h0.clone(at::MemoryFormat::Contiguous);
  Tensor c = c0.clone(at::MemoryFormat::Contiguous);
  Tensor y = at::empty({d.rows, P}, opts);
  Tensor cells = at::empty({d.rows, H}, opts);
  Tensor h_raw = w_hr.has_value() ? at::empty({d.batch, H}, opts) : Tensor();

  scalar_t* gates_p = ptr<scalar_t>(gates);
  scalar_t* cells_p = ptr<scalar_t>(cells);
  scalar_t* y_p = ptr<scalar_t>(y);
  scalar_t* h_p = ptr<scalar_t>(h);
  scalar_t* c_p = ptr<scalar_t>(c);
  scalar_t* h_raw_p = ptr<scalar_t>(h_raw);
  const scalar_t* bias_p = ptr<scalar_t>(bias);
  const scalar_t* w_hh_t_p = ptr<scalar_t>(w_hh_t);
  const scalar_t* w_hr_t_p = ptr<scalar_t>(w_hr_t);

  ex.gemm(d.rows, G, d.input, ptr<scalar_t>(x), d.input, ptr<scalar_t>(w_ih_t), G, gates_p, G,
          false);
  // h and c hold each sequence's latest state: rows a step does not touch keep
  // theirs, so they end as h_n and c_n, and a reverse sequence joining late
  // finds its h0 and c0 there.
  for (int64_t s = 0; s < steps.count(); ++s) {
    const int64_t t = steps.time(s), rows = steps.size(t);
    scalar_t* gates_t = gates_p + steps.offset(t) * G;
    scalar_t* y_t = y_p + steps.offset(t) * P;
    ex.gemm(rows, G, P, h_p, P, w_hh_t_p, G, gates_t, G, true);
    ex.cell_forward(rows, H, gates_t, bias_p, c_p, cells_p + steps.offset(t) * H,
                    h_raw_p ? h_raw_p : y_t);
    if (h_raw_p) ex.gemm(rows, P, H, h_raw_p, H, w_hr_t_p, P, y_t, P, false);
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
  // Row r holds the h_{t-1} that row r of the gates saw: dw_hh in one product.
  Tensor h_prev = mask.weights ? at::empty({d.rows, P}, opts) : Tensor();
  // With a projection: the total dL/dy_t per row, h_t recomputed, dL/dh_t (pre-projection).
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
  const scalar_t* w_hh_p = ptr<scalar_t>(w_hh);
  const scalar_t* w_hr_p = proj ? ptr<scalar_t>(*w_hr) : nullptr;

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
      ex.gemm(rows, H, P, dy_total_p + off * P, P, w_hr_p, H, dh_raw_p, H, false);
      ex.cell_backward(rows, carried, H, gates_p + off * G, cells_p + off * H, c_prev, c0_p,
                       dh_raw_p, nullptr, dc_p, dgates_p + off * G,
                       h_raw_p ? h_raw_p + off * H : nullptr);
    } else {
      ex.cell_backward(rows, carried, H, gates_p + off * G, cells_p + off * H, c_prev, c0_p,
                       dy_p + off * P, dh_p, dc_p, dgates_p + off * G, nullptr);
    }
    ex.gemm(rows, P, G, dgates_p + off * G, G, w_hh_p, P, dh_p, P, false);
  }

  Tensor dx, dw_ih, dw_hh, db, dw_hr;
  if (mask.input) {
    dx = at::empty({d.rows, d.input}, opts);
    ex.gemm(d.rows, d.input, G, dgates_p, G, ptr<scalar_t>(w_ih), d.input, ptr<scalar_t>(dx),
            d.input, false);
  }
  if (mask.weights) {
    const Tensor dgates_t = transposed(dgates);
    dw_ih = at::empty({G, d.input}, opts);
    dw_hh = at::empty({G, P}, opts);
    ex.gemm(G, d.input, d.rows, ptr<scalar_t>(dgates_t), d.rows, ptr<scalar_t>(x), d.input,
            ptr<scalar_t>(dw_ih), d.input, false);
    ex.gemm(G, P, d.rows, ptr<scalar_t>(dgates_t), d.rows, h_prev_p, P, ptr<scalar_t>(dw_hh), P,
            false);
  }
  if (mask.bias) db = dgates.sum(0);
  if (mask.proj) {
    dw_hr = at::empty({P, H}, opts);
    ex.gemm(P, H, d.rows, ptr<scalar_t>(transposed(dy_total)), d.rows, h_raw_p, H,
            ptr<scalar_t>(dw_hr), H, false);
  }
  return {dx, dh, dc, dw_ih, dw_hh, db, dw_hr};
}

}  // namespace lstm_ext
