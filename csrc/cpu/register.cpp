// The lstm_ext ops on the CPU.

#include "../device_ops.h"
#include "executor.h"
#include "kernels.h"
#include "native.h"

#include <torch/library.h>

#include <string>
#include <tuple>

TORCH_LIBRARY_FRAGMENT(lstm_ext, m) {
  // Which level of the vectorised kernels this CPU runs (kernels.h).
  m.def("cpu_kernels() -> str", [] { return std::string(lstm_ext::cpu::kernels_level()); });
  // Whether bfloat16/float16 layers run their products natively here now
  // (native.h).
  m.def("cpu_native(ScalarType dtype) -> bool", [](c10::ScalarType dtype) {
    return lstm_ext::cpu::runs_native(dtype);
  });
  // The process's choice for a 16-bit dtype (native.h): native or not, on AMX
  // tiles or not, and why. Needs oneDNN enabled (it asks oneDNN's ISA).
  m.def("cpu_native_choice(ScalarType dtype) -> (bool, bool, str)", [](c10::ScalarType dtype) {
    const auto& choice = lstm_ext::cpu::native_choice(dtype);
    return std::make_tuple(choice.on, choice.amx, choice.why);
  });
}

TORCH_LIBRARY_IMPL(lstm_ext, CPU, m) {
  lstm_ext::DeviceOps<lstm_ext::cpu::Executor, c10::DeviceType::CPU>::register_kernels(m);
}
