// The lstm_ext ops on the CPU.

#include "../op.h"
#include "executor.h"
#include "kernels.h"

#include <torch/library.h>

#include <string>

// Which level of the vectorised kernels this CPU runs (kernels.h).
TORCH_LIBRARY_FRAGMENT(lstm_ext, m) {
  m.def("cpu_kernels() -> str", [] { return std::string(lstm_ext::cpu::kernels_level()); });
}

TORCH_LIBRARY_IMPL(lstm_ext, CPU, m) {
  using K = lstm_ext::Kernels<lstm_ext::cpu::Executor, c10::DeviceType::CPU>;
  m.impl("lstm_layer", &K::forward);
  m.impl("lstm_layer_inference", &K::inference);
  m.impl("lstm_layer_backward", &K::backward);
  m.impl("lstm_layer_jvp", &K::jvp);
}
