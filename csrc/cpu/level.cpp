// Chooses the level of the CPU kernels (kernels.h) once, as ATen chooses its
// own.

#include "kernels.h"

#include <ATen/Version.h>

#include <string>

namespace lstm_ext::cpu {

// One table per level setup.py compiled kernels.cpp for (LSTM_EXT_CPU_AVX2,
// LSTM_EXT_CPU_AVX512 say which, beyond DEFAULT).
namespace DEFAULT {
extern const Kernels table;
}
#if defined(LSTM_EXT_CPU_AVX2)
namespace AVX2 {
extern const Kernels table;
}
#endif
#if defined(LSTM_EXT_CPU_AVX512)
namespace AVX512 {
extern const Kernels table;
}
#endif

namespace {

struct Level {
  const Kernels* table;
  const char* name;
};

// The best level both this build and ATen allow: the CPU's capability as
// ATen reads it, lowered by ATEN_CPU_CAPABILITY ("DEFAULT", "AVX2", "AVX512").
Level choose() {
  const std::string capability = at::get_cpu_capability();
  // Names that extend a level ("AVX512_...") have at least its instructions.
  [[maybe_unused]] const auto at_least = [&](const char* level) {
    return capability.rfind(level, 0) == 0;
  };
#if defined(LSTM_EXT_CPU_AVX512)
  if (at_least("AVX512")) return {&AVX512::table, "avx512"};
#endif
#if defined(LSTM_EXT_CPU_AVX2)
  if (at_least("AVX2") || at_least("AVX512")) return {&AVX2::table, "avx2"};
#endif
  return {&DEFAULT::table, "default"};
}

const Level& level() {
  static const Level chosen = choose();
  return chosen;
}

}  // namespace

const Kernels& kernels() { return *level().table; }

const char* kernels_level() { return level().name; }

}  // namespace lstm_ext::cpu
