// The op schemas, and the stub Python module whose import loads this library.

#include "schema.h"

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

TORCH_LIBRARY(lstm_ext, m) { lstm_ext::define_ops(m); }
