// Under torch.autocast the layer runs in autocast's lower-precision dtype, as
// torch's own lstm does: floating inputs are cast (weights once per autocast
// region, through autocast's cache), then the op runs with autocast off.
// float16/bfloat16 then run natively or upcast (device_ops.h).

#include "types.h"

#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace lstm_ext {
namespace {

// The rule for the op `name` (lstm_layer, or lstm_layer_inference with a kept
// layout `kept`), returning Out.
template <c10::DeviceType device, const char* name, typename Out, typename... Kept>
Out layer_autocast(const Tensor& x, const Tensor& batch_sizes, const Tensor& h0, const Tensor& c0,
                   const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
                   const OptTensor& b_hh, const OptTensor& w_hr, bool reverse, Kept... kept,
                   const OptTensor& rec_scale, const OptTensor& zoneout_c,
                   const OptTensor& zoneout_h, const OptTensor& ln_ih, const OptTensor& ln_hh,
                   const OptTensor& ln_c_weight, const OptTensor& ln_c_bias) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(
      at::autocast::get_autocast_dispatch_key_from_device_type(device));
  const auto dtype = at::autocast::get_lower_precision_fp_from_device_type(device);
  const auto cast = [&](const auto& t) { return at::autocast::cached_cast(dtype, t, device); };
  using Fn = Out(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                 const Tensor&, const OptTensor&, const OptTensor&, const OptTensor&, bool,
                 Kept..., const OptTensor&, const OptTensor&, const OptTensor&, const OptTensor&,
                 const OptTensor&, const OptTensor&, const OptTensor&);
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Fn>();
  return op.call(cast(x), batch_sizes, cast(h0), cast(c0), cast(w_ih), cast(w_hh), cast(b_ih),
                 cast(b_hh), cast(w_hr), reverse, kept..., cast(rec_scale), cast(zoneout_c),
                 cast(zoneout_h), cast(ln_ih), cast(ln_hh), cast(ln_c_weight), cast(ln_c_bias));
}

constexpr char kLayer[] = "lstm_ext::lstm_layer";
constexpr char kInference[] = "lstm_ext::lstm_layer_inference";

template <c10::DeviceType device>
LayerOut layer_rule(const Tensor& x, const Tensor& batch_sizes, const Tensor& h0, const Tensor& c0,
                    const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
                    const OptTensor& b_hh, const OptTensor& w_hr, bool reverse,
                    const OptTensor& rec_scale, const OptTensor& zoneout_c,
                    const OptTensor& zoneout_h, const OptTensor& ln_ih, const OptTensor& ln_hh,
                    const OptTensor& ln_c_weight, const OptTensor& ln_c_bias) {
  return layer_autocast<device, kLayer, LayerOut>(x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh,
                                                  w_hr, reverse, rec_scale, zoneout_c, zoneout_h,
                                                  ln_ih, ln_hh, ln_c_weight, ln_c_bias);
}

// A kept layout is of the weights as they were, not cast: the cast ones are
// laid out afresh.
template <c10::DeviceType device>
LayerOutputs inference_autocast(const Tensor& x, const Tensor& batch_sizes, const Tensor& h0,
                                const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
                                const OptTensor& b_ih, const OptTensor& b_hh,
                                const OptTensor& w_hr, bool reverse, const OptTensor&,
                                const OptTensor&, const OptTensor&, const OptTensor&,
                                const OptTensor& rec_scale, const OptTensor& zoneout_c,
                                const OptTensor& zoneout_h, const OptTensor& ln_ih,
                                const OptTensor& ln_hh, const OptTensor& ln_c_weight,
                                const OptTensor& ln_c_bias) {
  const OptTensor none;
  return layer_autocast<device, kInference, LayerOutputs, const OptTensor&, const OptTensor&,
                        const OptTensor&, const OptTensor&>(
      x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, none, none, none, none,
      rec_scale, zoneout_c, zoneout_h, ln_ih, ln_hh, ln_c_weight, ln_c_bias);
}

template <c10::DeviceType device>
void register_rules(torch::Library& m) {
  m.impl("lstm_layer", &layer_rule<device>);
  m.impl("lstm_layer_inference", &inference_autocast<device>);
}

}  // namespace

TORCH_LIBRARY_IMPL(lstm_ext, AutocastCPU, m) { register_rules<c10::DeviceType::CPU>(m); }

TORCH_LIBRARY_IMPL(lstm_ext, AutocastCUDA, m) { register_rules<c10::DeviceType::CUDA>(m); }

}  // namespace lstm_ext
