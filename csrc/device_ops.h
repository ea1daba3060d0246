#pragma once
// The ops as every device runs them: argument checks, contiguous operands,
// then dtype dispatch into layer.h with the device's executor (in_dtype).
// float16 and bfloat16 run natively (products on operands of that type, the
// rest in float: layer.h) where the device's executor says so (runs_native),
// otherwise in float on upcast copies; either way the saved gates are in the
// input's dtype and the saved cells in float, and the tangents (forward mode)
// run upcast. A device's register.cpp/.cu only registers DeviceOps with its
// executor.

#include "layer.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/stack.h>
#include <ATen/record_function.h>
#include <torch/library.h>

#include <string>
#include <tuple>
#include <vector>

namespace lstm_ext {

inline OptTensor contiguous(const OptTensor& t) {
  return t.has_value() ? OptTensor(t->contiguous()) : std::nullopt;
}

inline OptTensor to_float(const OptTensor& t) {
  return t.has_value() ? OptTensor(t->to(at::kFloat)) : std::nullopt;
}

// The same for both of zoneout's weights, or LayerNorm's four.
template <typename Fn>
Zoneout map_zoneout(const Zoneout& z, const Fn& fn) {
  return {fn(z.c), fn(z.h)};
}

template <typename Fn>
LayerNorm map_layer_norm(const LayerNorm& ln, const Fn& fn) {
  return {fn(ln.ih), fn(ln.hh), fn(ln.c_weight), fn(ln.c_bias)};
}

inline Tensor to_dtype(const Tensor& t, at::ScalarType dtype) {
  return t.defined() ? t.to(dtype) : t;
}

// Whether the executor runs a float16/bfloat16 layer natively: one whose
// kHasNative says it can (its 16-bit executors exist), when its
// runs_native(dtype) says so.
template <template <typename> class Executor>
bool runs_native(at::ScalarType dtype) {
  if constexpr (Executor<float>::kHasNative) {
    return is_reduced_precision(dtype) && Executor<float>::runs_native(dtype);
  } else {
    return false;
  }
}

// An op's work in dtype: for a float16/bfloat16 that does not run natively
// (here, or for this op: kNative false), upcast(), the op again on float
// copies; otherwise run(ex) with the executor of dtype's C++ type.
template <template <typename> class Executor, bool kNative, typename Result, typename Upcast,
          typename Run>
Result in_dtype(at::ScalarType dtype, const Upcast& upcast, const Run& run) {
  if (is_reduced_precision(dtype) && !(kNative && runs_native<Executor>(dtype))) return upcast();
  Result out;
  if constexpr (kNative && Executor<float>::kHasNative) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "lstm_ext", [&] {
      Executor<scalar_t> ex;
      out = run(ex);
    });
  } else {
    AT_DISPATCH_FLOATING_TYPES(dtype, "lstm_ext", [&] {
      Executor<scalar_t> ex;
      out = run(ex);
    });
  }
  return out;
}

// forward_op past its checks. Upcast, it runs again on float copies; with a
// kept layout (made in float on that path), the weights are not read, only
// looked at for presence, so they are not copied.
template <template <typename> class Executor>
LayerOut checked_forward(const LayerDims& d, const Tensor& x, const Tensor& batch_sizes,
                         const Tensor& h0, const Tensor& c0, const Tensor& w_ih,
                         const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                         const OptTensor& w_hr, const OptTensor& rec_scale,
                         const Zoneout& zoneout, const LayerNorm& ln, bool reverse, bool save,
                         const LaidOut* kept) {
  const auto dtype = x.scalar_type();
  const auto upcast = [&] {
    const auto weight = [&](const Tensor& w) { return kept ? w : w.to(at::kFloat); };
    const auto optional = [&](const OptTensor& w) { return kept ? w : to_float(w); };
    auto [y, h_n, c_n, gates, cells] = checked_forward<Executor>(
        d, x.to(at::kFloat), batch_sizes, h0.to(at::kFloat), c0.to(at::kFloat), weight(w_ih),
        weight(w_hh), optional(b_ih), optional(b_hh), optional(w_hr), to_float(rec_scale),
        map_zoneout(zoneout, to_float), map_layer_norm(ln, to_float), reverse, save, kept);
    return LayerOut{y.to(dtype), h_n.to(dtype), c_n.to(dtype), to_dtype(gates, dtype), cells};
  };
  return in_dtype<Executor, true, LayerOut>(dtype, upcast, [&](auto& ex) {
    LayerOut out = layer_forward(ex, d, Steps(batch_sizes.contiguous(), reverse), x.contiguous(),
                                 h0.contiguous(), c0.contiguous(), w_ih.contiguous(),
                                 w_hh.contiguous(), contiguous(b_ih), contiguous(b_hh),
                                 contiguous(w_hr), rec_scale, map_zoneout(zoneout, contiguous),
                                 map_layer_norm(ln, contiguous), save, kept);
    // Natively, c is float inside.
    std::get<2>(out) = std::get<2>(out).to(dtype);
    return out;
  });
}

// `save`: for a backward (layer_forward's); `kept`: the weights' layout from
// lay_out_op, or null.
template <template <typename> class Executor>
LayerOut forward_op(c10::DeviceType device, const Tensor& x, const Tensor& batch_sizes,
                    const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
                    const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr,
                    const OptTensor& rec_scale, const Zoneout& zoneout, const LayerNorm& ln,
                    bool reverse, bool save, const LaidOut* kept) {
  const LayerDims d = check_layer_args(x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr);
  check_device_and_dtype(x, device);
  check_rec_scale(d, x, rec_scale);
  check_zoneout(d, x, zoneout);
  check_layer_norm(d, x, ln);
  return checked_forward<Executor>(d, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                                   rec_scale, zoneout, ln, reverse, save, kept);
}

template <template <typename> class Executor>
LayerGrads backward_op(c10::DeviceType device, const OptTensor& dy, const OptTensor& dh_n,
                       const OptTensor& dc_n, const Tensor& x, const Tensor& batch_sizes,
                       const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
                       const OptTensor& w_hr, const Tensor& y, const Tensor& gates,
                       const Tensor& cells, bool reverse, std::array<bool, 4> output_mask,
                       int64_t groups, const OptTensor& rec_scale, const OptTensor& problems,
                       const Zoneout& zoneout, const LayerNorm& ln) {
  const LayerDims d =
      check_layer_args(x, batch_sizes, h0, c0, w_ih, w_hh, std::nullopt, std::nullopt, w_hr);
  check_device_and_dtype(x, device);
  check_saved(d, x, y, gates, cells, zoneout.c.has_value());
  check_layer_norm(d, x, ln);
  check_backward_args(d, x, dy, dh_n, dc_n, groups, problems);
  check_rec_scale(d, x, rec_scale);
  check_zoneout(d, x, zoneout);
  const auto dtype = x.scalar_type();
  // Natively, the gradients are float inside; upcast, float throughout.
  const auto in_dtype_of_x = [&](const LayerGrads& grads) {
    return std::apply([&](const auto&... g) { return LayerGrads{to_dtype(g, dtype)...}; }, grads);
  };
  const auto upcast = [&] {
    return in_dtype_of_x(backward_op<Executor>(
        device, to_float(dy), to_float(dh_n), to_float(dc_n), x.to(at::kFloat), batch_sizes,
        h0.to(at::kFloat), c0.to(at::kFloat), w_ih.to(at::kFloat), w_hh.to(at::kFloat),
        to_float(w_hr), y.to(at::kFloat), gates.to(at::kFloat), cells, reverse, output_mask,
        groups, to_float(rec_scale), problems, map_zoneout(zoneout, to_float),
        map_layer_norm(ln, to_float)));
  };
  return in_dtype<Executor, true, LayerGrads>(dtype, upcast, [&](auto& ex) {
    return in_dtype_of_x(layer_backward(
        ex, d, Steps(batch_sizes.contiguous(), reverse), grad_mask(output_mask, w_hr.has_value()),
        dy, dh_n, dc_n, x.contiguous(), h0.contiguous(), c0.contiguous(), w_ih.contiguous(),
        w_hh.contiguous(), contiguous(w_hr), y.contiguous(), gates.contiguous(),
        cells.contiguous(), groups, rec_scale, contiguous(problems),
        map_zoneout(zoneout, contiguous), map_layer_norm(ln, contiguous)));
  });
}

// The forward's layout of the weights (lay_out_forward), in the path their
// dtype takes here: for a caller to keep and pass to the inference op.
template <template <typename> class Executor>
LaidOut lay_out_op(c10::DeviceType device, const Tensor& w_ih, const Tensor& w_hh,
                   const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr) {
  check_weights(w_hh, "w_hh", w_ih.dim() == 2 ? w_ih.size(1) : 0, w_ih, w_hh, b_ih, b_hh, w_hr);
  check_device_and_dtype(w_hh, device);
  const auto upcast = [&] {
    return lay_out_op<Executor>(device, w_ih.to(at::kFloat), w_hh.to(at::kFloat),
                                to_float(b_ih), to_float(b_hh), to_float(w_hr));
  };
  return in_dtype<Executor, true, LaidOut>(w_hh.scalar_type(), upcast, [&](auto& ex) {
    return lay_out_forward(ex, w_ih.contiguous(), w_hh.contiguous(), contiguous(b_ih),
                           contiguous(b_hh), contiguous(w_hr));
  });
}

// A kept layout's address if any part of it is given (a layer's lay_out
// result), else null: the layer lays its weights out itself.
inline const LaidOut* given(const LaidOut& kept) {
  return kept.ih.defined() || kept.hh.defined() || kept.hr.defined() || kept.bias.defined()
             ? &kept
             : nullptr;
}

inline Tensor value_or_undefined(const OptTensor& t) { return t.has_value() ? *t : Tensor(); }

// lstm_inference: the layers one after another, both directions of a layer
// on its input, each checked as the layer op checks it.
template <template <typename> class Executor>
LayerOutputs stack_inference_op(c10::DeviceType device, const Tensor& x,
                                const Tensor& batch_sizes, const Tensor& h0, const Tensor& c0,
                                at::TensorList weights,
                                const c10::List<std::optional<Tensor>>& kept, bool has_biases,
                                int64_t num_layers, bool bidirectional) {
  const int64_t directions = bidirectional ? 2 : 1, groups = num_layers * directions;
  const int64_t count = static_cast<int64_t>(weights.size()), base = has_biases ? 4 : 2;
  TORCH_CHECK(num_layers > 0, "lstm_inference: num_layers must be positive, got ", num_layers);
  const int64_t per_group = count / groups;
  TORCH_CHECK(per_group * groups == count && (per_group == base || per_group == base + 1),
              "lstm_inference: expected ", base, " weights (", base + 1,
              " with a projection) for each of ", groups, " layers and directions, got ", count,
              " weights");
  TORCH_CHECK(kept.empty() || static_cast<int64_t>(kept.size()) == 4 * groups,
              "lstm_inference: kept must be empty or hold 4 entries for each of ", groups,
              " layers and directions, got ", kept.size());
  TORCH_CHECK(h0.dim() == 3 && c0.dim() == 3 && h0.size(0) == groups && c0.size(0) == groups,
              "lstm_inference: h0 and c0 must be 3-D with ", groups,
              " layers and directions first, got shapes ", h0.sizes(), " and ", c0.sizes());
  const bool proj = per_group == base + 1;
  Tensor input = x;
  std::vector<Tensor> h_n, c_n, outputs;
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    outputs.clear();
    for (int64_t direction = 0; direction < directions; ++direction) {
      const int64_t k = layer * directions + direction;
      const Tensor* w = weights.data() + k * per_group;
      const OptTensor b_ih = has_biases ? OptTensor(w[2]) : std::nullopt;
      const OptTensor b_hh = has_biases ? OptTensor(w[3]) : std::nullopt;
      const OptTensor w_hr = proj ? OptTensor(w[per_group - 1]) : std::nullopt;
      const auto kept_at = [&](int64_t i) {
        return kept.empty() ? Tensor() : value_or_undefined(kept.get(4 * k + i));
      };
      const LaidOut laid_out{kept_at(0), kept_at(1), kept_at(2), kept_at(3)};
      // The profiler's range for the layer, named as functional.lstm's.
      std::string name;
      at::RecordFunction range(at::RecordScope::USER_SCOPE);
      if (range.isActive()) {
        name = "lstm_ext.lstm layer " + std::to_string(layer) + (direction ? " reverse" : "");
        range.before(name);
      }
      auto [y, h, c, gates, cells] =
          forward_op<Executor>(device, input, batch_sizes, h0[k], c0[k], w[0], w[1], b_ih, b_hh,
                               w_hr, std::nullopt, Zoneout{}, LayerNorm{}, direction == 1,
                               false, given(laid_out));
      outputs.push_back(std::move(y));
      h_n.push_back(std::move(h));
      c_n.push_back(std::move(c));
    }
    input = directions == 2 ? at::cat(outputs, 1) : outputs[0];
  }
  return {input, at::stack(h_n), at::stack(c_n)};
}

template <typename Fn>
Tangents map_tangents(const Tangents& t, const Fn& fn) {
  return {fn(t.x), fn(t.h0), fn(t.c0), fn(t.w_ih), fn(t.w_hh), fn(t.bias), fn(t.w_hr)};
}

template <template <typename> class Executor>
LayerOutputs jvp_op(c10::DeviceType device, const Tensor& x, const Tensor& batch_sizes,
                     const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
                     const OptTensor& w_hr, const Tensor& y, const Tensor& gates,
                     const Tensor& cells, bool reverse, const Tangents& tangents,
                     const OptTensor& rec_scale) {
  const LayerDims d =
      check_layer_args(x, batch_sizes, h0, c0, w_ih, w_hh, std::nullopt, std::nullopt, w_hr);
  check_device_and_dtype(x, device);
  check_saved(d, x, y, gates, cells);
  check_tangents(d, x, tangents, w_hr.has_value());
  check_rec_scale(d, x, rec_scale);
  const auto dtype = x.scalar_type();
  const auto upcast = [&] {
    auto [t_y, t_h_n, t_c_n] = jvp_op<Executor>(
        device, x.to(at::kFloat), batch_sizes, h0.to(at::kFloat), c0.to(at::kFloat),
        w_ih.to(at::kFloat), w_hh.to(at::kFloat), to_float(w_hr), y.to(at::kFloat),
        gates.to(at::kFloat), cells, reverse, map_tangents(tangents, to_float),
        to_float(rec_scale));
    return LayerOutputs{t_y.to(dtype), t_h_n.to(dtype), t_c_n.to(dtype)};
  };
  // Tangents always run upcast in float16/bfloat16.
  return in_dtype<Executor, false, LayerOutputs>(dtype, upcast, [&](auto& ex) {
    return layer_jvp(ex, d, Steps(batch_sizes.contiguous(), reverse), x.contiguous(),
                     h0.contiguous(), c0.contiguous(), w_ih.contiguous(), w_hh.contiguous(),
                     contiguous(w_hr), y.contiguous(), gates.contiguous(), cells.contiguous(),
                     map_tangents(tangents, contiguous), rec_scale);
  });
}

// No guard: the CPU and the emulated GPU need no current device.
struct NoGuard {
  explicit NoGuard(const Tensor&) {}
};

// The kernels a device registers for the ops, with the schemas' signatures:
// its executor, its device type, and a guard made from x before any work.
template <template <typename> class Executor, c10::DeviceType device, typename Guard = NoGuard>
struct DeviceOps {
  static LayerOut forward(const Tensor& x, const Tensor& batch_sizes, const Tensor& h0,
                          const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
                          const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr,
                          bool reverse, const OptTensor& rec_scale, const OptTensor& zoneout_c,
                          const OptTensor& zoneout_h, const OptTensor& ln_ih,
                          const OptTensor& ln_hh, const OptTensor& ln_c_weight,
                          const OptTensor& ln_c_bias) {
    const Guard guard(x);
    return forward_op<Executor>(device, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                                rec_scale, Zoneout{zoneout_c, zoneout_h},
                                LayerNorm{ln_ih, ln_hh, ln_c_weight, ln_c_bias}, reverse, true,
                                nullptr);
  }

  static LayerOutputs inference(const Tensor& x, const Tensor& batch_sizes, const Tensor& h0,
                                const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
                                const OptTensor& b_ih, const OptTensor& b_hh,
                                const OptTensor& w_hr, bool reverse, const OptTensor& kept_ih,
                                const OptTensor& kept_hh, const OptTensor& kept_hr,
                                const OptTensor& kept_bias, const OptTensor& rec_scale,
                                const OptTensor& zoneout_c, const OptTensor& zoneout_h,
                                const OptTensor& ln_ih, const OptTensor& ln_hh,
                                const OptTensor& ln_c_weight, const OptTensor& ln_c_bias) {
    const Guard guard(x);
    const LaidOut kept{value_or_undefined(kept_ih), value_or_undefined(kept_hh),
                       value_or_undefined(kept_hr), value_or_undefined(kept_bias)};
    auto [y, h_n, c_n, gates, cells] =
        forward_op<Executor>(device, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                             rec_scale, Zoneout{zoneout_c, zoneout_h},
                             LayerNorm{ln_ih, ln_hh, ln_c_weight, ln_c_bias}, reverse, false,
                             given(kept));
    return {y, h_n, c_n};
  }

  static LayerOutputs stack_inference(const Tensor& x, const Tensor& batch_sizes,
                                      const Tensor& h0, const Tensor& c0, at::TensorList weights,
                                      const c10::List<std::optional<Tensor>>& kept,
                                      bool has_biases, int64_t num_layers, bool bidirectional) {
    const Guard guard(x);
    return stack_inference_op<Executor>(device, x, batch_sizes, h0, c0, weights, kept,
                                        has_biases, num_layers, bidirectional);
  }

  static std::tuple<Tensor, Tensor, Tensor, Tensor> lay_out(const Tensor& w_ih,
                                                            const Tensor& w_hh,
                                                            const OptTensor& b_ih,
                                                            const OptTensor& b_hh,
                                                            const OptTensor& w_hr) {
    const Guard guard(w_hh);
    const LaidOut w = lay_out_op<Executor>(device, w_ih, w_hh, b_ih, b_hh, w_hr);
    return {w.ih, w.hh, w.hr, w.bias};
  }

  static LayerGrads backward(const OptTensor& dy, const OptTensor& dh_n, const OptTensor& dc_n,
                             const Tensor& x, const Tensor& batch_sizes, const Tensor& h0,
                             const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
                             const OptTensor& w_hr, const Tensor& y, const Tensor& gates,
                             const Tensor& cells, bool reverse, std::array<bool, 4> output_mask,
                             int64_t groups, const OptTensor& rec_scale,
                             const OptTensor& problems, const OptTensor& zoneout_c,
                             const OptTensor& zoneout_h, const OptTensor& ln_ih,
                             const OptTensor& ln_hh, const OptTensor& ln_c_weight,
                             const OptTensor& ln_c_bias) {
    const Guard guard(x);
    return backward_op<Executor>(device, dy, dh_n, dc_n, x, batch_sizes, h0, c0, w_ih, w_hh,
                                 w_hr, y, gates, cells, reverse, output_mask, groups, rec_scale,
                                 problems, Zoneout{zoneout_c, zoneout_h},
                                 LayerNorm{ln_ih, ln_hh, ln_c_weight, ln_c_bias});
  }

  static LayerOutputs jvp(const Tensor& x, const Tensor& batch_sizes, const Tensor& h0,
                           const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
                           const OptTensor& w_hr, const Tensor& y, const Tensor& gates,
                           const Tensor& cells, bool reverse, const OptTensor& dx,
                           const OptTensor& dh0, const OptTensor& dc0, const OptTensor& dw_ih,
                           const OptTensor& dw_hh, const OptTensor& db, const OptTensor& dw_hr,
                           const OptTensor& rec_scale) {
    const Guard guard(x);
    return jvp_op<Executor>(device, x, batch_sizes, h0, c0, w_ih, w_hh, w_hr, y, gates, cells,
                            reverse, Tangents{dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr}, rec_scale);
  }

  // In a TORCH_LIBRARY_IMPL block for the device's dispatch key.
  static void register_kernels(torch::Library& m) {
    m.impl("lstm_layer", &forward);
    m.impl("lstm_layer_inference", &inference);
    m.impl("lstm_layer_lay_out", &lay_out);
    m.impl("lstm_inference", &stack_inference);
    m.impl("lstm_layer_backward", &backward);
    m.impl("lstm_layer_jvp", &jvp);
  }
};

}  // namespace lstm_ext
