// The lstm_ext ops on the CPU.

#include "../op.h"
#include "executor.h"
#include "kernels.h"

#include <torch/library.h>

#include <string>

TORCH_LIBRARY_FRAGMENT(lstm_ext, m) {
  // Which level of the vectorised kernels this CPU runs (kernels.h).
  m.def("cpu_kernels() -> str", [] { return std::string(lstm_ext::cpu::kernels_level()); });
  // For tests: forces how the CPU shares a layer's steps between threads
  // (executor.h; -1: by the shape, 0: by sequences, 1: by hidden units) and
  // returns the previous setting.
  m.def("_cpu_split(int choice) -> int", [](int64_t choice) -> int64_t {
    return lstm_ext::cpu::forced_split.exchange(static_cast<int>(choice));
  });
  // Whether bfloat16/float16 layers run their products natively here
  // (kernels.h), and, for tests, turning that off: returns the previous
  // setting of the switch.
  m.def("cpu_native(ScalarType dtype) -> bool", [](c10::ScalarType dtype) {
    return lstm_ext::cpu::native_products(dtype);
  });
  m.def("_cpu_native_off(bool off) -> bool",
        [](bool off) { return lstm_ext::cpu::exchange_native_off(off); });
}

TORCH_LIBRARY_IMPL(lstm_ext, CPU, m) {
  using K = lstm_ext::Kernels<lstm_ext::cpu::Executor, c10::DeviceType::CPU>;
  m.impl("lstm_layer", &K::forward);
  m.impl("lstm_layer_inference", &K::inference);
  m.impl("lstm_layer_backward", &K::backward);
  m.impl("lstm_layer_jvp", &K::jvp);
}
