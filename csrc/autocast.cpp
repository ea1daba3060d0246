// Under torch.autocast the layer runs in autocast's lower-precision dtype, as
// torch's own lstm does: floating inputs are cast (weights once per autocast
// region, through autocast's cache), then the op runs with autocast off.
// float16/bfloat16 then compute in float inside (op.h).

#include "lstm.h"

#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace lstm_ext {
namespace {

using LayerFn = LayerOut(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                         const Tensor&, const OptTensor&, const OptTensor&, const OptTensor&,
                         bool);

template <c10::DeviceType device>
LayerOut lstm_layer_autocast(const Tensor& x, const Tensor& batch_sizes, const Tensor& h0,
                             const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
                             const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr,
                             bool reverse) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(
      at::autocast::get_autocast_dispatch_key_from_device_type(device));
  const auto dtype = at::autocast::get_lower_precision_fp_from_device_type(device);
  const auto cast = [&](const auto& t) { return at::autocast::cached_cast(dtype, t, device); };
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("lstm_ext::lstm_layer", "")
                             .typed<LayerFn>();
  return op.call(cast(x), batch_sizes, cast(h0), cast(c0), cast(w_ih), cast(w_hh), cast(b_ih),
                 cast(b_hh), cast(w_hr), reverse);
}

}  // namespace

TORCH_LIBRARY_IMPL(lstm_ext, AutocastCPU, m) {
  m.impl("lstm_layer", &lstm_layer_autocast<c10::DeviceType::CPU>);
}

TORCH_LIBRARY_IMPL(lstm_ext, AutocastCUDA, m) {
  m.impl("lstm_layer", &lstm_layer_autocast<c10::DeviceType::CUDA>);
}

}  // namespace lstm_ext
