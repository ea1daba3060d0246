// The vectorised CPU kernels of one instruction-set level (kernels.h).
// setup.py compiles this file once per level, with the level's flags and
// CPU_CAPABILITY naming it (DEFAULT, AVX2, AVX512), as ATen compiles its own
// kernels: at::vec's types then live in at::vec::CPU_CAPABILITY and this
// file's in lstm_ext::cpu::CPU_CAPABILITY, so the levels never mix.

#include "kernels.h"

#include "../cell.h"

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <array>

namespace lstm_ext::cpu::CPU_CAPABILITY {
namespace {

template <typename scalar_t>
struct Cells {
  using Vec = at::vec::Vectorized<scalar_t>;

  static void forward(int64_t r0, int64_t r1, int64_t carried, int64_t H, scalar_t* gates,
                      const scalar_t* bias, const scalar_t* c_prev, const scalar_t* c0,
                      scalar_t* c_out, scalar_t* h_out) {
    for_each_chunk(r0, r1, H, [=](int64_t r, int64_t j, int64_t n) {
      scalar_t* g = gates + r * 4 * H + j;
      auto [i, f, gg, o] = load_gates(g, bias, H, j, n);
      const int64_t e = r * H + j;
      Vec c, h;
      lstm_ext::cell_forward(i, f, gg, o, Vec::loadu((r < carried ? c_prev : c0) + e, n), c, h);
      i.store(g, n);
      f.store(g + H, n);
      gg.store(g + 2 * H, n);
      o.store(g + 3 * H, n);
      c.store(c_out + e, n);
      h.store(h_out + e, n);
    });
  }

  static void backward(int64_t r0, int64_t r1, int64_t carried, int64_t H,
                       const scalar_t* gates, const scalar_t* cells, const scalar_t* c_prev,
                       const scalar_t* c0, const scalar_t* dh, const scalar_t* dh_extra,
                       scalar_t* dc_state, scalar_t* dgates, scalar_t* h_out) {
    for_each_chunk(r0, r1, H, [=](int64_t r, int64_t j, int64_t n) {
      const auto [i, f, g, o] = load_gates(gates + r * 4 * H + j, nullptr, H, j, n);
      const int64_t e = r * H + j;
      Vec dh_v = Vec::loadu(dh + e, n);
      if (dh_extra) dh_v = dh_v + Vec::loadu(dh_extra + e, n);
      Vec di, df, dg, do_, dc_prev, h;
      lstm_ext::cell_backward(i, f, g, o, Vec::loadu(cells + e, n),
                              Vec::loadu((r < carried ? c_prev : c0) + e, n), dh_v,
                              Vec::loadu(dc_state + e, n), di, df, dg, do_, dc_prev, h);
      scalar_t* dg_p = dgates + r * 4 * H + j;
      di.store(dg_p, n);
      df.store(dg_p + H, n);
      dg.store(dg_p + 2 * H, n);
      do_.store(dg_p + 3 * H, n);
      dc_prev.store(dc_state + e, n);
      if (h_out) h.store(h_out + e, n);
    });
  }

  static void tangent(int64_t r0, int64_t r1, int64_t carried, int64_t H, const scalar_t* gates,
                      const scalar_t* cells, const scalar_t* c_prev, const scalar_t* c0,
                      const scalar_t* t_bias, const scalar_t* t_gates, const scalar_t* t_c_prev,
                      const scalar_t* t_c0, scalar_t* t_c_out, scalar_t* t_h_out,
                      scalar_t* h_out) {
    for_each_chunk(r0, r1, H, [=](int64_t r, int64_t j, int64_t n) {
      const auto [i, f, g, o] = load_gates(gates + r * 4 * H + j, nullptr, H, j, n);
      const auto [t_i, t_f, t_g, t_o] = load_gates(t_gates + r * 4 * H + j, t_bias, H, j, n);
      const int64_t e = r * H + j;
      const bool carried_row = r < carried;
      Vec t_c, t_h, h;
      lstm_ext::cell_tangent(i, f, g, o, Vec::loadu(cells + e, n),
                             Vec::loadu((carried_row ? c_prev : c0) + e, n), t_i, t_f, t_g, t_o,
                             Vec::loadu((carried_row ? t_c_prev : t_c0) + e, n), t_c, t_h, h);
      t_c.store(t_c_out + e, n);
      t_h.store(t_h_out + e, n);
      if (h_out) h.store(h_out + e, n);
    });
  }

  static void add(scalar_t* dst, const scalar_t* a, const scalar_t* b, int64_t n) {
    at::vec::map2([](Vec u, Vec v) { return u + v; }, dst, a, b, n);
  }

  // The four gates (row stride 4H) of units [j, j + n) at g, plus the bias's
  // when it is given.
  static std::array<Vec, 4> load_gates(const scalar_t* g, const scalar_t* bias, int64_t H,
                                       int64_t j, int64_t n) {
    std::array<Vec, 4> out;
    for (int64_t k = 0; k < 4; ++k) {
      out[k] = Vec::loadu(g + k * H, n);
      if (bias) out[k] = out[k] + Vec::loadu(bias + k * H + j, n);
    }
    return out;
  }

  // Calls fn(row, column, width) over the vector-wide chunks of rows [r0, r1)
  // of a (rows, H) block; the last chunk of a row may be narrower.
  template <typename Fn>
  static void for_each_chunk(int64_t r0, int64_t r1, int64_t H, const Fn& fn) {
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t j = 0; j < H; j += Vec::size()) fn(r, j, std::min<int64_t>(Vec::size(), H - j));
    }
  }

  static constexpr CellKernels<scalar_t> table{&forward, &backward, &tangent, &add};
};

// 16 x 16 at a time in registers (AVX2 and AVX-512 both have that size unmasked).
void transpose(const float* src, int64_t ld_src, int64_t rows, int64_t cols, float* dst,
               int64_t ld_dst) {
  constexpr int64_t B = 16;
  for (int64_t r = 0; r < rows; r += B) {
    for (int64_t c = 0; c < cols; c += B) {
      const float* s = src + r * ld_src + c;
      float* d = dst + c * ld_dst + r;
      if (r + B <= rows && c + B <= cols) {
        at::vec::transpose_mxn<float, B, B>(s, ld_src, d, ld_dst);
      } else {
        at::vec::transpose_mxn<float>(s, ld_src, d, ld_dst, std::min(B, rows - r),
                                      std::min(B, cols - c));
      }
    }
  }
}

}  // namespace

extern const Kernels table;
const Kernels table{Cells<float>::table, Cells<double>::table, &transpose};

}  // namespace lstm_ext::cpu::CPU_CAPABILITY
