// The choice of the native path for bfloat16 and float16 (native.h).

#include "native.h"

#include "brgemm_pairs.h"
#include "kernels.h"

#include <ATen/Context.h>
#include <ATen/native/CPUBlas.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdlib>
#include <limits>
#include <sstream>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#endif

namespace lstm_ext::cpu {
namespace {

// The CPU's dot products of 16-bit floats (CPUID leaf 7). The OS enables
// their registers: ATen's AVX512 level, required first, checks that for
// AVX-512, and oneDNN asks for AMX's itself (could_pack is false without).
struct DotProducts {
  bool avx512_bf16 = false, amx_bf16 = false, avx512_fp16 = false, amx_fp16 = false;
};

DotProducts dot_products() {
  DotProducts has;
#if defined(__x86_64__) || defined(_M_X64)
  unsigned a, b, c, d;
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    has.amx_bf16 = d & (1u << 22);
    has.avx512_fp16 = d & (1u << 23);
  }
  if (__get_cpuid_count(7, 1, &a, &b, &c, &d)) {
    has.avx512_bf16 = a & (1u << 5);
    has.amx_fp16 = a & (1u << 21);
  }
#endif
  return has;
}

// oneDNN's ISA ceiling as oneDNN reads it: ONEDNN_MAX_CPU_ISA, else
// DNNL_MAX_CPU_ISA, in any case; empty when neither is set.
std::string isa_ceiling() {
  for (const char* name : {"ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"}) {
    const char* value = std::getenv(name);
    if (value == nullptr || *value == '\0') continue;
    std::string ceiling(value);
    std::transform(ceiling.begin(), ceiling.end(), ceiling.begin(),
                   [](unsigned char ch) { return std::toupper(ch); });
    return ceiling;
  }
  return "";
}

// Whether the ceiling leaves oneDNN the AVX512_CORE_BF16 level: every name
// below it in oneDNN's order does not (under those, the bf16 brgemm fails to
// generate, measured); any other, unknown ones included (oneDNN ignores
// them), does.
bool ceiling_leaves_bf16(const std::string& ceiling) {
  static const std::vector<std::string> below = {
      "SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"};
  return std::find(below.begin(), below.end(), ceiling) == below.end();
}

struct Kernel {
  bool pairs = false, amx = false;
  std::string why;
};

// make(dtype), made once per process for each 16-bit dtype (make: a lambda,
// whose type is its own, and so are these statics).
template <typename Make>
const auto& once_per_dtype(c10::ScalarType dtype, const Make& make) {
  using T = decltype(make(dtype));
  if (dtype == at::kBFloat16) {
    static const T bf16 = make(at::kBFloat16);
    return bf16;
  }
  static const T f16 = make(at::kHalf);
  return f16;
}

// Whether oneDNN's brgemm for dtype runs here on 16-bit dot products with B
// in pairs (native.h: pairs_kernel), and why (not). could_pack answers for
// oneDNN's effective ISA, and false while oneDNN is turned off: callers ask
// only while it is on.
Kernel kernel(c10::ScalarType dtype) {
  const std::string level = kernels_level();
  if (level != "avx512") {
    return {false, false, "the CPU kernels run at the " + level +
                              " level (the CPU's best, or ATEN_CPU_CAPABILITY), not avx512"};
  }
  const DotProducts has = dot_products();
  if (dtype == at::kBFloat16) {
    if (!has.avx512_bf16 && !has.amx_bf16) {
      return {false, false, "the CPU has no bfloat16 dot products (AVX512_BF16, AMX-BF16)"};
    }
    const std::string ceiling = isa_ceiling();
    if (!ceiling_leaves_bf16(ceiling)) {
      return {false, false,
              "ONEDNN_MAX_CPU_ISA=" + ceiling + " keeps oneDNN below AVX512_CORE_BF16"};
    }
    const bool amx = at::native::cpublas::could_pack(dtype);
    return {true, amx, amx ? "AMX-BF16 tiles" : "AVX512_BF16 dot products"};
  }
  if (at::native::cpublas::could_pack(dtype)) return {true, true, "AMX-FP16 tiles"};
  if (has.avx512_fp16 || has.amx_fp16) {
    return {false, false,
            "oneDNN's float16 brgemm here (AVX512_FP16 without AMX-FP16, or AMX-FP16 under "
            "ONEDNN_MAX_CPU_ISA) takes B unpaired; the native path lays B out in pairs only"};
  }
  return {false, false, "the CPU has no float16 dot products (AVX512_FP16, AMX-FP16)"};
}

const Kernel& kernel_once(c10::ScalarType dtype) {
  return once_per_dtype(dtype, [](c10::ScalarType d) { return kernel(d); });
}

std::string native_setting() {
  const char* env = std::getenv("LSTM_EXT_CPU_NATIVE");
  return env ? env : "";
}

// Whether LSTM_EXT_CPU_NATIVE allows dtype's native path: unset, empty or
// "1", bfloat16's alone; "0", none; otherwise the comma-separated dtypes.
bool allowed_by_environment(c10::ScalarType dtype) {
  const std::string value = native_setting();
  if (value.empty() || value == "1") return dtype == at::kBFloat16;
  if (value == "0") return false;
  bool allowed = false;
  std::stringstream list(value);
  for (std::string item; std::getline(list, item, ',');) {
    TORCH_CHECK_VALUE(item == "bfloat16" || item == "float16",
                      "LSTM_EXT_CPU_NATIVE: expected 0, 1, or a comma-separated list of "
                      "bfloat16 and float16, got \"", value, "\"");
    allowed = allowed || item == (dtype == at::kBFloat16 ? "bfloat16" : "float16");
  }
  return allowed;
}

// A product through brgemm_pairs whose result is exact: small integers,
// exact in either 16-bit type and in float, with m, n and k such that a
// kernel taking B in another layout, or another K, gives other numbers, into
// C holding NaN (overwritten, not added to); then the same again,
// accumulated. Empty if it came out exact, else what went wrong (oneDNN's
// failures to generate a kernel are std::exceptions of its own).
template <typename T>
std::string probe() {
  constexpr int64_t m = 3, n = 20, k = 6;
  const auto value = [](int64_t i, int64_t j) { return float((3 * i + 5 * j + 1) % 7 - 3); };
  std::vector<T> a(m * k), b_pairs(k * n);
  std::vector<float> expected(m * n), c(m * n, std::numeric_limits<float>::quiet_NaN());
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t p = 0; p < k; ++p) a[i * k + p] = T(value(i, p));
  }
  for (int64_t p = 0; p < k; ++p) {
    for (int64_t j = 0; j < n; ++j) b_pairs[p / 2 * 2 * n + 2 * j + p % 2] = T(value(j, p + 2));
  }
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      for (int64_t p = 0; p < k; ++p) expected[i * n + j] += value(i, p) * value(j, p + 2);
    }
  }
  try {
    const TileScope<T> tiles;
    brgemm_pairs(m, n, k, a.data(), k, b_pairs.data(), n, c.data(), n, false);
    if (c != expected) return "gave wrong numbers";
    brgemm_pairs(m, n, k, a.data(), k, b_pairs.data(), n, c.data(), n, true);
    for (float& e : expected) e *= 2;
    if (c != expected) return "gave wrong numbers when accumulating";
  } catch (const c10::Error& e) {
    return std::string("failed: ") + e.what_without_backtrace();
  } catch (const std::exception& e) {
    return std::string("failed: ") + e.what();
  }
  return "";
}

NativeChoice choose(c10::ScalarType dtype) {
  // First, so that a malformed setting is an error on every machine.
  const bool allowed = allowed_by_environment(dtype);
  const Kernel& k = kernel_once(dtype);
  if (!k.pairs) return {false, false, k.why};
  if (!allowed) {
    const std::string value = native_setting();
    if (dtype == at::kHalf && value != "0") {
      return {false, k.amx,
              "no machine of ours has run float16's native path (AMX-FP16) yet: "
              "LSTM_EXT_CPU_NATIVE=bfloat16,float16 turns it on"};
    }
    return {false, k.amx, "LSTM_EXT_CPU_NATIVE=" + value + " leaves it off"};
  }
  const std::string failed =
      dtype == at::kBFloat16 ? probe<c10::BFloat16>() : probe<c10::Half>();
  if (!failed.empty()) return {false, k.amx, "a probe product through oneDNN's brgemm " + failed};
  return {true, k.amx, k.why};
}

std::atomic<bool> native_off{false};

}  // namespace

bool pairs_kernel(c10::ScalarType dtype) {
  // Without oneDNN, ATen's brgemm takes no pairs at all.
  return at::globalContext().userEnabledMkldnn() && kernel_once(dtype).pairs;
}

const NativeChoice& native_choice(c10::ScalarType dtype) {
  TORCH_CHECK(dtype == at::kBFloat16 || dtype == at::kHalf,
              "lstm_ext: the native path is for bfloat16 and float16, not ", dtype);
  TORCH_CHECK(at::globalContext().userEnabledMkldnn(),
              "lstm_ext: the native path's choice asks oneDNN, which is turned off "
              "(torch.backends.mkldnn)");
  return once_per_dtype(dtype, [](c10::ScalarType d) { return choose(d); });
}

bool runs_native(c10::ScalarType dtype) {
  return (dtype == at::kBFloat16 || dtype == at::kHalf) && !native_off.load() &&
         at::globalContext().userEnabledMkldnn() && native_choice(dtype).on;
}

bool exchange_native_off(bool off) { return native_off.exchange(off); }

}  // namespace lstm_ext::cpu
