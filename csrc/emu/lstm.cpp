// lstm_ext_emu::lstm_layer and its backward: the CUDA executor and kernels
// (csrc/cuda/executor.cuh, kernels.cuh) run on the host by the emulated
// backend, on CPU tensors. For the tests, which check the CUDA code on
// machines without a GPU; the shipped lstm_ext ops do not include it.

#include "../op.h"
#include "../schema.h"

#include <Python.h>
#include <torch/library.h>

// Last, as it brings in the CUDA shim, which kernels.cuh needs to compile as C++.
#include "backend.h"
#include "../cuda/executor.cuh"

extern "C" {
// `import lstm_ext._emu` registers torch.ops.lstm_ext_emu; the module is empty.
PyObject* PyInit__emu(void) {
  static PyModuleDef module{PyModuleDef_HEAD_INIT, "_emu", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
}

namespace lstm_ext {
namespace {

template <typename scalar_t>
using Executor = cuda::Executor<emu::Backend, scalar_t>;

LayerOut lstm_layer_emu(const Tensor& x, const Tensor& batch_sizes, const Tensor& h0,
                        const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
                        const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr,
                        bool reverse) {
  return forward_op<Executor>(c10::DeviceType::CPU, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih,
                              b_hh, w_hr, reverse);
}

LayerGrads lstm_layer_backward_emu(const OptTensor& dy, const OptTensor& dh_n,
                                   const OptTensor& dc_n, const Tensor& x,
                                   const Tensor& batch_sizes, const Tensor& h0, const Tensor& c0,
                                   const Tensor& w_ih, const Tensor& w_hh, const OptTensor& w_hr,
                                   const Tensor& y, const Tensor& gates, const Tensor& cells,
                                   bool reverse, std::array<bool, 4> output_mask) {
  return backward_op<Executor>(c10::DeviceType::CPU, dy, dh_n, dc_n, x, batch_sizes, h0, c0,
                               w_ih, w_hh, w_hr, y, gates, cells, reverse, output_mask);
}

}  // namespace
}  // namespace lstm_ext

TORCH_LIBRARY(lstm_ext_emu, m) {
  m.def(lstm_ext::kLayerSchema);
  m.def(lstm_ext::kLayerBackwardSchema);
}

TORCH_LIBRARY_IMPL(lstm_ext_emu, CPU, m) {
  m.impl("lstm_layer", &lstm_ext::lstm_layer_emu);
  m.impl("lstm_layer_backward", &lstm_ext::lstm_layer_backward_emu);
}
