// Ops for the tests only: switches of the CPU path, and its products alone.

#include "../layer.h"
#include "brgemm_pairs.h"
#include "executor.h"
#include "native.h"
#include "profile.h"

#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <optional>
#include <string>

namespace {

using lstm_ext::ptr;
using lstm_ext::cpu::Executor;

template <typename T>
void raw_brgemm(int64_t m, int64_t n, int64_t k, const at::Tensor& a, const at::Tensor& b,
                at::Tensor& c, bool accumulate) {
  if constexpr (lstm_ext::is_reduced_precision_v<T>) {
    TORCH_CHECK(n <= lstm_ext::cpu::kPanel, "_cpu_product: brgemm takes one panel");
    const at::Tensor pairs = lstm_ext::cpu::vnni_panels(b);
    lstm_ext::cpu::brgemm_pairs(m, n, k, ptr<T>(a), k, ptr<T>(pairs), n, ptr<float>(c), n,
                                accumulate);
  } else {
    TORCH_CHECK(false, "_cpu_product: brgemm is for bfloat16 and float16");
  }
}

// C = A B, or C + A B when C is given, through one of the CPU's products for
// A's dtype, on the operands its executor gives them: "step" and "sequence"
// (gemm_serial, gemm_parallel) with B laid out as a weight, "weight"
// (gemm_tn_parallel: A given as (k, m)), "brgemm" (brgemm_pairs itself, with k
// as given and B in pairs: one panel wide at most). C is in the products'
// math type. Without `scoped`, the product leaves ATen's tile state as it
// is, as a library that never releases it would. The product runs `repeat`
// times on the same operands (C, when given, gains A B each time): the
// difference of two repeat counts times the product alone, without B's
// layout (benchmarks/phases.py).
at::Tensor product(const at::Tensor& a, const at::Tensor& b, const std::string& kind,
                   const std::optional<at::Tensor>& c_in, bool scoped, int64_t repeat) {
  TORCH_CHECK(repeat >= 1, "_cpu_product: repeat must be positive, got ", repeat);
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && a.scalar_type() == b.scalar_type() &&
                  a.device().is_cpu() && b.device().is_cpu(),
              "_cpu_product: two CPU matrices of one dtype");
  const at::Tensor A = a.contiguous(), B = b.contiguous();
  const bool tn = kind == "weight";
  const int64_t m = A.size(tn ? 1 : 0), k = A.size(tn ? 0 : 1), n = B.size(1);
  TORCH_CHECK(B.size(0) == k, "_cpu_product: A and B do not chain");
  const bool accumulate = c_in.has_value();
  at::Tensor c;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, A.scalar_type(), "_cpu_product", [&] {
    using Ex = Executor<scalar_t>;
    using math_t = typename Ex::math_t;
    const Ex ex;
    std::optional<lstm_ext::cpu::TileScope<scalar_t>> tiles;
    if (scoped) tiles.emplace();
    const auto math = c10::CppTypeToScalarType<math_t>::value;
    c = accumulate ? c_in->to(math, false, true, at::MemoryFormat::Contiguous)
                   : at::empty({m, n}, A.options().dtype(math));
    TORCH_CHECK(c.sizes() == at::IntArrayRef({m, n}), "_cpu_product: C is not (m, n)");
    if (kind == "brgemm") {
      TORCH_CHECK(repeat == 1, "_cpu_product: brgemm runs once");
      return raw_brgemm<scalar_t>(m, n, k, A, B, c, accumulate);
    }
    TORCH_CHECK(kind == "weight" || kind == "step" || kind == "sequence",
                "_cpu_product: unknown kind ", kind);
    const at::Tensor laid = tn ? B : ex.weights(B, lstm_ext::Gates::none);
    const scalar_t* b_ptr = ptr<scalar_t>(laid);
    math_t* c_ptr = ptr<math_t>(c);
    for (int64_t i = 0; i < repeat; ++i) {
      if (tn) {
        ex.weight_gemm(m, n, k, ptr<scalar_t>(A), m, b_ptr, n, c_ptr, n, accumulate);
      } else if (kind == "step") {
        ex.step_gemm(m, n, k, ptr<scalar_t>(A), k, ex.column(b_ptr, k, 0), n, c_ptr, n,
                     accumulate);
      } else {
        ex.sequence_gemm(m, n, k, ptr<scalar_t>(A), k, b_ptr, c_ptr, n, accumulate);
      }
    }
  });
  return c;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(lstm_ext, m) {
  // Forces how the CPU shares a layer's steps between threads (executor.h;
  // -1: by the shape, 0: by sequences, 1: by hidden units) and returns the
  // previous setting.
  m.def("_cpu_split(int choice) -> int", [](int64_t choice) -> int64_t {
    return lstm_ext::cpu::forced_split.exchange(static_cast<int>(choice));
  });
  // Turns the native 16-bit path off (native.h); returns the previous setting.
  m.def("_cpu_native_off(bool off) -> bool",
        [](bool off) { return lstm_ext::cpu::exchange_native_off(off); });
  // Whether oneDNN's brgemm for dtype takes B in pairs here (native.h).
  m.def("_cpu_pairs_kernel(ScalarType dtype) -> bool",
        [](c10::ScalarType dtype) { return lstm_ext::cpu::pairs_kernel(dtype); });
  m.def(
      "_cpu_product(Tensor a, Tensor b, str kind, Tensor? c=None, bool scoped=True, "
      "int repeat=1) -> Tensor",
      &product);
  // Turns the profile of profile.h on or off; returns the kinds of work and,
  // per kind, the nanoseconds, calls and flops counted since the last call.
  m.def("_cpu_profile(bool on) -> (str[], Tensor)", [](bool on) {
    using lstm_ext::cpu::Work;
    auto& p = lstm_ext::cpu::profile();
    p.on.store(on);
    const int kinds = static_cast<int>(Work::count);
    at::Tensor counts = at::empty({kinds, 3}, at::kLong);
    for (int w = 0; w < kinds; ++w) {
      counts[w][0] = p.ns[w].exchange(0);
      counts[w][1] = p.calls[w].exchange(0);
      counts[w][2] = p.flops[w].exchange(0);
    }
    const auto& names = lstm_ext::cpu::kWorkNames;
    return std::make_tuple(std::vector<std::string>(names.begin(), names.end()), counts);
  });
}
