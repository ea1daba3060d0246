// The lstm_ext_emu ops (lstm_ext's schemas): the CUDA executor and kernels
// (csrc/cuda/executor.cuh, kernels.cuh) run on the host by the emulated
// backend, on CPU tensors. For the tests, which check the CUDA code on
// machines without a GPU; the shipped lstm_ext ops do not include it.

#include "../device_ops.h"
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

}  // namespace
}  // namespace lstm_ext

TORCH_LIBRARY(lstm_ext_emu, m) { lstm_ext::define_ops(m); }

TORCH_LIBRARY_IMPL(lstm_ext_emu, CPU, m) {
  lstm_ext::DeviceOps<lstm_ext::Executor, c10::DeviceType::CPU>::register_kernels(m);
}
