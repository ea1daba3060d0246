// The op schemas, and the stub Python module whose import loads this library.

#include <Python.h>
#include <torch/library.h>

extern "C" {
// `import lstm_ext._C` only has to load the shared object so that the
// TORCH_LIBRARY registrations below run; the module itself is empty.
PyObject* PyInit__C(void) {
  static PyModuleDef module{PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
}

TORCH_LIBRARY(lstm_ext, m) {
  // One layer, one direction, over a packed sequence. Returns y, h_n, c_n and,
  // for the backward, the activated gates and the cell state of every row.
  m.def(
      "lstm_layer(Tensor x, Tensor batch_sizes, Tensor h0, Tensor c0, Tensor w_ih, "
      "Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, bool reverse) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // output_mask selects dx, (dw_ih, dw_hh), db, dw_hr; unselected ones come
  // back undefined (None), as in ATen's native backward ops.
  m.def(
      "lstm_layer_backward(Tensor? dy, Tensor? dh_n, Tensor? dc_n, Tensor x, "
      "Tensor batch_sizes, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? w_hr, "
      "Tensor y, Tensor gates, Tensor cells, bool reverse, bool[4] output_mask) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}
