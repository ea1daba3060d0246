// lstm_ext::lstm_layer and its backward on the CPU: checks, then layer.h with
// the CPU executor.

#include "../layer.h"
#include "executor.h"

#include <ATen/Dispatch.h>
#include <torch/library.h>

namespace lstm_ext {
namespace {

Tensor contiguous(const Tensor& t) { return t.contiguous(); }
OptTensor contiguous(const OptTensor& t) {
  return t.has_value() ? OptTensor(t->contiguous()) : std::nullopt;
}

void check_cpu_dtype(const Tensor& x) {
  TORCH_CHECK(x.device().is_cpu(), "lstm_layer (CPU): x must be on the CPU, got ", x.device());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "lstm_layer (CPU): dtype ", x.scalar_type(), " is not supported; use float32 or float64");
}

LayerOut lstm_layer_cpu(const Tensor& x, const Tensor& batch_sizes, const Tensor& h0,
                        const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
                        const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr,
                        bool reverse) {
  const LayerDims d = check_layer_args(x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr);
  check_cpu_dtype(x);
  const Steps steps(batch_sizes.contiguous(), reverse);
  LayerOut out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lstm_layer_cpu", [&] {
    cpu::Executor<scalar_t> ex;
    out = layer_forward(ex, d, steps, contiguous(x), contiguous(h0), contiguous(c0),
                        contiguous(w_ih), contiguous(w_hh), contiguous(b_ih), contiguous(b_hh),
                        contiguous(w_hr));
  });
  return out;
}

LayerGrads lstm_layer_backward_cpu(const OptTensor& dy, const OptTensor& dh_n,
                                   const OptTensor& dc_n, const Tensor& x,
                                   const Tensor& batch_sizes, const Tensor& h0, const Tensor& c0,
                                   const Tensor& w_ih, const Tensor& w_hh, const OptTensor& w_hr,
                                   const Tensor& y, const Tensor& gates, const Tensor& cells,
                                   bool reverse, std::array<bool, 4> output_mask) {
  const LayerDims d =
      check_layer_args(x, batch_sizes, h0, c0, w_ih, w_hh, std::nullopt, std::nullopt, w_hr);
  check_cpu_dtype(x);
  check_backward_args(d, dy, dh_n, dc_n, y, gates, cells);
  const GradMask mask = grad_mask(output_mask, w_hr.has_value());
  const Steps steps(batch_sizes.contiguous(), reverse);
  LayerGrads grads;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lstm_layer_backward_cpu", [&] {
    cpu::Executor<scalar_t> ex;
    grads = layer_backward(ex, d, steps, mask, dy, dh_n, dc_n, contiguous(x), contiguous(h0),
                           contiguous(c0), contiguous(w_ih), contiguous(w_hh), contiguous(w_hr),
                           contiguous(y), contiguous(gates), contiguous(cells));
  });
  return grads;
}

}  // namespace

TORCH_LIBRARY_IMPL(lstm_ext, CPU, m) {
  m.impl("lstm_layer", &lstm_layer_cpu);
  m.impl("lstm_layer_backward", &lstm_layer_backward_cpu);
}

}  // namespace lstm_ext
