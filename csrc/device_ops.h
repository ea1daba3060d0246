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

namespace lstm_ext {

inline OptTensor contiguous(const OptTensor& t) {
  return t.has_value() ? OptTensor(t->contiguous()) : std::nullopt;
}

inline OptTensor to_float(const OptTensor& t) {
  return t.has_value() ? OptTensor(t->to(at::kFloat)) : std::nullopt;
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

// `save`: for a backward (layer_forward's).
template <template <typename> class Executor>
LayerOut forward_op(c10::DeviceType device, const Tensor& x, const Tensor& batch_sizes,
                    const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
                    const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr,
                    bool reverse, bool save) {
  const LayerDims d = check_layer_args(x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr);
  check_device_and_dtype(x, device);
  const auto dtype = x.scalar_type();
  const auto upcast = [&] {
    auto [y, h_n, c_n, gates, cells] = forward_op<Executor>(
        device, x.to(at::kFloat), batch_sizes, h0.to(at::kFloat), c0.to(at::kFloat),
        w_ih.to(at::kFloat), w_hh.to(at::kFloat), to_float(b_ih), to_float(b_hh), to_float(w_hr),
        reverse, save);
    return LayerOut{y.to(dtype), h_n.to(dtype), c_n.to(dtype), to_dtype(gates, dtype), cells};
  };
  return in_dtype<Executor, true, LayerOut>(dtype, upcast, [&](auto& ex) {
    LayerOut out = layer_forward(ex, d, Steps(batch_sizes.contiguous(), reverse), x.contiguous(),
                                 h0.contiguous(), c0.contiguous(), w_ih.contiguous(),
                                 w_hh.contiguous(), contiguous(b_ih), contiguous(b_hh),
                                 contiguous(w_hr), save);
    // Natively, c is float inside.
    std::get<2>(out) = std::get<2>(out).to(dtype);
    return out;
  });
}

template <template <typename> class Executor>
LayerGrads backward_op(c10::DeviceType device, const OptTensor& dy, const OptTensor& dh_n,
                       const OptTensor& dc_n, const Tensor& x, const Tensor& batch_sizes,
                       const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
                       const OptTensor& w_hr, const Tensor& y, const Tensor& gates,
                       const Tensor& cells, bool reverse, std::array<bool, 4> output_mask,
                       int64_t groups) {
  const LayerDims d =
      check_layer_args(x, batch_sizes, h0, c0, w_ih, w_hh, std::nullopt, std::nullopt, w_hr);
  check_device_and_dtype(x, device);
  check_saved(d, x, y, gates, cells);
  check_backward_args(d, x, batch_sizes, dy, dh_n, dc_n, groups);
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
        groups));
  };
  return in_dtype<Executor, true, LayerGrads>(dtype, upcast, [&](auto& ex) {
    return in_dtype_of_x(layer_backward(
        ex, d, Steps(batch_sizes.contiguous(), reverse), grad_mask(output_mask, w_hr.has_value()),
        dy, dh_n, dc_n, x.contiguous(), h0.contiguous(), c0.contiguous(), w_ih.contiguous(),
        w_hh.contiguous(), contiguous(w_hr), y.contiguous(), gates.contiguous(),
        cells.contiguous(), groups));
  });
}

template <typename Fn>
Tangents map_tangents(const Tangents& t, const Fn& fn) {
  return {fn(t.x), fn(t.h0), fn(t.c0), fn(t.w_ih), fn(t.w_hh), fn(t.bias), fn(t.w_hr)};
}

template <template <typename> class Executor>
LayerOutputs jvp_op(c10::DeviceType device, const Tensor& x, const Tensor& batch_sizes,
                     const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
                     const OptTensor& w_hr, const Tensor& y, const Tensor& gates,
                     const Tensor& cells, bool reverse, const Tangents& tangents) {
  const LayerDims d =
      check_layer_args(x, batch_sizes, h0, c0, w_ih, w_hh, std::nullopt, std::nullopt, w_hr);
  check_device_and_dtype(x, device);
  check_saved(d, x, y, gates, cells);
  check_tangents(d, x, tangents, w_hr.has_value());
  const auto dtype = x.scalar_type();
  const auto upcast = [&] {
    auto [t_y, t_h_n, t_c_n] = jvp_op<Executor>(
        device, x.to(at::kFloat), batch_sizes, h0.to(at::kFloat), c0.to(at::kFloat),
        w_ih.to(at::kFloat), w_hh.to(at::kFloat), to_float(w_hr), y.to(at::kFloat),
        gates.to(at::kFloat), cells, reverse, map_tangents(tangents, to_float));
    return LayerOutputs{t_y.to(dtype), t_h_n.to(dtype), t_c_n.to(dtype)};
  };
  // Tangents always run upcast in float16/bfloat16.
  return in_dtype<Executor, false, LayerOutputs>(dtype, upcast, [&](auto& ex) {
    return layer_jvp(ex, d, Steps(batch_sizes.contiguous(), reverse), x.contiguous(),
                     h0.contiguous(), c0.contiguous(), w_ih.contiguous(), w_hh.contiguous(),
                     contiguous(w_hr), y.contiguous(), gates.contiguous(), cells.contiguous(),
                     map_tangents(tangents, contiguous));
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
                          bool reverse) {
    const Guard guard(x);
    return forward_op<Executor>(device, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                                reverse, true);
  }

  static LayerOutputs inference(const Tensor& x, const Tensor& batch_sizes, const Tensor& h0,
                                const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
                                const OptTensor& b_ih, const OptTensor& b_hh,
                                const OptTensor& w_hr, bool reverse) {
    const Guard guard(x);
    auto [y, h_n, c_n, gates, cells] = forward_op<Executor>(
        device, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, false);
    return {y, h_n, c_n};
  }

  static LayerGrads backward(const OptTensor& dy, const OptTensor& dh_n, const OptTensor& dc_n,
                             const Tensor& x, const Tensor& batch_sizes, const Tensor& h0,
                             const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
                             const OptTensor& w_hr, const Tensor& y, const Tensor& gates,
                             const Tensor& cells, bool reverse, std::array<bool, 4> output_mask,
                             int64_t groups) {
    const Guard guard(x);
    return backward_op<Executor>(device, dy, dh_n, dc_n, x, batch_sizes, h0, c0, w_ih, w_hh,
                                 w_hr, y, gates, cells, reverse, output_mask, groups);
  }

  static LayerOutputs jvp(const Tensor& x, const Tensor& batch_sizes, const Tensor& h0,
                           const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
                           const OptTensor& w_hr, const Tensor& y, const Tensor& gates,
                           const Tensor& cells, bool reverse, const OptTensor& dx,
                           const OptTensor& dh0, const OptTensor& dc0, const OptTensor& dw_ih,
                           const OptTensor& dw_hh, const OptTensor& db, const OptTensor& dw_hr) {
    const Guard guard(x);
    return jvp_op<Executor>(device, x, batch_sizes, h0, c0, w_ih, w_hh, w_hr, y, gates, cells,
                            reverse, Tangents{dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr});
  }
};

}  // namespace lstm_ext
