#include "types.h"

#include <c10/util/Exception.h>

#include <limits>

namespace lstm_ext {
namespace {

constexpr int64_t kMaxDim = std::numeric_limits<int>::max();

// t has `dim` dimensions, and the dtype and device of x (named x_name).
void check_tensor(const Tensor& t, const char* name, int64_t dim, const Tensor& x,
                  const char* x_name = "x") {
  TORCH_CHECK(t.dim() == dim, "lstm_layer: ", name, " must be ", dim, "-D, got ", t.dim(),
              "-D of shape ", t.sizes());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), "lstm_layer: ", name, " has dtype ",
              t.scalar_type(), " but ", x_name, " has dtype ", x.scalar_type());
  TORCH_CHECK(t.device() == x.device(), "lstm_layer: ", name, " is on ", t.device(), " but ",
              x_name, " is on ", x.device());
}

void check_shape(const Tensor& t, const char* name, at::IntArrayRef expected) {
  TORCH_CHECK(t.sizes() == expected, "lstm_layer: ", name, " must have shape ", expected,
              ", got ", t.sizes());
}

void check_optional(const OptTensor& g, const char* name, at::IntArrayRef expected,
                    const Tensor& like) {
  if (!g.has_value()) return;
  check_tensor(*g, name, static_cast<int64_t>(expected.size()), like);
  check_shape(*g, name, expected);
}

}  // namespace

LayerDims check_weights(const Tensor& like, const char* like_name, int64_t input,
                        const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
                        const OptTensor& b_hh, const OptTensor& w_hr) {
  check_tensor(w_ih, "w_ih", 2, like, like_name);
  check_tensor(w_hh, "w_hh", 2, like, like_name);
  TORCH_CHECK(w_hh.size(0) % 4 == 0 && w_hh.size(0) > 0,
              "lstm_layer: w_hh must have 4 * hidden_size rows, got shape ", w_hh.sizes());
  const LayerDims d{0, 0, input, w_hh.size(0) / 4, w_hh.size(1)};
  check_shape(w_ih, "w_ih", {4 * d.hidden, d.input});
  if (w_hr.has_value()) {
    check_tensor(*w_hr, "w_hr", 2, like, like_name);
    check_shape(*w_hr, "w_hr", {d.out, d.hidden});
  } else {
    TORCH_CHECK(d.out == d.hidden, "lstm_layer: w_hh must have shape ",
                at::IntArrayRef{4 * d.hidden, d.hidden}, " without w_hr, got ", w_hh.sizes());
  }
  for (const auto* b : {&b_ih, &b_hh}) {
    if (!b->has_value()) continue;
    const char* name = b == &b_ih ? "b_ih" : "b_hh";
    check_tensor(**b, name, 1, like, like_name);
    check_shape(**b, name, {4 * d.hidden});
  }
  return d;
}

LayerDims check_layer_args(const Tensor& x, const Tensor& batch_sizes, const Tensor& h0,
                           const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
                           const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr) {
  TORCH_CHECK(x.dim() == 2, "lstm_layer: x must be 2-D (rows, input_size), got shape ",
              x.sizes());
  LayerDims d = check_weights(x, "x", x.size(1), w_ih, w_hh, b_ih, b_hh, w_hr);
  check_tensor(h0, "h0", 2, x);
  check_tensor(c0, "c0", 2, x);
  d.rows = x.size(0);
  d.batch = h0.size(0);
  check_shape(h0, "h0", {d.batch, d.out});
  check_shape(c0, "c0", {d.batch, d.hidden});

  TORCH_CHECK(batch_sizes.dim() == 1, "lstm_layer: batch_sizes must be 1-D, got shape ",
              batch_sizes.sizes());
  TORCH_CHECK(batch_sizes.scalar_type() == at::kLong,
              "lstm_layer: batch_sizes must be int64, got ", batch_sizes.scalar_type());
  TORCH_CHECK(batch_sizes.device().is_cpu(), "lstm_layer: batch_sizes must be on the CPU, got ",
              batch_sizes.device());
  TORCH_CHECK(batch_sizes.numel() > 0, "lstm_layer: batch_sizes is empty (no time steps)");
  const Tensor sizes = batch_sizes.contiguous();
  const auto* bs = sizes.data_ptr<int64_t>();
  int64_t total = 0;
  for (int64_t t = 0; t < sizes.numel(); ++t) {
    TORCH_CHECK(bs[t] > 0, "lstm_layer: batch_sizes[", t, "] = ", bs[t], " must be positive");
    TORCH_CHECK(t == 0 || bs[t] <= bs[t - 1], "lstm_layer: batch_sizes must be non-increasing, ",
                "but batch_sizes[", t, "] = ", bs[t], " > batch_sizes[", t - 1, "] = ", bs[t - 1]);
    total += bs[t];
  }
  TORCH_CHECK(total == d.rows, "lstm_layer: batch_sizes sum to ", total, " but x has ", d.rows,
              " rows");
  TORCH_CHECK(bs[0] == d.batch, "lstm_layer: batch_sizes[0] = ", bs[0],
              " but h0 and c0 have batch size ", d.batch);

  // BLAS takes 32-bit dimensions.
  for (int64_t v : {d.rows, d.input, 4 * d.hidden, d.out}) {
    TORCH_CHECK(v <= kMaxDim, "lstm_layer: dimension ", v, " exceeds the BLAS limit of ",
                kMaxDim);
  }
  return d;
}

void check_device_and_dtype(const Tensor& x, c10::DeviceType device) {
  TORCH_CHECK(x.device().type() == device, "lstm_layer: this is the ", c10::DeviceType(device),
              " kernel, but x is on ", x.device());
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || is_reduced_precision(dtype),
              "lstm_layer: dtype ", dtype,
              " is not supported; use float32, float64, bfloat16 or float16");
}

void check_saved(const LayerDims& d, const Tensor& x, const Tensor& y, const Tensor& gates,
                 const Tensor& cells, bool zoneout_c) {
  check_tensor(y, "y", 2, x);
  check_shape(y, "y", {d.rows, d.out});
  check_shape(gates, "gates", {d.rows, 4 * d.hidden});
  check_shape(cells, "cells", {(zoneout_c ? 2 : 1) * d.rows, d.hidden});
  for (const Tensor* t : {&gates, &cells}) {
    const char* name = t == &gates ? "gates" : "cells";
    const auto saved = t == &gates ? y.scalar_type() : saved_cells_dtype(y.scalar_type());
    TORCH_CHECK(t->scalar_type() == saved, "lstm_layer: ", name, " must have dtype ", saved,
                ", got ", t->scalar_type());
    TORCH_CHECK(t->device() == x.device(), "lstm_layer: ", name, " is on ", t->device(),
                " but x is on ", x.device());
  }
}

void check_backward_args(const LayerDims& d, const Tensor& x, const OptTensor& dy,
                         const OptTensor& dh_n, const OptTensor& dc_n, int64_t groups,
                         const OptTensor& problems) {
  check_optional(dy, "dy", {d.rows, d.out}, x);
  check_optional(dh_n, "dh_n", {d.batch, d.out}, x);
  check_optional(dc_n, "dc_n", {d.batch, d.hidden}, x);
  TORCH_CHECK(groups >= 1, "lstm_layer_backward: groups must be positive, got ", groups);
  if (!problems.has_value()) return;
  TORCH_CHECK(problems->dim() == 1 && problems->size(0) == d.batch &&
                  problems->scalar_type() == at::kLong && problems->device().is_cpu(),
              "lstm_layer_backward: problems must be a 1-D int64 CPU tensor of ", d.batch,
              " values (one per sequence), got shape ", problems->sizes(), ", ",
              problems->scalar_type(), " on ", problems->device());
  const Tensor p = problems->contiguous();
  const auto* values = p.const_data_ptr<int64_t>();
  for (int64_t s = 0; s < d.batch; ++s) {
    TORCH_CHECK(values[s] >= 0 && values[s] < groups, "lstm_layer_backward: problems[", s,
                "] = ", values[s], " is not in [0, groups = ", groups, ")");
  }
}

void check_rec_scale(const LayerDims& d, const Tensor& x, const OptTensor& rec_scale) {
  check_optional(rec_scale, "rec_scale", {d.batch, d.out}, x);
}

void check_zoneout(const LayerDims& d, const Tensor& x, const Zoneout& zoneout) {
  check_optional(zoneout.c, "zoneout_c", {d.rows, d.hidden}, x);
  check_optional(zoneout.h, "zoneout_h", {d.rows, d.out}, x);
  for (const OptTensor* t : {&zoneout.c, &zoneout.h}) {
    TORCH_CHECK(!t->has_value() || !(*t)->requires_grad(), "lstm_layer: ",
                t == &zoneout.c ? "zoneout_c" : "zoneout_h",
                " is a constant (zoneout's weights) and gets no gradient; pass it detached");
  }
}

void check_layer_norm(const LayerDims& d, const Tensor& x, const LayerNorm& ln) {
  const int given = ln.ih.has_value() + ln.hh.has_value() + ln.c_weight.has_value() +
                    ln.c_bias.has_value();
  TORCH_CHECK(given == 0 || given == 4,
              "lstm_layer: LayerNorm's weights ln_ih, ln_hh, ln_c_weight, ln_c_bias are given "
              "all four or none, got ", given);
  check_optional(ln.ih, "ln_ih", {4 * d.hidden}, x);
  check_optional(ln.hh, "ln_hh", {4 * d.hidden}, x);
  check_optional(ln.c_weight, "ln_c_weight", {d.hidden}, x);
  check_optional(ln.c_bias, "ln_c_bias", {d.hidden}, x);
}

void check_tangents(const LayerDims& d, const Tensor& x, const Tangents& t, bool has_proj) {
  check_optional(t.x, "dx", {d.rows, d.input}, x);
  check_optional(t.h0, "dh0", {d.batch, d.out}, x);
  check_optional(t.c0, "dc0", {d.batch, d.hidden}, x);
  check_optional(t.w_ih, "dw_ih", {4 * d.hidden, d.input}, x);
  check_optional(t.w_hh, "dw_hh", {4 * d.hidden, d.out}, x);
  check_optional(t.bias, "db", {4 * d.hidden}, x);
  TORCH_CHECK(has_proj || !t.w_hr.has_value(),
              "lstm_layer_jvp: dw_hr is given but w_hr is not");
  check_optional(t.w_hr, "dw_hr", {d.out, d.hidden}, x);
}

GradMask grad_mask(std::array<bool, 4> output_mask, bool has_proj) {
  return {output_mask[0], output_mask[1], output_mask[2], output_mask[3] && has_proj};
}

}  // namespace lstm_ext
