// bfloat16/float16 operands as oneDNN's brgemm takes them (brgemm_pairs.h):
// B in VNNI pairs (two consecutive k of a column side by side, k rounded up
// to even with a zero row), and the one checked call into brgemm.

#include "brgemm_pairs.h"

#include "native.h"
#include "tiles.h"

#include <ATen/Dispatch.h>
#include <ATen/native/CPUBlas.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstdint>

namespace lstm_ext::cpu {

template <typename T, typename>
void to_pairs(const T* b, int64_t ldb, int64_t k, int64_t n, int64_t p0, int64_t p1, T* dst) {
  // On the bits, which the compiler vectorises.
  static_assert(sizeof(T) == sizeof(uint16_t));
  const auto* from = reinterpret_cast<const uint16_t*>(b);
  auto* to = reinterpret_cast<uint16_t*>(dst);
  for (int64_t p = p0; p < p1; p += 2) {
    uint16_t* pair = to + (p - p0) * n;
    const uint16_t* first = from + p * ldb;
    if (p + 1 < k) {
      const uint16_t* second = first + ldb;
      for (int64_t c = 0; c < n; ++c) {
        pair[2 * c] = first[c];
        pair[2 * c + 1] = second[c];
      }
    } else {
      for (int64_t c = 0; c < n; ++c) {
        pair[2 * c] = first[c];
        pair[2 * c + 1] = 0;
      }
    }
  }
}

at::Tensor vnni_panels(const at::Tensor& b) {
  const int64_t k = b.size(0), n = b.size(1), kp = vnni_depth(k);
  at::Tensor panels = at::empty({kp * n}, b.options());
  AT_DISPATCH_REDUCED_FLOATING_TYPES(b.scalar_type(), "vnni_panels", [&] {
    const scalar_t* from = b.const_data_ptr<scalar_t>();
    scalar_t* dst = panels.data_ptr<scalar_t>();
    for_each_panel(n, k * n * 2, [&](int64_t j, int64_t width) {
      to_pairs(from + j, n, k, width, 0, kp, dst + kp * j);
    });
  });
  return panels;
}

template <typename T, typename>
void brgemm_pairs(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b_pairs,
                  int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  constexpr auto dtype = c10::CppTypeToScalarType<T>::value;
  TORCH_CHECK(pairs_kernel(dtype), "lstm_ext: a ", dtype, " product with B in VNNI pairs, "
              "which oneDNN's brgemm on this CPU does not take (python -m lstm_ext.check "
              "says why)");
  TORCH_CHECK(m > 0 && n > 0 && k > 0 && k % 2 == 0, "lstm_ext: a ", dtype, " brgemm needs "
              "m and n positive and k even and positive (B's pairs; AMX takes k in pairs), "
              "got m=", m, " n=", n, " k=", k);
  TORCH_CHECK(lda >= k && ldb >= n && ldc >= n, "lstm_ext: a ", dtype, " brgemm's leading "
              "dimensions must hold a row: lda=", lda, " (k=", k, "), ldb=", ldb, " and ldc=",
              ldc, " (n=", n, ")");
  at::native::cpublas::brgemm(m, n, k, lda, ldb, ldc, accumulate, a, b_pairs, c);
}

void release_tiles() { at::native::cpublas::brgemm_release(); }

template <typename T, typename>
void pairs_product(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b_pairs,
                   int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  const int64_t even = k / 2 * 2;
  if (even > 0) brgemm_pairs(m, n, even, a, lda, b_pairs, ldb, c, ldc, accumulate);
  if (even == k) return;
  const T* last = b_pairs + even * ldb;  // row k - 1: the first of each pair
  const bool add = accumulate || even > 0;
  for (int64_t i = 0; i < m; ++i) {
    const float a_i = a[i * lda + even];
    float* c_i = c + i * ldc;
    for (int64_t j = 0; j < n; ++j) {
      const float product = a_i * float(last[2 * j]);
      c_i[j] = add ? c_i[j] + product : product;
    }
  }
}

#define LSTM_EXT_INSTANTIATE(T)                                                               \
  template void to_pairs<T>(const T*, int64_t, int64_t, int64_t, int64_t, int64_t, T*);       \
  template void brgemm_pairs<T>(int64_t, int64_t, int64_t, const T*, int64_t, const T*, int64_t, \
                                float*, int64_t, bool);                                        \
  template void pairs_product<T>(int64_t, int64_t, int64_t, const T*, int64_t, const T*,        \
                                 int64_t, float*, int64_t, bool);
LSTM_EXT_INSTANTIATE(c10::BFloat16)
LSTM_EXT_INSTANTIATE(c10::Half)
#undef LSTM_EXT_INSTANTIATE

}  // namespace lstm_ext::cpu
