// lstm_ext::lstm_layer and its backward on the CPU.

#include "../op.h"
#include "executor.h"

#include <torch/library.h>

namespace lstm_ext {
namespace {

LayerOut lstm_layer_cpu(const Tensor& x, const Tensor& batch_sizes, const Tensor& h0,
                        const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
                        const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr,
                        bool reverse) {
  return forward_op<cpu::Executor>(c10::DeviceType::CPU, x, batch_sizes, h0, c0, w_ih, w_hh,
                                   b_ih, b_hh, w_hr, reverse);
}

LayerGrads lstm_layer_backward_cpu(const OptTensor& dy, const OptTensor& dh_n,
                                   const OptTensor& dc_n, const Tensor& x,
                                   const Tensor& batch_sizes, const Tensor& h0, const Tensor& c0,
                                   const Tensor& w_ih, const Tensor& w_hh, const OptTensor& w_hr,
                                   const Tensor& y, const Tensor& gates, const Tensor& cells,
                                   bool reverse, std::array<bool, 4> output_mask) {
  return backward_op<cpu::Executor>(c10::DeviceType::CPU, dy, dh_n, dc_n, x, batch_sizes, h0, c0,
                                    w_ih, w_hh, w_hr, y, gates, cells, reverse, output_mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(lstm_ext, CPU, m) {
  m.impl("lstm_layer", &lstm_layer_cpu);
  m.impl("lstm_layer_backward", &lstm_layer_backward_cpu);
}

}  // namespace lstm_ext
