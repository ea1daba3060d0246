#pragma once
// The CPU's vectorised kernels: the cell passes over csrc/cell.h on at::vec
// registers, and register transposes. kernels.cpp is compiled once per
// instruction-set level (on x86-64: DEFAULT, AVX2, AVX512, as ATen's own
// kernels), each object with its level's flags and in its own namespace;
// kernels() chooses one level, once: the best the CPU has as ATen reports it
// (at::get_cpu_capability(), which ATEN_CPU_CAPABILITY=avx2 or default
// lowers). Nothing else in the extension is compiled with vector-ISA flags, so
// one build runs on every CPU torch runs on.

#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <type_traits>

namespace lstm_ext::cpu {

// Rows [r0, r1) and hidden units [u0, u1) of one step, with the semantics of
// the executor's passes (executor.h); gates in the gate order of `group`.
// math_t and scalar_t as in the executor: the math type, and the storage
// type (float16, bfloat16, or math_t itself) of what the passes write for a
// product to read (h_t, the gate gradients) or for backward to keep (the
// activated gates).
template <typename math_t, typename scalar_t = math_t>
struct CellKernels {
  void (*forward)(int64_t r0, int64_t r1, int64_t u0, int64_t u1, int64_t carried, int64_t H,
                  int64_t group, const math_t* gates, scalar_t* activated, const math_t* bias,
                  const math_t* c_prev, const math_t* c0, const math_t* zone,
                  math_t* c_fresh, math_t* c_out, scalar_t* h_out);
  void (*backward)(int64_t r0, int64_t r1, int64_t u0, int64_t u1, int64_t carried, int64_t H,
                   int64_t group, const scalar_t* gates, const math_t* cells,
                   const math_t* c_prev, const math_t* c0, const math_t* zone,
                   const math_t* dh, const math_t* dh_extra, math_t* dc_state,
                   scalar_t* dgates, math_t* dgates_wide, scalar_t* h_out);
  void (*tangent)(int64_t r0, int64_t r1, int64_t u0, int64_t u1, int64_t carried, int64_t H,
                  int64_t group, const math_t* gates, const math_t* cells,
                  const math_t* c_prev, const math_t* c0, const math_t* t_bias,
                  const math_t* t_gates, const math_t* t_c_prev, const math_t* t_c0,
                  math_t* t_c_out, math_t* t_h_out, math_t* h_out);
  // dst = a + b, n elements.
  void (*add)(scalar_t* dst, const math_t* a, const math_t* b, int64_t n);
  // The LayerNorm variant's passes: rows normalised, h from LN(c̃), and
  // their backward (csrc/cell.h; executor.h says what each does).
  void (*layer_norm)(math_t* dst, const math_t* src, int64_t rows, int64_t width,
                     const math_t* gamma, int64_t c0, int64_t c1, bool accumulate,
                     math_t* rstd_out);
  void (*layer_norm_backward)(scalar_t* dst, const math_t* dy, const math_t* x_hat,
                              const math_t* rstd, const math_t* gamma, int64_t rows,
                              int64_t width, int64_t c0, int64_t c1);
  void (*output_layer_norm)(int64_t r0, int64_t r1, int64_t u0, int64_t u1, int64_t H,
                            int64_t group, const scalar_t* activated, const math_t* c,
                            const math_t* gamma, const math_t* beta, scalar_t* h_out);
  void (*backward_output_layer_norm)(int64_t r0, int64_t r1, int64_t u0, int64_t u1, int64_t H,
                                     int64_t group, const scalar_t* gates, const math_t* c,
                                     const math_t* gamma, const math_t* beta, const math_t* dh,
                                     const math_t* dh_extra, scalar_t* dgates,
                                     math_t* dgates_wide, math_t* dc_hat, scalar_t* h_out);
  void (*backward_state_layer_norm)(int64_t r0, int64_t r1, int64_t u0, int64_t u1,
                                    int64_t carried, int64_t H, int64_t group,
                                    const scalar_t* gates, const math_t* c, const math_t* c_prev,
                                    const math_t* c0, const math_t* zone, const math_t* gamma,
                                    const math_t* dc_hat, math_t* dc_state, scalar_t* dgates,
                                    math_t* dgates_wide, math_t* dgamma);
};

// The most rows few_rows_gemm takes.
constexpr int64_t kFewRows = 4;

struct Kernels {
  CellKernels<float> f;
  CellKernels<double> d;
  // For the bf16 and float16 products of the native path (native.h).
  CellKernels<float, c10::BFloat16> bf16;
  CellKernels<float, c10::Half> f16;
  // dst[c][r] = src[r][c] for a rows x cols block, per element size.
  template <typename T>
  using Transpose = void (*)(const T* src, int64_t ld_src, int64_t rows, int64_t cols, T* dst,
                             int64_t ld_dst);
  Transpose<float> transpose_f32;
  Transpose<c10::BFloat16> transpose_bf16;
  Transpose<c10::Half> transpose_f16;
  // C[m,n] (+)= A[m,k] B[k,n] for m <= kFewRows, B in column panels of `panel`
  // columns (gemm.h): products too small for brgemm's call to pay.
  void (*few_rows_gemm)(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                        const float* b_panels, int64_t panel, float* c, int64_t ldc,
                        bool accumulate);

  template <typename T>
  void transpose(const T* src, int64_t ld_src, int64_t rows, int64_t cols, T* dst,
                 int64_t ld_dst) const {
    if constexpr (std::is_same_v<T, float>) {
      transpose_f32(src, ld_src, rows, cols, dst, ld_dst);
    } else if constexpr (std::is_same_v<T, c10::BFloat16>) {
      transpose_bf16(src, ld_src, rows, cols, dst, ld_dst);
    } else {
      transpose_f16(src, ld_src, rows, cols, dst, ld_dst);
    }
  }

  // The passes for products of storage type scalar_t.
  template <typename scalar_t>
  const auto& cells() const {
    if constexpr (std::is_same_v<scalar_t, float>) {
      return f;
    } else if constexpr (std::is_same_v<scalar_t, double>) {
      return d;
    } else if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
      return bf16;
    } else {
      return f16;
    }
  }
};

// The level in use, and its name as ATEN_CPU_CAPABILITY spells it
// ("default", "avx2", "avx512").
const Kernels& kernels();
const char* kernels_level();

}  // namespace lstm_ext::cpu
