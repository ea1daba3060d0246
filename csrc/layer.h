#pragma once
// One LSTM layer, one direction, a whole packed sequence: the LSTM's passes
// (forward, backward, tangents) over the step engine (step_engine.h),
// written once for every device.
//
// Besides the engine's, the executor supplies, on raw pointers, with no
// allocation or dispatch inside the loop:
//   gate_group(H), unit_align(), column_align()      see below
//   weights(b, gates)   a (k, n) weight (any strides) laid out for the products;
//       `gates` says which dimension runs over the 4H gates
//   column(b, k, col0)  column col0 on of a laid-out (k, n) weight
//   laid_out_numel(k, n)  how many values weights() makes of a (k, n) weight
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
//   add(dst, a, b, n), dst = a + b in scalar_t
//   scale(dst, a, s, n), dst = a * s (dst and a in scalar_t or math_t, s in
//       math_t; dst may be a); add_scaled(dst, a, s, n), dst += a * s in math_t
//   zoneout(dst, prev, d, n), dst = cell.h's zoneout(dst, prev, d), dst and
//       prev in scalar_t; zoneout_backward(fresh, kept, a, b, d, n), its
//       backward for a + b (fresh in scalar_t or math_t, kept may be b)
//   narrow(dst, ld_dst, src, ld_src, rows, cols), src rounded to scalar_t
//   to_pytorch_gate_order(t, dim, H)
//   for the LayerNorm variant, in math_t over rows of a given width:
//   layer_norm_into(...), rows normalised (times γ; rstd kept when asked);
//   layer_norm_backward_into(...), its backward into scalar_t;
//   cell_output_layer_norm(...), h from LN(c̃) and the activated o;
//   cell_backward_layer_norm_output(...), cell_backward_layer_norm_state(...),
//       the backward cell pass in two halves (o's gradient and dL/dĉ, then
//       through LN_c into c̃ and i, f, g); the executors' comments have the
//       arguments
// Weights are laid out once per call (LaidOut), or kept by the caller between
// inference calls (lstm_layer_lay_out), so that the loop only multiplies them
// in the form its executor's products want.
//
// Two types: Ex::scalar_t, the storage type of the products' operands (x, the
// weights, h, the gate gradients), and Ex::math_t, that of the products'
// results, the cell math, c and every gradient (float for the native
// bfloat16/float16 path, "reduced" below; otherwise scalar_t). h_t is rounded
// to scalar_t once, by the cell pass that makes it.
//
// Gates (the per-row buffers of 4H) are in the executor's gate order
// (gate_order in types.h, with groups of gate_group(H) units): the gates of
// units [u0, u1) are the columns [4 u0, 4 u1) when u0 and u1 are multiples of
// the group (or H). Unit ranges start at multiples of unit_align(), output
// column ranges at multiples of column_align(). Gradients of the weights and
// biases come back in PyTorch's order.

#include "step_engine.h"
#include "types.h"

#include <ATen/ops/add.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <c10/core/ScalarType.h>

#include <algorithm>
#include <type_traits>
#include <vector>

namespace lstm_ext {

// The executor's math type, and t (which may be undefined) in it.
template <typename Ex>
at::ScalarType math_dtype() {
  return c10::CppTypeToScalarType<typename Ex::math_t>::value;
}

template <typename Ex>
Tensor to_math(const Tensor& t) {
  return t.defined() ? t.to(math_dtype<Ex>()) : t;
}

// The layer's weights as the executor's products take them: transposed for
// the forward and the tangents (x W_ih^T, h W_hh^T, h W_hr^T), as they are
// for the backward (dgates W_hh, dy W_hr, dgates W_ih); for the forward also
// the biases' sum in math_t. Each is undefined where its weight is not given.
struct LaidOut {
  Tensor ih, hh, hr, bias;
};

// The sum of the given biases in math_t, or undefined.
template <typename Ex>
Tensor bias_sum(const OptTensor& b_ih, const OptTensor& b_hh) {
  if (b_ih.has_value() && b_hh.has_value()) return at::add(to_math<Ex>(*b_ih), to_math<Ex>(*b_hh));
  return b_ih.has_value() ? to_math<Ex>(*b_ih) : b_hh.has_value() ? to_math<Ex>(*b_hh) : Tensor();
}

// The weights laid out for one call (w_ih may be undefined).
template <typename Ex>
LaidOut lay_out(Ex& ex, const Tensor& w_ih, const Tensor& w_hh, const OptTensor& w_hr,
                bool backward) {
  const Gates gates = backward ? Gates::rows : Gates::columns;
  return {w_ih.defined() ? ex.weights(backward ? w_ih : w_ih.t(), gates) : Tensor(),
          ex.weights(backward ? w_hh : w_hh.t(), gates),
          w_hr.has_value() ? ex.weights(backward ? *w_hr : w_hr->t(), Gates::none) : Tensor(),
          Tensor()};
}

// The forward's layout, with the biases' sum: what lstm_layer_lay_out
// returns for a caller to keep.
template <typename Ex>
LaidOut lay_out_forward(Ex& ex, const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
                        const OptTensor& b_hh, const OptTensor& w_hr) {
  LaidOut w = lay_out(ex, w_ih, w_hh, w_hr, false);
  w.bias = bias_sum<Ex>(b_ih, b_hh);
  return w;
}

// A kept lay_out_forward, checked against this layer and executor: a layout
// of other sizes, dtype (the other 16-bit path) or device is an error. That it
// is of these very weights is the caller's to know (_layouts.py).
template <typename Ex>
const LaidOut& kept_layout(const Ex& ex, const LaidOut& kept, const LayerDims& d,
                           const Tensor& x, bool has_bias, bool has_proj) {
  const int64_t G = 4 * d.hidden;
  const auto check = [&](const Tensor& t, const char* name, bool given, at::ScalarType dtype,
                         int64_t numel) {
    TORCH_CHECK(t.defined() == given, "lstm_layer_inference: kept_", name, " must be ",
                given ? "given" : "None", " for these weights (lstm_layer_lay_out's)");
    TORCH_CHECK(!given || (t.scalar_type() == dtype && t.device() == x.device() &&
                           t.numel() == numel && t.is_contiguous()),
                "lstm_layer_inference: kept_", name, " is not this layer's layout on ",
                x.device(), " in ", dtype, " (", numel, " values): got ", t.scalar_type(), " on ",
                t.device(), " with ", t.numel(), " values; lay the weights out again");
  };
  const auto storage = c10::CppTypeToScalarType<typename Ex::scalar_t>::value;
  check(kept.ih, "ih", true, storage, ex.laid_out_numel(d.input, G));
  check(kept.hh, "hh", true, storage, ex.laid_out_numel(d.out, G));
  check(kept.hr, "hr", has_proj, storage, ex.laid_out_numel(d.hidden, d.out));
  check(kept.bias, "bias", has_bias, math_dtype<Ex>(), G);
  return kept;
}

// Recurrent dropout (rec_scale, a (B, P) scale per sequence and unit):
// h_{t-1} enters the recurrent product as h_{t-1} ⊙ s. The scale in math_t,
// or undefined without it.
template <typename Ex>
Tensor recurrent_scale(const OptTensor& rec_scale) {
  return rec_scale.has_value() ? to_math<Ex>(*rec_scale).contiguous() : Tensor();
}

// Calls fn(e, n) for runs of n elements covering rows [first, rows) and
// columns [p0, p1) of (·, P) buffers, e a run's offset from their row 0: one
// run for whole rows, else one per row.
template <typename Fn>
void for_each_run(int64_t first, int64_t rows, int64_t p0, int64_t p1, int64_t P, const Fn& fn) {
  if (first >= rows) return;
  if (p0 == 0 && p1 == P) {
    fn(first * P, (rows - first) * P);
    return;
  }
  for (int64_t r = first; r < rows; ++r) fn(r * P + p0, p1 - p0);
}

// dst = src ⊙ s on rows [first, rows) and columns [p0, p1) of (·, P) buffers
// whose row r is sequence r's (s's row r); dst may be src.
template <typename Ex, typename T, typename M>
void scale_rows(const Ex& ex, T* dst, const T* src, const M* s, int64_t first, int64_t rows,
                int64_t p0, int64_t p1, int64_t P) {
  for_each_run(first, rows, p0, p1, P,
               [&](int64_t e, int64_t n) { ex.scale(dst + e, src + e, s + e, n); });
}

// Zoneout's weights (types.h) in math_t, or undefined.
template <typename Ex>
Tensor zoneout_weights(const OptTensor& z) {
  return z.has_value() ? to_math<Ex>(*z).contiguous() : Tensor();
}

// Every step's rows of a (rows, P) buffer times s (row r of a step is
// sequence r), as the forward's step phase makes them (ex.scale): for the
// backward's and tangents' products with h_{t-1} ⊙ s. One more buffer of the
// output's size.
template <typename Ex>
Tensor scaled_by_sequence(const Ex& ex, const Steps& steps, const Tensor& rows, const Tensor& s) {
  using scalar_t = typename Ex::scalar_t;
  using math_t = typename Ex::math_t;
  const int64_t P = rows.size(1);
  Tensor out = at::empty_like(rows);
  for (int64_t t = 0; t < steps.count(); ++t) {
    const int64_t off = steps.offset(t) * P;
    ex.scale(ptr<scalar_t>(out) + off, ptr<const scalar_t>(rows) + off, ptr<const math_t>(s),
             steps.size(t) * P);
  }
  return out;
}

// h0 ⊙ s (h0 itself without s), rounded as ex.scale rounds.
inline Tensor scaled_state(const Tensor& h0, const Tensor& s) {
  return s.defined() ? at::mul(h0.to(s.scalar_type()), s).to(h0.scalar_type()) : h0;
}

// r as read from a per-sequence buffer (row r is sequence r's latest state)
// instead of the previous step's rows.
inline StepRows per_sequence(StepRows r) {
  r.prev = 0;
  return r;
}

// The gates' product of one step for units [a, b), rows [r.first, r.rows):
// gates_t (the step's rows, row stride 4H) += h_{t-1} W_hh^T, h_{t-1} being
// rows of the previously processed step's `out` (at prev) or of `out0`.
template <typename Ex, typename scalar_t, typename math_t>
void recurrent_product(Ex& ex, const StepRows& r, int64_t a, int64_t b, int64_t P, int64_t G,
                       const Rows<scalar_t>& out, const Rows<const scalar_t>& out0,
                       const scalar_t* w_hh_t, math_t* gates_t, bool accumulate = true) {
  const scalar_t* w = ex.column(w_hh_t, P, 4 * a);
  ex.step_gemm(r.split - r.first, 4 * (b - a), P, out.at(r.prev + r.first), P, w, G,
               gates_t + r.first * G + 4 * a, G, accumulate);
  ex.step_gemm(r.rows - r.split, 4 * (b - a), P, out0.at(r.split), P, w, G,
               gates_t + r.split * G + 4 * a, G, accumulate);
}

// LayerNorm's weights in math_t, its gate scales in the executor's gate
// order (undefined without LayerNorm).
struct LayerNormWeights {
  Tensor ih, hh, c_weight, c_bias;
};

template <typename Ex>
LayerNormWeights layer_norm_weights(const Ex& ex, const LayerNorm& ln, int64_t H) {
  if (!ln.on()) return {};
  const int64_t group = ex.gate_group(H);
  const auto in_gate_order = [&](const OptTensor& t) {
    const Tensor m = to_math<Ex>(*t).contiguous();
    if (group >= H) return m;
    std::vector<int64_t> order = gate_order(H, group);
    return m.index_select(0, at::from_blob(order.data(), {4 * H}, at::kLong).to(m.device()));
  };
  return {in_gate_order(ln.ih), in_gate_order(ln.hh), to_math<Ex>(*ln.c_weight).contiguous(),
          to_math<Ex>(*ln.c_bias).contiguous()};
}

// The layer's forward. Saving for backward (`save`), it returns y, h_n, c_n
// and the activated gates (scalar_t) and c_t of every row; otherwise y, h_n
// and c_n alone, and it keeps neither: the gates of one block of steps at a
// time, and one c per sequence, updated in place (and c_n at the end).
// Reduced, the gates' pre-activations go in blocks too, their activations to
// the saved scalar_t buffer. `kept`, if given, is the weights' layout kept
// from an earlier lay_out_forward.
template <typename Ex>
LayerOut layer_forward(Ex& ex, const LayerDims& d, const Steps& steps, const Tensor& x,
                       const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
                       const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr,
                       const OptTensor& rec_scale, const Zoneout& zoneout,
                       const LayerNorm& layer_norm, bool save, const LaidOut* kept) {
  using scalar_t = typename Ex::scalar_t;
  using math_t = typename Ex::math_t;
  constexpr bool reduced = is_reduced_precision_v<scalar_t>;
  static_assert(reduced == !std::is_same_v<scalar_t, math_t>);
  const int64_t H = d.hidden, P = d.out, G = 4 * H;
  const auto opts = x.options(), math_opts = opts.dtype(math_dtype<Ex>());

  const LaidOut w =
      kept ? kept_layout(ex, *kept, d, x, b_ih.has_value() || b_hh.has_value(), w_hr.has_value())
           : lay_out_forward(ex, w_ih, w_hh, b_ih, b_hh, w_hr);
  const Rows<const scalar_t> x_rows(x);
  const Rows<const math_t> c0_rows(to_math<Ex>(c0));
  // With recurrent dropout the recurrent product reads h_{t-1} ⊙ s: row r of
  // y_rec (sequence r's, made from y by each step's last phase, after the
  // product of the step has read it), or of h0 ⊙ s.
  const Tensor s = recurrent_scale<Ex>(rec_scale);
  const Rows<const scalar_t> h0_rows(scaled_state(h0, s));
  const Rows<scalar_t> y_rec(s.defined() ? at::empty({d.batch, P}, opts) : Tensor());
  // A block's rows start as their input projection; each step adds h W_hh^T,
  // and its cell pass adds the bias and writes the activations to `activated`.
  const int64_t block = save && !reduced ? d.rows : block_rows(G, d.batch);
  const Rows<math_t> gates(at::empty({std::min(block, d.rows), G}, math_opts));
  // The activated gates kept for backward (when not reduced: gates itself).
  const Rows<scalar_t> activated(!save     ? Tensor()
                                 : reduced ? at::empty({d.rows, G}, opts)
                                           : gates.tensor);
  const Rows<scalar_t> y(at::empty({d.rows, P}, opts));
  // Zoneout's weights, rows of every step. Saving with c's, c̃ of every row
  // follows c_t's in cells (the backward needs both).
  const Rows<const math_t> zone_c(zoneout_weights<Ex>(zoneout.c));
  const Rows<const math_t> zone_h(zoneout_weights<Ex>(zoneout.h));
  const Rows<const scalar_t> h0_kept(zone_h ? h0 : Tensor());
  const int64_t saved_cells = zone_c ? 2 * d.rows : d.rows;
  const Rows<math_t> cells(at::empty({save ? saved_cells : d.batch, H}, math_opts));
  // With a projection, h_t before it; row r belongs to sequence r. Reduced,
  // the projection's product comes to y_wide before its rounding into y.
  const Rows<scalar_t> h_raw(w_hr.has_value() ? at::empty({d.batch, H}, opts) : Tensor());
  const Rows<math_t> y_wide(w_hr.has_value() && reduced ? at::empty({d.batch, P}, math_opts)
                                                        : Tensor());
  // LayerNorm: the recurrent product of each sequence goes to hh, normalised
  // into its gates once whole (a phase later); c̃ is normalised before h is
  // made from it, a phase after the cell pass (which makes c̃ and an h
  // without it): c̃ per sequence when not saved and zoned out, and the
  // activated gates in a block of their own when reduced and not saved.
  const LayerNormWeights ln = layer_norm_weights(ex, layer_norm, H);
  const bool ln_on = ln.ih.defined();
  const Rows<math_t> hh(ln_on ? at::empty({d.batch, G}, math_opts) : Tensor());
  const Rows<math_t> fresh(ln_on && zone_c && !save ? at::empty({d.batch, H}, math_opts)
                                                    : Tensor());
  const Rows<scalar_t> activated_block(
      ln_on && reduced && !save ? at::empty({std::min(block, d.rows), G}, opts) : Tensor());
  const scalar_t* w_hh_t = ptr<const scalar_t>(w.hh);
  const scalar_t* w_hr_t = ptr<const scalar_t>(w.hr);
  const math_t* bias_p = ptr<const math_t>(w.bias);

  const int64_t flops_per_row = 2 * G * P + (h_raw ? 2 * H * P : 0);
  for_each_block(steps, block, false, [&](const Block& blk) {
    ex.sequence_gemm(blk.rows, G, d.input, x_rows.at(blk.row0), d.input,
                     ptr<const scalar_t>(w.ih), gates.data, G, false);
    if (ln_on) {
      ex.layer_norm_into(gates.data, gates.data, blk.rows, G, ptr<const math_t>(ln.ih), 0, G,
                         false);
    }
    // Saving, row r's c_t goes to its own row of cells; otherwise to row r
    // of the per-sequence c, which held its c_{t-1}. c̃ where it is kept.
    const auto c_prev = [&](const StepRows& r) { return save ? cells.at(r.prev) : cells.data; };
    const auto c_out = [&](const StepRows& r) { return save ? cells.at(r.off) : cells.data; };
    const auto c_fresh = [&](const StepRows& r) {
      return !zone_c ? nullptr : save ? cells.at(d.rows + r.off) : fresh.data;
    };
    // Where the cell pass puts the activated gates (LayerNorm reads o).
    const auto activated_at = [&](const StepRows& r) -> scalar_t* {
      if (activated) return activated.at(r.off);
      if (!ln_on) return nullptr;
      if constexpr (reduced) {
        return activated_block.at(r.off - blk.row0);
      } else {
        return gates.at(r.off - blk.row0);
      }
    };
    const auto gates_and_cells = [&](const StepRows& r, int64_t u0, int64_t u1) {
      math_t* gates_t = gates.at(r.off - blk.row0);
      for_each_chunk_of_units(ex, r.rows - r.first, H, u0, u1, [&](int64_t a, int64_t b) {
        recurrent_product(ex, y_rec ? per_sequence(r) : r, a, b, P, G, y_rec ? y_rec : y,
                          h0_rows, w_hh_t, gates_t);
        ex.cell_forward(r.first, r.rows, a, b, r.carried, H, gates_t, activated_at(r), bias_p,
                        c_prev(r), c0_rows.data, zone_c ? zone_c.at(r.off) : nullptr,
                        c_fresh(r), c_out(r), h_raw ? h_raw.data : y.at(r.off));
      });
    };
    // LayerNorm's step: the recurrent product, whole before it is normalised
    // into the gates and the cell pass runs, whose c̃ is whole before h.
    const auto ln_product = [&](const StepRows& r, int64_t u0, int64_t u1) {
      recurrent_product(ex, y_rec ? per_sequence(r) : r, u0, u1, P, G,
                        y_rec ? y_rec : y, h0_rows, w_hh_t, hh.data, false);
    };
    const auto ln_cells = [&](const StepRows& r, int64_t u0, int64_t u1) {
      math_t* gates_t = gates.at(r.off - blk.row0);
      ex.layer_norm_into(gates_t + r.first * G, hh.at(r.first), r.rows - r.first, G,
                         ptr<const math_t>(ln.hh), 4 * u0, 4 * u1, true);
      ex.cell_forward(r.first, r.rows, u0, u1, r.carried, H, gates_t, activated_at(r), bias_p,
                      c_prev(r), c0_rows.data, zone_c ? zone_c.at(r.off) : nullptr, c_fresh(r),
                      c_out(r), h_raw ? h_raw.data : y.at(r.off));
    };
    const auto ln_output = [&](const StepRows& r, int64_t u0, int64_t u1) {
      ex.cell_output_layer_norm(r.first, r.rows, u0, u1, H, activated_at(r),
                                zone_c ? c_fresh(r) : c_out(r), ptr<const math_t>(ln.c_weight),
                                ptr<const math_t>(ln.c_bias), h_raw ? h_raw.data : y.at(r.off));
    };
    const auto projection = [&](const StepRows& r, int64_t p0, int64_t p1) {
      const int64_t rows = r.rows - r.first;
      scalar_t* y_t = y.at(r.off + r.first) + p0;
      const scalar_t* w_t = ex.column(w_hr_t, H, p0);
      if constexpr (reduced) {
        math_t* wide = y_wide.at(r.first) + p0;
        ex.step_gemm(rows, p1 - p0, H, h_raw.at(r.first), H, w_t, P, wide, P, false);
        ex.narrow(y_t, P, wide, P, rows, p1 - p0);
      } else {
        ex.step_gemm(rows, p1 - p0, H, h_raw.at(r.first), H, w_t, P, y_t, P, false);
      }
    };
    // Zoneout on h, after the projection: rows carried from the step before
    // keep its h, the others h0.
    const auto hidden_zoneout = [&](const StepRows& r, int64_t p0, int64_t p1) {
      scalar_t* y_t = y.at(r.off);
      const math_t* z = zone_h.at(r.off);
      const scalar_t* y_prev = y.at(r.prev);
      for_each_run(r.first, r.split, p0, p1, P, [&](int64_t e, int64_t n) {
        ex.zoneout(y_t + e, y_prev + e, z + e, n);
      });
      for_each_run(r.split, r.rows, p0, p1, P, [&](int64_t e, int64_t n) {
        ex.zoneout(y_t + e, h0_kept.data + e, z + e, n);
      });
    };
    const auto recurrent_input = [&](const StepRows& r, int64_t p0, int64_t p1) {
      scale_rows(ex, y_rec.data, y.at(r.off), ptr<const math_t>(s), r.first, r.rows, p0, p1, P);
    };
    run_steps(ex, steps, blk, false, flops_per_row, H,
              phase(ln_on ? 0 : H, ex.unit_align(), gates_and_cells),
              phase(ln_on ? H : 0, ex.unit_align(), ln_product),
              phase(ln_on ? H : 0, ex.unit_align(), ln_cells),
              phase(ln_on ? H : 0, ex.unit_align(), ln_output),
              phase(h_raw ? P : 0, ex.column_align(), projection),
              phase(zone_h ? P : 0, ex.column_align(), hidden_zoneout),
              phase(y_rec ? P : 0, ex.column_align(), recurrent_input));
  });
  Tensor h_n = final_state<scalar_t>(ex, steps, y.tensor, d.batch);
  if (!save) return {y.tensor, h_n, cells.tensor, Tensor(), Tensor()};
  return {y.tensor, h_n, final_state<math_t>(ex, steps, cells.tensor, d.batch), activated.tensor,
          cells.tensor};
}

// With groups > 1, where each block's rows go for the per-problem products:
// row i of the block to slot[i] of (groups * most) rows, problem g's at
// [g * most, (g + 1) * most), the slots no row takes left zero. Row r of a
// step (sequence r) belongs to problem problems[r], or without `problems`
// (null) r % groups.
struct ProblemSlots {
  Tensor slot;
  int64_t groups, most;
};

inline ProblemSlots problem_slots(const Steps& steps, int64_t t0, int64_t t1, int64_t row0,
                                  int64_t rows, int64_t groups, const int64_t* problems,
                                  const c10::Device& device) {
  const auto problem = [&](int64_t r) { return problems ? problems[r] : r % groups; };
  std::vector<int64_t> count(groups, 0);
  Tensor slot = at::empty({rows}, at::kLong);
  auto* s = slot.data_ptr<int64_t>();
  for (int64_t t = t0; t < t1; ++t) {
    for (int64_t r = 0; r < steps.size(t); ++r) s[steps.offset(t) + r - row0] = count[problem(r)]++;
  }
  const int64_t most = *std::max_element(count.begin(), count.end());
  for (int64_t t = t0; t < t1; ++t) {
    for (int64_t r = 0; r < steps.size(t); ++r) s[steps.offset(t) + r - row0] += problem(r) * most;
  }
  // On a GPU from pinned memory, so that the stream need not wait for the host.
  return {device.is_cuda() ? slot.pin_memory().to(device, at::kLong, true) : slot, groups, most};
}

// A block's rows (rows, width) problem by problem: (groups, most, width) in `dtype`.
inline Tensor by_problem(const Tensor& rows, const ProblemSlots& slots, at::ScalarType dtype) {
  return at::zeros({slots.groups * slots.most, rows.size(1)}, rows.options().dtype(dtype))
      .index_copy_(0, slots.slot, rows.to(dtype))
      .view({slots.groups, slots.most, rows.size(1)});
}

// Each of the block's rows' previous state (the h_{t-1} its gates multiplied),
// gathered into (rows, P).
template <typename Ex>
Tensor previous_states(Ex& ex, const Steps& steps, int64_t t0, int64_t t1, const Block& blk,
                       const Tensor& h_prev, const Tensor& h0_prev) {
  using scalar_t = typename Ex::scalar_t;
  const int64_t P = h_prev.size(1);
  Tensor prev = at::empty({blk.rows, P}, h_prev.options());
  for_each_previous_state_run(steps, t0, t1, [&](int64_t row, int64_t count, bool from_y,
                                                 int64_t source) {
    ex.copy(ptr<scalar_t>(prev) + (row - blk.row0) * P,
            ptr<const scalar_t>(from_y ? h_prev : h0_prev) + source * P, count * P);
  });
  return prev;
}

// `groups` and `problems` as in the backward op's schema: the weight and bias
// gradients of problem g sum the rows of its sequences (rows of a step are
// its sequences: row r is sequence r's, by default in problem r % groups).
template <typename Ex>
LayerGrads layer_backward(Ex& ex, const LayerDims& d, const Steps& steps, const GradMask& mask,
                          const OptTensor& dy, const OptTensor& dh_n, const OptTensor& dc_n,
                          const Tensor& x, const Tensor& h0, const Tensor& c0, const Tensor& w_ih,
                          const Tensor& w_hh, const OptTensor& w_hr, const Tensor& y,
                          const Tensor& gates, const Tensor& cells, int64_t groups,
                          const OptTensor& rec_scale, const OptTensor& problems,
                          const Zoneout& zoneout, const LayerNorm& layer_norm) {
  using scalar_t = typename Ex::scalar_t;
  using math_t = typename Ex::math_t;
  constexpr bool reduced = is_reduced_precision_v<scalar_t>;
  static_assert(reduced == !std::is_same_v<scalar_t, math_t>);
  const int64_t H = d.hidden, P = d.out, G = 4 * H;
  const auto math = math_dtype<Ex>();
  const auto opts = x.options(), math_opts = opts.dtype(math);
  const bool proj = w_hr.has_value();

  const Rows<const math_t> dy_rows(dy.has_value() ? dy->to(math).contiguous()
                                                  : at::zeros({d.rows, P}, math_opts));
  // Per sequence, the gradient flowing into its latest-processed state: they
  // start as dh_n and dc_n and end as dh0 and dc0 (their own copies).
  const Rows<math_t> dh(dh_n.has_value()
                            ? dh_n->to(math, false, true, at::MemoryFormat::Contiguous)
                            : at::zeros({d.batch, P}, math_opts));
  const Rows<math_t> dc(dc_n.has_value()
                            ? dc_n->to(math, false, true, at::MemoryFormat::Contiguous)
                            : at::zeros({d.batch, H}, math_opts));
  const Rows<const math_t> c0_rows(to_math<Ex>(c0));
  const Rows<const scalar_t> gates_rows(gates);
  const Rows<const math_t> cells_rows(cells);
  // With zoneout on c, cells holds c_t of every row, then c̃ of every row.
  const Rows<const math_t> zone_c(zoneout_weights<Ex>(zoneout.c));
  const Rows<const math_t> zone_h(zoneout_weights<Ex>(zoneout.h));
  const int64_t fresh_row0 = zone_c ? d.rows : 0;
  // The steps go in blocks, in the workspaces below; each block's share of
  // the input, weight and bias gradients is taken before the next.
  const int64_t block = block_rows(G, d.batch);
  const int64_t workspace_rows = std::min(block, d.rows);
  // The gate gradients and, with a projection, the total dL/dy and h_t before
  // it, per row of a block, are operands of products (scalar_t); dL/dh_t
  // before the projection, per sequence, is a product's result.
  const Rows<scalar_t> dgates(at::empty({workspace_rows, G}, opts));
  // Reduced, the bias gradient sums the gate gradients before their
  // rounding: a sum of few rounded ones loses to cancellation (B=1, T=7:
  // 6x nn.LSTM's error).
  const LayerNormWeights ln = layer_norm_weights(ex, layer_norm, H);
  const bool ln_on = ln.ih.defined();
  const Rows<math_t> dgates_wide(reduced && (mask.bias || ln_on)
                                     ? at::empty({workspace_rows, G}, math_opts)
                                     : Tensor());
  // The gate gradients in math_t, for LayerNorm's backward.
  const auto dgates_math = [&](int64_t at) -> const math_t* {
    if constexpr (reduced) {
      return dgates_wide.at(at);
    } else {
      return dgates.at(at);
    }
  };
  // LayerNorm, per block: the normalised products x̂_ih and x̂_hh made again
  // (not saved: a product each, in a block), their rows' rstd; dL/d(h W_hh^T)
  // per row (for the state's and dW_hh's products) and dL/d(x W_ih^T); dL/dĉ
  // (ĉ = LN(c̃)) and dL/dĉ ⊙ x̂_c per row, for γ_c's and β_c's gradients.
  const auto ln_rows = [&](int64_t width, at::TensorOptions o) {
    return ln_on ? at::empty({workspace_rows, width}, o) : Tensor();
  };
  const Rows<math_t> ih_hat(ln_rows(G, math_opts)), hh_hat(ln_rows(G, math_opts));
  const Tensor ln_rstd = ln_on ? at::empty({2 * workspace_rows}, math_opts) : Tensor();
  const Rows<scalar_t> d_hh(ln_rows(G, opts)), d_ih(ln_rows(G, opts));
  const Rows<math_t> dc_hat(ln_rows(H, math_opts)), dc_hat_x(ln_rows(H, math_opts));
  const LaidOut forward_w = ln_on ? lay_out(ex, w_ih, w_hh, std::nullopt, false) : LaidOut{};
  Tensor d_ln_ih, d_ln_hh, d_ln_c_weight, d_ln_c_bias;
  const auto add_to = [](Tensor& sum, const Tensor& t) { sum = sum.defined() ? sum.add_(t) : t; };
  const Rows<scalar_t> dy_total(proj ? at::empty({workspace_rows, P}, opts) : Tensor());
  const Rows<scalar_t> h_raw(mask.proj ? at::empty({workspace_rows, H}, opts) : Tensor());
  const Rows<math_t> dh_raw(proj ? at::empty({d.batch, H}, math_opts) : Tensor());
  // With zoneout on h, without a projection: dL/dh̃_t, per sequence (with
  // one it is dy_total).
  const Rows<math_t> dh_fresh(zone_h && !proj ? at::empty({d.batch, P}, math_opts) : Tensor());
  const LaidOut w = lay_out(ex, mask.input ? w_ih : Tensor(), w_hh, w_hr, true);
  const scalar_t* w_hh_b = ptr<const scalar_t>(w.hh);
  // With recurrent dropout, dL/dh_{t-1} through the recurrent product is
  // (dgates W_hh) ⊙ s, and dW_hh sums dgates^T (h_{t-1} ⊙ s).
  const Tensor s = recurrent_scale<Ex>(rec_scale);
  const bool scaled = s.defined() && (mask.weights || ln_on);
  const Tensor h_prev = scaled ? scaled_by_sequence(ex, steps, y, s) : y;
  const Tensor h0_prev = scaled ? scaled_state(h0, s) : h0;
  // With both, dL/dh_{t-1} through the product before it is scaled and added
  // to zoneout's part.
  const Rows<math_t> dh_product(s.defined() && zone_h ? at::empty({d.batch, P}, math_opts)
                                                      : Tensor());
  const scalar_t* w_hr_b = ptr<const scalar_t>(w.hr);

  Tensor dx = mask.input ? at::empty({d.rows, d.input}, math_opts) : Tensor();
  Tensor dw_ih, dw_hh, db, dw_hr;
  // C (+)= A^T B over `rows` rows: A and B are (rows, m) and (rows, n).
  const auto weight_grad = [&](Tensor& c, int64_t m, int64_t n, int64_t rows, const scalar_t* a,
                               const scalar_t* b) {
    const bool accumulate = c.defined();
    if (!accumulate) c = at::empty({m, n}, math_opts);
    ex.weight_gemm(m, n, rows, a, m, b, n, ptr<math_t>(c), n, accumulate);
  };
  // Per problem (groups > 1), C[g] (+)= A[g]^T B[g], one batch of products
  // over by_problem's (groups, most, ·) rows; a_t is A transposed.
  const auto problem_weight_grad = [](Tensor& c, const Tensor& a_t, const Tensor& b) {
    c = c.defined() ? c.baddbmm_(a_t, b) : at::bmm(a_t, b);
  };

  const int64_t flops_per_row = 2 * G * P + (proj ? 2 * H * P : 0);
  for_each_block(steps, block, true, [&](const Block& blk) {
    const int64_t t0 = std::min(steps.time(blk.begin), steps.time(blk.end - 1));
    const int64_t t1 = std::max(steps.time(blk.begin), steps.time(blk.end - 1)) + 1;
    math_t* rstd_ih = ptr<math_t>(ln_rstd);
    math_t* rstd_hh = ln_on ? rstd_ih + workspace_rows : nullptr;
    if (ln_on) {
      ex.sequence_gemm(blk.rows, G, d.input, ptr<const scalar_t>(x) + blk.row0 * d.input,
                       d.input, ptr<const scalar_t>(forward_w.ih), ih_hat.data, G, false);
      ex.layer_norm_into(ih_hat.data, ih_hat.data, blk.rows, G, nullptr, 0, G, false, rstd_ih);
      for_each_previous_state_run(steps, t0, t1, [&](int64_t row, int64_t count, bool from_y,
                                                     int64_t source) {
        ex.sequence_gemm(count, G, P, ptr<const scalar_t>(from_y ? h_prev : h0_prev) + source * P,
                         P, ptr<const scalar_t>(forward_w.hh), hh_hat.at(row - blk.row0), G,
                         false);
      });
      ex.layer_norm_into(hh_hat.data, hh_hat.data, blk.rows, G, nullptr, 0, G, false, rstd_hh);
    }
    // With a projection, first dL/dy_t in total: dy and what the step
    // processed before (later in time) sends back through h_t.
    const auto total_dy = [&](const StepRows& r, int64_t p0, int64_t p1) {
      for (int64_t row = r.first; row < r.rows; ++row) {
        ex.add(dy_total.at(r.off - blk.row0 + row) + p0, dy_rows.at(r.off + row) + p0,
               dh.at(row) + p0, p1 - p0);
      }
    };
    // With zoneout on h, dL/dh_t (dy and what the step processed before
    // sends back) splits into dL/dh̃_t (to dy_total with a projection, else
    // dh_fresh) and the part for h_{t-1}, which stays in dh for the state
    // phase to add to.
    const auto hidden_zoneout = [&](const StepRows& r, int64_t p0, int64_t p1) {
      const math_t* z = zone_h.at(r.off);
      const math_t* dy_t = dy_rows.at(r.off);
      for_each_run(r.first, r.rows, p0, p1, P, [&](int64_t e, int64_t n) {
        if (proj) {
          ex.zoneout_backward(dy_total.at(r.off - blk.row0) + e, dh.data + e, dy_t + e,
                              dh.data + e, z + e, n);
        } else {
          ex.zoneout_backward(dh_fresh.data + e, dh.data + e, dy_t + e, dh.data + e, z + e, n);
        }
      });
    };
    // With a projection, dL/dh_t before it, units [a, b): its product.
    const auto projection = [&](const StepRows& r, int64_t a, int64_t b) {
      if (!proj) return;
      ex.step_gemm(r.rows - r.first, b - a, P, dy_total.at(r.off - blk.row0 + r.first), P,
                   ex.column(w_hr_b, P, a), H, dh_raw.at(r.first) + a, H, false);
    };
    // Where the cell passes read dL/dh_t: that product with a projection;
    // else dh_fresh with zoneout on h; else dy plus what came back in dh.
    const auto dh_in = [&](const StepRows& r) -> const math_t* {
      return proj ? dh_raw.data : dh_fresh ? dh_fresh.data : dy_rows.at(r.off);
    };
    const math_t* dh_extra = proj || dh_fresh ? nullptr : dh.data;
    const auto gates_and_cells = [&](const StepRows& r, int64_t u0, int64_t u1) {
      const int64_t at = r.off - blk.row0;
      for_each_chunk_of_units(ex, r.rows - r.first, H, u0, u1, [&](int64_t a, int64_t b) {
        projection(r, a, b);
        ex.cell_backward(r.first, r.rows, a, b, r.carried, H, gates_rows.at(r.off),
                         cells_rows.at(fresh_row0 + r.off), cells_rows.at(r.prev), c0_rows.data,
                         zone_c ? zone_c.at(r.off) : nullptr, dh_in(r), dh_extra, dc.data,
                         dgates.at(at), dgates_wide ? dgates_wide.at(at) : nullptr,
                         h_raw ? h_raw.at(at) : nullptr);
      });
    };
    // LayerNorm's cell: dL/dĉ and o's gradient from dL/dh (once the
    // projection's product has made it for every unit: a phase of its own),
    // then the state's (dL/dĉ whole), then dL/d(h W_hh^T) through LN_hh (the
    // gate gradients whole).
    const auto ln_cell_output = [&](const StepRows& r, int64_t u0, int64_t u1) {
      const int64_t at = r.off - blk.row0;
      ex.cell_backward_layer_norm_output(
          r.first, r.rows, u0, u1, H, gates_rows.at(r.off), cells_rows.at(fresh_row0 + r.off),
          ptr<const math_t>(ln.c_weight), ptr<const math_t>(ln.c_bias), dh_in(r), dh_extra,
          dgates.at(at), dgates_wide ? dgates_wide.at(at) : nullptr, dc_hat.at(at),
          h_raw ? h_raw.at(at) : nullptr);
    };
    const auto ln_cell_state = [&](const StepRows& r, int64_t u0, int64_t u1) {
      const int64_t at = r.off - blk.row0;
      ex.cell_backward_layer_norm_state(
          r.first, r.rows, u0, u1, r.carried, H, gates_rows.at(r.off),
          cells_rows.at(fresh_row0 + r.off), cells_rows.at(r.prev), c0_rows.data,
          zone_c ? zone_c.at(r.off) : nullptr, ptr<const math_t>(ln.c_weight), dc_hat.at(at),
          dc.data, dgates.at(at), dgates_wide ? dgates_wide.at(at) : nullptr, dc_hat_x.at(at));
    };
    const auto ln_recurrent = [&](const StepRows& r, int64_t u0, int64_t u1) {
      const int64_t at = r.off - blk.row0 + r.first;
      ex.layer_norm_backward_into(d_hh.at(at), dgates_math(at), hh_hat.at(at), rstd_hh + at,
                                  ptr<const math_t>(ln.hh), r.rows - r.first, G, 4 * u0,
                                  4 * u1);
    };
    // Then dL/dh_{t-1}, for the step processed next.
    // (With zoneout on h, added to its part already in dh.)
    const scalar_t* d_recurrent = ln_on ? d_hh.data : dgates.data;
    const auto state = [&](const StepRows& r, int64_t p0, int64_t p1) {
      const math_t* s_p = ptr<const math_t>(s);
      math_t* product = dh_product ? dh_product.data : dh.data;
      ex.step_gemm(r.rows - r.first, p1 - p0, G, d_recurrent + (r.off - blk.row0 + r.first) * G,
                   G, ex.column(w_hh_b, G, p0), P, product + r.first * P + p0, P,
                   zone_h && !dh_product);
      if (dh_product) {
        for_each_run(r.first, r.rows, p0, p1, P, [&](int64_t e, int64_t n) {
          ex.add_scaled(dh.data + e, product + e, s_p + e, n);
        });
      } else if (s.defined()) {
        scale_rows(ex, dh.data, dh.data, s_p, r.first, r.rows, p0, p1, P);
      }
    };
    run_steps(ex, steps, blk, true, flops_per_row, H,
              phase(proj && !zone_h ? P : 0, ex.column_align(), total_dy),
              phase(zone_h ? P : 0, ex.column_align(), hidden_zoneout),
              phase(ln_on ? 0 : H, ex.unit_align(), gates_and_cells),
              phase(ln_on && proj ? H : 0, ex.unit_align(), projection),
              phase(ln_on ? H : 0, ex.unit_align(), ln_cell_output),
              phase(ln_on ? H : 0, ex.unit_align(), ln_cell_state),
              phase(ln_on ? H : 0, ex.unit_align(), ln_recurrent),
              phase(P, ex.column_align(), state));

    // With LayerNorm, dL/d(x W_ih^T) through LN_ih, and per row the terms of
    // its parameters' gradients (summed below, per problem with groups).
    const scalar_t* d_input = ln_on ? d_ih.data : dgates.data;
    Tensor ln_terms[4];
    if (ln_on) {
      ex.layer_norm_backward_into(d_ih.data, dgates_math(0), ih_hat.data, rstd_ih,
                                  ptr<const math_t>(ln.ih), blk.rows, G, 0, G);
      const Tensor dg = (reduced ? dgates_wide.tensor : dgates.tensor).narrow(0, 0, blk.rows);
      const auto rows = [&](const Rows<math_t>& t) { return t.tensor.narrow(0, 0, blk.rows); };
      ln_terms[0] = at::mul(dg, rows(ih_hat));
      ln_terms[1] = at::mul(dg, rows(hh_hat));
      ln_terms[2] = rows(dc_hat_x);
      ln_terms[3] = rows(dc_hat);
    }
    Tensor* ln_grads[4] = {&d_ln_ih, &d_ln_hh, &d_ln_c_weight, &d_ln_c_bias};
    if (mask.input) {
      ex.sequence_gemm(blk.rows, d.input, G, d_input, G, ptr<const scalar_t>(w.ih),
                       ptr<math_t>(dx) + blk.row0 * d.input, d.input, false);
    }
    if (groups > 1) {
      const ProblemSlots slots = problem_slots(
          steps, t0, t1, blk.row0, blk.rows, groups,
          problems.has_value() ? problems->const_data_ptr<int64_t>() : nullptr, x.device());
      const auto rows = [&](const Tensor& t) { return by_problem(t, slots, math); };
      const Tensor dgates_t = rows(dgates.tensor.narrow(0, 0, blk.rows)).transpose(1, 2);
      if (mask.weights) {
        const auto d_of = [&](const Rows<scalar_t>& t) {
          return ln_on ? rows(t.tensor.narrow(0, 0, blk.rows)).transpose(1, 2) : dgates_t;
        };
        problem_weight_grad(dw_ih, d_of(d_ih), rows(x.narrow(0, blk.row0, blk.rows)));
        problem_weight_grad(dw_hh, d_of(d_hh),
                            rows(previous_states(ex, steps, t0, t1, blk, h_prev, h0_prev)));
      }
      for (int k = 0; ln_on && k < 4; ++k) add_to(*ln_grads[k], rows(ln_terms[k]).sum(1));
      if (mask.bias) {
        const Tensor sum = reduced ? rows(dgates_wide.tensor.narrow(0, 0, blk.rows)).sum(1)
                                   : dgates_t.sum(2);
        db = db.defined() ? db.add_(sum) : sum;
      }
      if (mask.proj) {
        problem_weight_grad(dw_hr, rows(dy_total.tensor.narrow(0, 0, blk.rows)).transpose(1, 2),
                            rows(h_raw.tensor.narrow(0, 0, blk.rows)));
      }
      return;
    }
    if (mask.weights) {
      weight_grad(dw_ih, G, d.input, blk.rows, d_input,
                  ptr<const scalar_t>(x) + blk.row0 * d.input);
      for_each_previous_state_run(steps, t0, t1, [&](int64_t row, int64_t count, bool from_y,
                                                     int64_t source) {
        weight_grad(dw_hh, G, P, count, d_recurrent + (row - blk.row0) * G,
                    ptr<const scalar_t>(from_y ? h_prev : h0_prev) + source * P);
      });
    }
    if (mask.bias) {
      const Tensor block = (reduced ? dgates_wide.tensor : dgates.tensor).narrow(0, 0, blk.rows);
      const Tensor sum = block.sum({0}, false, math);
      db = db.defined() ? db.add_(sum) : sum;
    }
    if (mask.proj) weight_grad(dw_hr, P, H, blk.rows, dy_total.data, h_raw.data);
    for (int k = 0; ln_on && k < 4; ++k) add_to(*ln_grads[k], ln_terms[k].sum(0));
  });
  const int64_t gates_dim = groups > 1 ? 1 : 0;
  for (Tensor* t : {&dw_ih, &dw_hh, &db, &d_ln_ih, &d_ln_hh}) {
    if (t->defined()) ex.to_pytorch_gate_order(*t, gates_dim, H);
  }
  return {dx,     dh.tensor, dc.tensor, dw_ih,   dw_hh,        db,
          dw_hr, d_ln_ih,   d_ln_hh,   d_ln_c_weight, d_ln_c_bias};
}

// The forward-mode derivative: the same recurrence as layer_forward, run on
// tangents (t_ prefix) with the forward's saved gates and cells.
template <typename Ex>
LayerOutputs layer_jvp(Ex& ex, const LayerDims& d, const Steps& steps, const Tensor& x,
                        const Tensor& h0, const Tensor& c0, const Tensor& w_ih,
                        const Tensor& w_hh, const OptTensor& w_hr, const Tensor& y,
                        const Tensor& gates, const Tensor& cells, const Tangents& tan,
                        const OptTensor& rec_scale) {
  using scalar_t = typename Ex::scalar_t;
  const int64_t H = d.hidden, P = d.out, G = 4 * H;
  const auto opts = x.options();

  // Starts as what the gate pre-activations' tangent owes to all but the
  // tangent of h_{t-1}: dx W_ih^T + x dW_ih^T + h_{t-1} dW_hh^T, in
  // whole-sequence products. Each step adds dh_{t-1} W_hh^T, and its cell
  // pass adds db.
  const Rows<scalar_t> t_gates(at::empty({d.rows, G}, opts));
  // With recurrent dropout, both h_{t-1} and its tangent enter as ⊙ s.
  const Tensor s = recurrent_scale<Ex>(rec_scale);
  bool started = false;
  const auto add_product = [&](const Tensor& a, const Tensor& weight) {
    ex.sequence_gemm(d.rows, G, a.size(1), ptr<const scalar_t>(a), a.size(1),
                     ptr<const scalar_t>(ex.weights(weight.t(), Gates::columns)), t_gates.data,
                     G, started);
    started = true;
  };
  if (tan.x.has_value()) add_product(*tan.x, w_ih);
  if (tan.w_ih.has_value()) add_product(x, *tan.w_ih);
  if (tan.w_hh.has_value()) {
    const Tensor w_t = ex.weights(tan.w_hh->t(), Gates::columns);
    const Tensor h_prev = s.defined() ? scaled_by_sequence(ex, steps, y, s) : y;
    const Tensor h0_prev = scaled_state(h0, s);
    // Each run's rows get their first product here if nothing came before.
    for_each_previous_state_run(steps, 0, steps.count(), [&](int64_t row, int64_t count,
                                                             bool from_y, int64_t source) {
      ex.sequence_gemm(count, G, P, ptr<const scalar_t>(from_y ? h_prev : h0_prev) + source * P,
                       P, ptr<const scalar_t>(w_t), t_gates.at(row), G, started);
    });
    started = true;
  }
  if (!started) t_gates.tensor.zero_();

  const bool proj = w_hr.has_value();
  const LaidOut w = lay_out(ex, Tensor(), w_hh, w_hr, false);
  const Tensor t_w_hr = tan.w_hr.has_value() ? ex.weights(tan.w_hr->t(), Gates::none) : Tensor();
  const Rows<scalar_t> t_y(at::empty({d.rows, P}, opts));
  const Rows<scalar_t> t_cells(at::empty({d.rows, H}, opts));
  const Rows<const scalar_t> t_h0(scaled_state(
      tan.h0.has_value() ? *tan.h0 : at::zeros({d.batch, P}, opts), s));
  const Rows<scalar_t> t_y_rec(s.defined() ? at::empty({d.batch, P}, opts) : Tensor());
  const Rows<const scalar_t> t_c0(tan.c0.has_value() ? *tan.c0 : at::zeros({d.batch, H}, opts));
  // With a projection, per sequence: the tangent of h_t before it, and h_t
  // itself when the projection's weight has a tangent.
  const Rows<scalar_t> t_h_raw(proj ? at::empty({d.batch, H}, opts) : Tensor());
  const Rows<scalar_t> h_raw(tan.w_hr.has_value() ? at::empty({d.batch, H}, opts) : Tensor());
  const Rows<const scalar_t> gates_rows(gates), cells_rows(cells);
  const scalar_t* c0_p = ptr<const scalar_t>(c0);
  const scalar_t* t_bias = tan.bias.has_value() ? ptr<const scalar_t>(*tan.bias) : nullptr;
  const scalar_t* w_hh_t = ptr<const scalar_t>(w.hh);
  const scalar_t* w_hr_t = ptr<const scalar_t>(w.hr);
  const scalar_t* t_w_hr_t = ptr<const scalar_t>(t_w_hr);

  const auto gates_and_cells = [&](const StepRows& r, int64_t u0, int64_t u1) {
    scalar_t* t_gates_t = t_gates.at(r.off);
    for_each_chunk_of_units(ex, r.rows - r.first, H, u0, u1, [&](int64_t a, int64_t b) {
      recurrent_product(ex, t_y_rec ? per_sequence(r) : r, a, b, P, G, t_y_rec ? t_y_rec : t_y,
                        t_h0, w_hh_t, t_gates_t);
      ex.cell_tangent(r.first, r.rows, a, b, r.carried, H, gates_rows.at(r.off),
                      cells_rows.at(r.off), cells_rows.at(r.prev), c0_p,
                      t_bias, t_gates_t, t_cells.at(r.prev), t_c0.data, t_cells.at(r.off),
                      proj ? t_h_raw.data : t_y.at(r.off), h_raw.data);
    });
  };
  const auto projection = [&](const StepRows& r, int64_t p0, int64_t p1) {
    scalar_t* t_y_t = t_y.at(r.off + r.first) + p0;
    ex.step_gemm(r.rows - r.first, p1 - p0, H, t_h_raw.at(r.first), H,
                 ex.column(w_hr_t, H, p0), P, t_y_t, P, false);
    if (h_raw) {
      ex.step_gemm(r.rows - r.first, p1 - p0, H, h_raw.at(r.first), H,
                   ex.column(t_w_hr_t, H, p0), P, t_y_t, P, true);
    }
  };
  const auto recurrent_input = [&](const StepRows& r, int64_t p0, int64_t p1) {
    scale_rows(ex, t_y_rec.data, t_y.at(r.off), ptr<const scalar_t>(s), r.first, r.rows, p0, p1,
               P);
  };
  const int64_t flops_per_row = 2 * G * P + (proj ? 2 * H * P : 0);
  run_steps(ex, steps, Block{0, steps.count(), d.rows, 0}, false, flops_per_row, H,
            phase(H, ex.unit_align(), gates_and_cells),
            phase(proj ? P : 0, ex.column_align(), projection),
            phase(t_y_rec ? P : 0, ex.column_align(), recurrent_input));
  return {t_y.tensor, final_state<scalar_t>(ex, steps, t_y.tensor, d.batch),
          final_state<scalar_t>(ex, steps, t_cells.tensor, d.batch)};
}

}  // namespace lstm_ext
