// The vectorised CPU kernels of one instruction-set level (kernels.h).
// setup.py compiles this file once per level, with the level's flags and
// CPU_CAPABILITY naming it (DEFAULT, AVX2, AVX512), as ATen compiles its own
// kernels: at::vec's types then live in at::vec::CPU_CAPABILITY and this
// file's in lstm_ext::cpu::CPU_CAPABILITY, so the levels never mix.

#include "kernels.h"

#include "../cell.h"

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/cpu/vec/vec_convert.h>

#include <algorithm>
#include <array>
#include <numeric>
#include <type_traits>

namespace lstm_ext::cpu::CPU_CAPABILITY {
namespace {

// Stores the first n values of v at dst, rounded to scalar_t when that is
// narrower.
template <typename scalar_t, typename Vec>
void store(const Vec& v, scalar_t* dst, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, typename Vec::value_type>) {
    v.store(dst, n);
  } else {
    at::vec::convert_from_float<scalar_t>(v, v).store(dst, n);
  }
}

// The first n values at src, widened to float when they are narrower.
template <typename Vec, typename in_t>
Vec load(const in_t* src, int64_t n) {
  if constexpr (std::is_same_v<in_t, typename Vec::value_type>) {
    return Vec::loadu(src, n);
  } else {
    return std::get<0>(at::vec::convert_to_float<in_t>(at::vec::Vectorized<in_t>::loadu(src, n)));
  }
}

template <typename math_t, typename scalar_t = math_t>
struct Cells {
  using Vec = at::vec::Vectorized<math_t>;
  // Results rounded to 16 bits take the cheaper activations (cell.h).
  using Act = std::conditional_t<std::is_same_v<math_t, scalar_t>, Activations<Vec>,
                                 RoundedActivations>;
  // LayerNorm's tanh of LN(c̃), whatever the results' width (cell.h).
  using NormAct = PreciseActivations<Vec>;

  static void forward(int64_t r0, int64_t r1, int64_t u0, int64_t u1, int64_t carried, int64_t H,
                      int64_t group, const math_t* gates, scalar_t* activated,
                      const math_t* bias, const math_t* c_prev, const math_t* c0,
                      const math_t* zone, math_t* c_fresh, math_t* c_out, scalar_t* h_out) {
    for_each_chunk(r0, r1, u0, u1, H, group, [=](const Chunk& k) {
      const int64_t at = k.row * 4 * H + k.column;
      auto [i, f, gg, o] = load_gates(gates + at, k, bias, H);
      const int64_t e = k.row * H + k.unit;
      // c_out may be c_prev: read before written.
      const Vec prev = Vec::loadu((k.row < carried ? c_prev : c0) + e, k.n);
      Vec c, h;
      if (zone) {
        Vec fresh;
        lstm_ext::cell_forward_zoneout<Vec, Act>(i, f, gg, o, prev, Vec::loadu(zone + e, k.n),
                                                 fresh, c, h);
        if (c_fresh) fresh.store(c_fresh + e, k.n);
      } else {
        lstm_ext::cell_forward<Vec, Act>(i, f, gg, o, prev, c, h);
      }
      if (activated) {
        scalar_t* a = activated + at;
        store(i, a, k.n);
        store(f, a + k.stride, k.n);
        store(gg, a + 2 * k.stride, k.n);
        store(o, a + 3 * k.stride, k.n);
      }
      c.store(c_out + e, k.n);
      store(h, h_out + e, k.n);
    });
  }

  static void backward(int64_t r0, int64_t r1, int64_t u0, int64_t u1, int64_t carried,
                       int64_t H, int64_t group, const scalar_t* gates, const math_t* cells,
                       const math_t* c_prev, const math_t* c0, const math_t* zone,
                       const math_t* dh, const math_t* dh_extra, math_t* dc_state,
                       scalar_t* dgates, math_t* dgates_wide, scalar_t* h_out) {
    for_each_chunk(r0, r1, u0, u1, H, group, [=](const Chunk& k) {
      const auto [i, f, g, o] = load_gates(gates + k.row * 4 * H + k.column, k, nullptr, H);
      const int64_t e = k.row * H + k.unit;
      Vec dh_v = Vec::loadu(dh + e, k.n);
      if (dh_extra) dh_v = dh_v + Vec::loadu(dh_extra + e, k.n);
      const Vec c = Vec::loadu(cells + e, k.n);
      const Vec prev = Vec::loadu((k.row < carried ? c_prev : c0) + e, k.n);
      const Vec dc = Vec::loadu(dc_state + e, k.n);
      Vec di, df, dg, do_, dc_prev, h;
      if (zone) {
        lstm_ext::cell_backward_zoneout<Vec, Act>(i, f, g, o, c, prev, Vec::loadu(zone + e, k.n),
                                                  dh_v, dc, di, df, dg, do_, dc_prev, h);
      } else {
        lstm_ext::cell_backward<Vec, Act>(i, f, g, o, c, prev, dh_v, dc, di, df, dg, do_,
                                          dc_prev, h);
      }
      const int64_t at = k.row * 4 * H + k.column;
      store(di, dgates + at, k.n);
      store(df, dgates + at + k.stride, k.n);
      store(dg, dgates + at + 2 * k.stride, k.n);
      store(do_, dgates + at + 3 * k.stride, k.n);
      if (dgates_wide) {
        di.store(dgates_wide + at, k.n);
        df.store(dgates_wide + at + k.stride, k.n);
        dg.store(dgates_wide + at + 2 * k.stride, k.n);
        do_.store(dgates_wide + at + 3 * k.stride, k.n);
      }
      dc_prev.store(dc_state + e, k.n);
      if (h_out) store(h, h_out + e, k.n);
    });
  }

  static void tangent(int64_t r0, int64_t r1, int64_t u0, int64_t u1, int64_t carried, int64_t H,
                      int64_t group, const math_t* gates, const math_t* cells,
                      const math_t* c_prev, const math_t* c0, const math_t* t_bias,
                      const math_t* t_gates, const math_t* t_c_prev, const math_t* t_c0,
                      math_t* t_c_out, math_t* t_h_out, math_t* h_out) {
    for_each_chunk(r0, r1, u0, u1, H, group, [=](const Chunk& k) {
      const int64_t at = k.row * 4 * H + k.column;
      const auto [i, f, g, o] = load_gates(gates + at, k, nullptr, H);
      const auto [t_i, t_f, t_g, t_o] = load_gates(t_gates + at, k, t_bias, H);
      const int64_t e = k.row * H + k.unit;
      const bool carried_row = k.row < carried;
      Vec t_c, t_h, h;
      lstm_ext::cell_tangent<Vec, Act>(i, f, g, o, Vec::loadu(cells + e, k.n),
                             Vec::loadu((carried_row ? c_prev : c0) + e, k.n), t_i, t_f, t_g,
                             t_o, Vec::loadu((carried_row ? t_c_prev : t_c0) + e, k.n), t_c,
                             t_h, h);
      t_c.store(t_c_out + e, k.n);
      t_h.store(t_h_out + e, k.n);
      if (h_out) h.store(h_out + e, k.n);
    });
  }

  static void add(scalar_t* dst, const math_t* a, const math_t* b, int64_t n) {
    if constexpr (std::is_same_v<scalar_t, math_t>) {
      at::vec::map2([](Vec u, Vec v) { return u + v; }, dst, a, b, n);
    } else {
      for (int64_t i = 0; i < n; i += Vec::size()) {
        const int64_t len = std::min<int64_t>(Vec::size(), n - i);
        store(Vec::loadu(a + i, len) + Vec::loadu(b + i, len), dst + i, len);
      }
    }
  }

  static void layer_norm(math_t* dst, const math_t* src, int64_t rows, int64_t width,
                         const math_t* gamma, int64_t c0, int64_t c1, bool accumulate,
                         math_t* rstd_out) {
    for (int64_t r = 0; r < rows; ++r) {
      const math_t* s = src + r * width;
      math_t* d = dst + r * width;
      const Stats st = row_stats(s, width);
      if (rstd_out) rstd_out[r] = st.rstd;
      for_each_vector(c0, c1, [&](int64_t c, int64_t n) {
        Vec v = lstm_ext::layer_norm_normalised(Vec::loadu(s + c, n), Vec(st.mean), Vec(st.rstd));
        if (gamma) v = v * Vec::loadu(gamma + c, n);
        if (accumulate) v = v + Vec::loadu(d + c, n);
        v.store(d + c, n);
      });
    }
  }

  static void layer_norm_backward(scalar_t* dst, const math_t* dy, const math_t* x_hat,
                                  const math_t* rstd, const math_t* gamma, int64_t rows,
                                  int64_t width, int64_t c0, int64_t c1) {
    for (int64_t r = 0; r < rows; ++r) {
      const math_t* g = dy + r * width;
      const math_t* v = x_hat + r * width;
      const auto dy_gamma = [&](int64_t c, int64_t n) {
        return Vec::loadu(g + c, n) * Vec::loadu(gamma + c, n);
      };
      const Vec m1(lstm_ext::layer_norm_mean(row_sum(width, dy_gamma), width));
      const Vec m2(lstm_ext::layer_norm_mean(
          row_sum(width, [&](int64_t c, int64_t n) { return dy_gamma(c, n) * Vec::loadu(v + c, n); }),
          width));
      for_each_vector(c0, c1, [&](int64_t c, int64_t n) {
        store(lstm_ext::layer_norm_backward(dy_gamma(c, n), Vec::loadu(v + c, n), m1, m2,
                                            Vec(rstd[r])),
              dst + r * width + c, n);
      });
    }
  }

  static void output_layer_norm(int64_t r0, int64_t r1, int64_t u0, int64_t u1, int64_t H,
                                int64_t group, const scalar_t* activated, const math_t* c,
                                const math_t* gamma, const math_t* beta, scalar_t* h_out) {
    for (int64_t r = r0; r < r1; ++r) {
      const Stats st = row_stats(c + r * H, H);
      for_each_chunk(r, r + 1, u0, u1, H, group, [&](const Chunk& k) {
        const int64_t e = r * H + k.unit;
        const Vec o = load<Vec>(activated + r * 4 * H + k.column + 3 * k.stride, k.n);
        store(lstm_ext::cell_output_layer_norm<Vec, NormAct>(
                  o, Vec::loadu(c + e, k.n), Vec(st.mean), Vec(st.rstd), Vec::loadu(gamma + k.unit, k.n),
                  Vec::loadu(beta + k.unit, k.n)),
              h_out + e, k.n);
      });
    }
  }

  static void backward_output_layer_norm(int64_t r0, int64_t r1, int64_t u0, int64_t u1,
                                         int64_t H, int64_t group, const scalar_t* gates,
                                         const math_t* c, const math_t* gamma, const math_t* beta,
                                         const math_t* dh, const math_t* dh_extra,
                                         scalar_t* dgates, math_t* dgates_wide, math_t* dc_hat,
                                         scalar_t* h_out) {
    for (int64_t r = r0; r < r1; ++r) {
      const Stats st = row_stats(c + r * H, H);
      for_each_chunk(r, r + 1, u0, u1, H, group, [&](const Chunk& k) {
        const int64_t at = r * 4 * H + k.column + 3 * k.stride, e = r * H + k.unit;
        const Vec t = lstm_ext::cell_tanh_layer_norm<Vec, NormAct>(
            Vec::loadu(c + e, k.n), Vec(st.mean), Vec(st.rstd), Vec::loadu(gamma + k.unit, k.n),
            Vec::loadu(beta + k.unit, k.n));
        Vec dh_v = Vec::loadu(dh + e, k.n);
        if (dh_extra) dh_v = dh_v + Vec::loadu(dh_extra + e, k.n);
        Vec do_, dc, h;
        lstm_ext::cell_backward_output(load<Vec>(gates + at, k.n), t, dh_v, do_, dc, h);
        store(do_, dgates + at, k.n);
        if (dgates_wide) do_.store(dgates_wide + at, k.n);
        dc.store(dc_hat + e, k.n);
        if (h_out) store(h, h_out + e, k.n);
      });
    }
  }

  static void backward_state_layer_norm(int64_t r0, int64_t r1, int64_t u0, int64_t u1,
                                        int64_t carried, int64_t H, int64_t group,
                                        const scalar_t* gates, const math_t* c,
                                        const math_t* c_prev, const math_t* c0,
                                        const math_t* zone, const math_t* gamma,
                                        const math_t* dc_hat, math_t* dc_state, scalar_t* dgates,
                                        math_t* dgates_wide, math_t* dgamma) {
    for (int64_t r = r0; r < r1; ++r) {
      const math_t* c_r = c + r * H;
      const math_t* g_r = dc_hat + r * H;
      const Stats st = row_stats(c_r, H);
      const auto v_hat = [&](int64_t u, int64_t n) {
        return lstm_ext::layer_norm_normalised(Vec::loadu(c_r + u, n), Vec(st.mean), Vec(st.rstd));
      };
      const auto dy_gamma = [&](int64_t u, int64_t n) {
        return Vec::loadu(g_r + u, n) * Vec::loadu(gamma + u, n);
      };
      const Vec m1(lstm_ext::layer_norm_mean(row_sum(H, dy_gamma), H));
      const Vec m2(lstm_ext::layer_norm_mean(
          row_sum(H, [&](int64_t u, int64_t n) { return dy_gamma(u, n) * v_hat(u, n); }), H));
      const math_t* prev = (r < carried ? c_prev : c0) + r * H;
      for_each_chunk(r, r + 1, u0, u1, H, group, [&](const Chunk& k) {
        const int64_t at = r * 4 * H + k.column, e = r * H + k.unit;
        const auto [i, f, g, o] = load_gates(gates + at, k, nullptr, H);
        const Vec x_hat = v_hat(k.unit, k.n);
        Vec d[3], dc_prev;
        lstm_ext::cell_backward_state_layer_norm(
            i, f, g, Vec::loadu(prev + k.unit, k.n), Vec::loadu(dc_state + e, k.n),
            zone != nullptr, zone ? Vec::loadu(zone + e, k.n) : Vec(0), dy_gamma(k.unit, k.n),
            x_hat, m1, m2, Vec(st.rstd), d[0], d[1], d[2], dc_prev);
        dc_prev.store(dc_state + e, k.n);
        for (int64_t q = 0; q < 3; ++q) {
          store(d[q], dgates + at + q * k.stride, k.n);
          if (dgates_wide) d[q].store(dgates_wide + at + q * k.stride, k.n);
        }
        (Vec::loadu(g_r + k.unit, k.n) * x_hat).store(dgamma + e, k.n);
      });
    }
  }

  // Calls fn(c, n) over [c0, c1) a vector (n values from c) at a time.
  template <typename Fn>
  static void for_each_vector(int64_t c0, int64_t c1, const Fn& fn) {
    for (int64_t c = c0; c < c1; c += Vec::size()) fn(c, std::min<int64_t>(Vec::size(), c1 - c));
  }

  // The sum over [0, n) of term(c, n_c), a vector of n_c values from c (its
  // lanes past n_c not counted).
  template <typename Term>
  static math_t row_sum(int64_t n, const Term& term) {
    Vec sum(0);
    for_each_vector(0, n, [&](int64_t c, int64_t k) { sum = sum + Vec::set(Vec(0), term(c, k), k); });
    math_t lanes[Vec::size()];
    sum.store(lanes);
    return std::accumulate(lanes, lanes + Vec::size(), math_t(0));
  }

  // LayerNorm's mean and rstd of n values at v (cell.h), summed in vectors.
  struct Stats {
    math_t mean, rstd;
  };
  static Stats row_stats(const math_t* v, int64_t n) {
    const math_t mean = lstm_ext::layer_norm_mean(
        row_sum(n, [&](int64_t c, int64_t k) { return Vec::loadu(v + c, k); }), n);
    const math_t squares = row_sum(n, [&](int64_t c, int64_t k) {
      const Vec d = Vec::loadu(v + c, k) - Vec(mean);
      return d * d;
    });
    return {mean, lstm_ext::layer_norm_rstd(squares, n)};
  }

  // A vector-wide chunk of one row: units [unit, unit + n), whose gate 0 is
  // at `column` of the row's gates and gate k at column + k * stride.
  struct Chunk {
    int64_t row, unit, n, column, stride;
  };

  // The four gates of a chunk at g (its column), plus the bias's (PyTorch's
  // order, 4H) when it is given.
  template <typename in_t>
  static std::array<Vec, 4> load_gates(const in_t* g, const Chunk& k, const math_t* bias,
                                       int64_t H) {
    std::array<Vec, 4> out;
    for (int64_t q = 0; q < 4; ++q) {
      out[q] = load<Vec>(g + q * k.stride, k.n);
      if (bias) out[q] = out[q] + Vec::loadu(bias + q * H + k.unit, k.n);
    }
    return out;
  }

  // Calls fn(Chunk) over rows [r0, r1) and units [u0, u1) (u0 a multiple of
  // group; u1 too, or H), in the gate order of `group` (layer.h).
  template <typename Fn>
  static void for_each_chunk(int64_t r0, int64_t r1, int64_t u0, int64_t u1, int64_t H,
                             int64_t group, const Fn& fn) {
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t j0 = u0; j0 < u1; j0 += group) {
        const int64_t g = std::min(group, H - j0);
        for (int64_t i = 0; i < g; i += Vec::size()) {
          fn(Chunk{r, j0 + i, std::min<int64_t>(Vec::size(), g - i), 4 * j0 + i, g});
        }
      }
    }
  }

  static constexpr CellKernels<math_t, scalar_t> table{&forward,
                                                        &backward,
                                                        &tangent,
                                                        &add,
                                                        &layer_norm,
                                                        &layer_norm_backward,
                                                        &output_layer_norm,
                                                        &backward_output_layer_norm,
                                                        &backward_state_layer_norm};
};

// Blocks that fill registers: 16 x 16 floats, 32 x 32 16-bit values (AVX-512
// transposes both in registers, AVX2 floats only; the rest is at::vec's loop).
// Partial blocks go in pieces of at most 16 x 16: ATen's masked 16-bit
// transpose computes 1 << M in an int, which overflows for M = 31.
template <typename T>
void transpose(const T* src, int64_t ld_src, int64_t rows, int64_t cols, T* dst,
               int64_t ld_dst) {
  constexpr int64_t B = sizeof(T) == 4 ? 16 : 32, piece = 16;
  for (int64_t r = 0; r < rows; r += B) {
    for (int64_t c = 0; c < cols; c += B) {
      if (r + B <= rows && c + B <= cols) {
        at::vec::transpose_mxn<T, B, B>(src + r * ld_src + c, ld_src, dst + c * ld_dst + r,
                                        ld_dst);
        continue;
      }
      for (int64_t i = r; i < std::min(r + B, rows); i += piece) {
        for (int64_t j = c; j < std::min(c + B, cols); j += piece) {
          at::vec::transpose_mxn<T>(src + i * ld_src + j, ld_src, dst + j * ld_dst + i, ld_dst,
                                    std::min(piece, rows - i), std::min(piece, cols - j));
        }
      }
    }
  }
}

// Rows [0, R) of C against columns [0, NV * V) of one panel: R x NV
// vectors of accumulators in registers, B streamed once.
template <int64_t R, int64_t NV>
void few_rows_tile(int64_t k, const float* a, int64_t lda, const float* b, int64_t panel,
                   float* c, int64_t ldc, bool accumulate) {
  using Vec = at::vec::Vectorized<float>;
  constexpr int64_t V = Vec::size();
  Vec acc[R][NV];
  for (int64_t r = 0; r < R; ++r) {
    for (int64_t v = 0; v < NV; ++v) {
      acc[r][v] = accumulate ? Vec::loadu(c + r * ldc + v * V) : Vec(0.f);
    }
  }
  for (int64_t p = 0; p < k; ++p) {
    Vec bv[NV];
    for (int64_t v = 0; v < NV; ++v) bv[v] = Vec::loadu(b + p * panel + v * V);
    for (int64_t r = 0; r < R; ++r) {
      const Vec x(a[r * lda + p]);
      for (int64_t v = 0; v < NV; ++v) acc[r][v] = at::vec::fmadd(x, bv[v], acc[r][v]);
    }
  }
  for (int64_t r = 0; r < R; ++r) {
    for (int64_t v = 0; v < NV; ++v) acc[r][v].store(c + r * ldc + v * V);
  }
}

// Rows [0, R) of C against one panel of `width` columns: whole tiles of
// 4 vectors, then one vector at a time, then the scalar rest.
template <int64_t R>
void few_rows_panel(int64_t width, int64_t k, const float* a, int64_t lda, const float* b,
                    int64_t panel, float* c, int64_t ldc, bool accumulate) {
  constexpr int64_t V = at::vec::Vectorized<float>::size();
  int64_t j = 0;
  for (; j + 4 * V <= width; j += 4 * V) {
    few_rows_tile<R, 4>(k, a, lda, b + j, panel, c + j, ldc, accumulate);
  }
  for (; j + V <= width; j += V) few_rows_tile<R, 1>(k, a, lda, b + j, panel, c + j, ldc, accumulate);
  for (; j < width; ++j) {
    for (int64_t r = 0; r < R; ++r) {
      float sum = accumulate ? c[r * ldc + j] : 0.f;
      for (int64_t p = 0; p < k; ++p) sum += a[r * lda + p] * b[p * panel + j];
      c[r * ldc + j] = sum;
    }
  }
}

void few_rows_gemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                   const float* b_panels, int64_t panel, float* c, int64_t ldc, bool accumulate) {
  for (int64_t j = 0; j < n; j += panel) {
    const int64_t width = std::min(panel, n - j);
    const float* b = b_panels + k * j;
    for (int64_t i = 0; i < m;) {
      const float* a_i = a + i * lda;
      float* c_i = c + i * ldc + j;
      switch (std::min<int64_t>(m - i, kFewRows)) {
        case 1: few_rows_panel<1>(width, k, a_i, lda, b, width, c_i, ldc, accumulate); i += 1; break;
        case 2: few_rows_panel<2>(width, k, a_i, lda, b, width, c_i, ldc, accumulate); i += 2; break;
        case 3: few_rows_panel<3>(width, k, a_i, lda, b, width, c_i, ldc, accumulate); i += 3; break;
        default: few_rows_panel<4>(width, k, a_i, lda, b, width, c_i, ldc, accumulate); i += 4;
      }
    }
  }
}

}  // namespace

extern const Kernels table;
const Kernels table{Cells<float>::table,
                    Cells<double>::table,
                    Cells<float, c10::BFloat16>::table,
                    Cells<float, c10::Half>::table,
                    &transpose<float>,
                    &transpose<c10::BFloat16>,
                    &transpose<c10::Half>,
                    &few_rows_gemm};

}  // namespace lstm_ext::cpu::CPU_CAPABILITY
