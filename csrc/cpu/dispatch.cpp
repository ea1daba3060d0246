// Chooses the level of the CPU kernels (kernels.h) once, as ATen chooses its
// own, and with it whether bfloat16 and float16 run their products natively.

#include "kernels.h"

#include <ATen/Context.h>
#include <ATen/Version.h>
#include <c10/util/Exception.h>

#include <atomic>
#include <cstdlib>
#include <string>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#endif

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

// The CPU's dot products of 16-bit floats (CPUID leaf 7): AVX512_BF16 or
// AMX-BF16, AVX512_FP16 or AMX-FP16.
struct DotProducts {
  bool bf16 = false, f16 = false;
};

DotProducts dot_products() {
  DotProducts has;
#if defined(__x86_64__) || defined(_M_X64)
  unsigned a, b, c, d;
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    has.bf16 = d & (1u << 22);  // AMX-BF16
    has.f16 = d & (1u << 23);   // AVX512_FP16
  }
  if (__get_cpuid_count(7, 1, &a, &b, &c, &d)) {
    has.bf16 = has.bf16 || (a & (1u << 5));  // AVX512_BF16
    has.f16 = has.f16 || (a & (1u << 21));   // AMX-FP16
  }
#endif
  return has;
}

std::atomic<bool> native_off{false};

// What the CPU and the environment allow, decided once.
bool native_allowed(c10::ScalarType dtype) {
  static const DotProducts has = [] {
    const char* env = std::getenv("LSTM_EXT_CPU_NATIVE");
    if ((env && std::string(env) == "0") || std::string(kernels_level()) != "avx512") {
      return DotProducts{};
    }
    return dot_products();
  }();
  return dtype == c10::kBFloat16 ? has.bf16 : dtype == c10::kHalf && has.f16;
}

}  // namespace

const Kernels& kernels() { return *level().table; }

const char* kernels_level() { return level().name; }

bool native_products(c10::ScalarType dtype) {
  // oneDNN runs the products: with it turned off (torch.backends.mkldnn), the
  // upcast path.
  return !native_off.load() && native_allowed(dtype) && at::globalContext().userEnabledMkldnn();
}

bool exchange_native_off(bool off) { return native_off.exchange(off); }

}  // namespace lstm_ext::cpu
