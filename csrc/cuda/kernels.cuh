#pragma once
// The CUDA kernels of the time loop: the fused cell passes over csrc/cell.h
// and element-wise passes (sums, products, zoneout on h). Compiled by nvcc
// for the GPU, and as plain C++ after csrc/emu/shim.h for the emulated build,
// so they use only what the shim provides: no shared memory, no barriers, no
// warp operations. Each thread reads and writes only its own elements, which
// is also why running the threads of a launch one after another (as the
// emulation does) is exact.
//
// Launches may have fewer threads than elements: every kernel walks its
// elements in a grid-stride loop.

#include "../cell.h"

#include <cstdint>

namespace lstm_ext::cuda {

// Calls fn(e) for the elements e in [0, n) that belong to this thread.
template <typename Fn>
__device__ __forceinline__ void for_each_element(int64_t n, const Fn& fn) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n;
       e += stride) {
    fn(e);
  }
}

// The four gates (row stride 4H) of unit j at g, plus the bias's when given.
template <typename T>
__device__ __forceinline__ void load_gates(const T* g, const T* bias, int64_t H, int64_t j,
                                           T& i, T& f, T& gg, T& o) {
  i = g[0];
  f = g[H];
  gg = g[2 * H];
  o = g[3 * H];
  if (bias) {
    i += bias[j];
    f += bias[H + j];
    gg += bias[2 * H + j];
    o += bias[3 * H + j];
  }
}

// One element (row r, unit j) per iteration over rows [r0, r1) and units
// [u0, u1) of one step; the arguments are those of the executor's
// cell_forward.
template <typename T>
__global__ void cell_forward_kernel(int64_t r0, int64_t r1, int64_t u0, int64_t u1,
                                    int64_t carried, int64_t H, T* gates, const T* bias,
                                    const T* c_prev, const T* c0, const T* zone,
                                    T* c_fresh, T* c_out, T* h_out) {
  const int64_t width = u1 - u0;
  for_each_element((r1 - r0) * width, [&](int64_t e) {
    const int64_t r = r0 + e / width, j = u0 + e % width, s = r * H + j;
    T* g = gates + r * 4 * H + j;
    T i, f, gg, o;
    load_gates(g, bias, H, j, i, f, gg, o);
    const T prev = (r < carried ? c_prev : c0)[s];
    T c, h;
    if (zone) {
      T fresh;
      cell_forward_zoneout(i, f, gg, o, prev, zone[s], fresh, c, h);
      if (c_fresh) c_fresh[s] = fresh;
    } else {
      cell_forward(i, f, gg, o, prev, c, h);
    }
    g[0] = i;
    g[H] = f;
    g[2 * H] = gg;
    g[3 * H] = o;
    c_out[s] = c;
    h_out[s] = h;
  });
}

// The executor's cell_backward, one element per iteration.
template <typename T>
__global__ void cell_backward_kernel(int64_t r0, int64_t r1, int64_t u0, int64_t u1,
                                     int64_t carried, int64_t H, const T* gates, const T* cells,
                                     const T* c_prev, const T* c0, const T* zone,
                                     const T* dh, const T* dh_extra, T* dc_state, T* dgates,
                                     T* h_out) {
  const int64_t width = u1 - u0;
  for_each_element((r1 - r0) * width, [&](int64_t e) {
    const int64_t r = r0 + e / width, j = u0 + e % width, s = r * H + j;
    const T* g = gates + r * 4 * H + j;
    T* dg = dgates + r * 4 * H + j;
    const T dh_total = dh_extra ? dh[s] + dh_extra[s] : dh[s];
    const T prev = (r < carried ? c_prev : c0)[s], dc = dc_state[s];
    T h;
    if (zone) {
      cell_backward_zoneout(g[0], g[H], g[2 * H], g[3 * H], cells[s], prev, zone[s], dh_total,
                            dc, dg[0], dg[H], dg[2 * H], dg[3 * H], dc_state[s], h);
    } else {
      cell_backward(g[0], g[H], g[2 * H], g[3 * H], cells[s], prev, dh_total, dc, dg[0], dg[H],
                    dg[2 * H], dg[3 * H], dc_state[s], h);
    }
    if (h_out) h_out[s] = h;
  });
}

// The executor's cell_tangent, one element per iteration.
template <typename T>
__global__ void cell_tangent_kernel(int64_t r0, int64_t r1, int64_t u0, int64_t u1,
                                    int64_t carried, int64_t H, const T* gates, const T* cells,
                                    const T* c_prev, const T* c0, const T* t_bias,
                                    const T* t_gates, const T* t_c_prev, const T* t_c0,
                                    T* t_c_out, T* t_h_out, T* h_out) {
  const int64_t width = u1 - u0;
  for_each_element((r1 - r0) * width, [&](int64_t e) {
    const int64_t r = r0 + e / width, j = u0 + e % width, s = r * H + j;
    const T* g = gates + r * 4 * H + j;
    T t_i, t_f, t_g, t_o;
    load_gates(t_gates + r * 4 * H + j, t_bias, H, j, t_i, t_f, t_g, t_o);
    const bool carried_row = r < carried;
    T t_c, t_h, h;
    cell_tangent(g[0], g[H], g[2 * H], g[3 * H], cells[s], (carried_row ? c_prev : c0)[s], t_i,
                 t_f, t_g, t_o, (carried_row ? t_c_prev : t_c0)[s], t_c, t_h, h);
    t_c_out[s] = t_c;
    t_h_out[s] = t_h;
    if (h_out) h_out[s] = h;
  });
}

template <typename T>
__global__ void add_kernel(T* dst, const T* a, const T* b, int64_t n) {
  for_each_element(n, [&](int64_t e) { dst[e] = a[e] + b[e]; });
}

template <typename T>
__global__ void mul_kernel(T* dst, const T* a, const T* b, int64_t n) {
  for_each_element(n, [&](int64_t e) { dst[e] = a[e] * b[e]; });
}

// The executor's layer_norm_into, one row per iteration.
template <typename T>
__global__ void layer_norm_into_kernel(T* dst, const T* src, int64_t rows, int64_t width,
                                       const T* gamma, int64_t c0, int64_t c1, bool accumulate,
                                       T* rstd_out) {
  for_each_element(rows, [&](int64_t r) {
    const T* s = src + r * width;
    T* d = dst + r * width;
    T mean, rstd;
    layer_norm_stats(width, [&](int64_t i) { return s[i]; }, mean, rstd);
    if (rstd_out) rstd_out[r] = rstd;
    for (int64_t c = c0; c < c1; ++c) {
      const T v = layer_norm_normalised(s[c], mean, rstd) * (gamma ? gamma[c] : T(1));
      d[c] = accumulate ? d[c] + v : v;
    }
  });
}

// The executor's layer_norm_backward_into, one row per iteration.
template <typename T>
__global__ void layer_norm_backward_kernel(T* dst, const T* dy, const T* x_hat, const T* rstd,
                                           const T* gamma, int64_t rows, int64_t width,
                                           int64_t c0, int64_t c1) {
  for_each_element(rows, [&](int64_t r) {
    const T* g = dy + r * width;
    const T* v = x_hat + r * width;
    T m1(0), m2(0);
    for (int64_t c = 0; c < width; ++c) {
      m1 += g[c] * gamma[c];
      m2 += g[c] * gamma[c] * v[c];
    }
    m1 = layer_norm_mean(m1, width);
    m2 = layer_norm_mean(m2, width);
    for (int64_t c = c0; c < c1; ++c) {
      dst[r * width + c] = layer_norm_backward(g[c] * gamma[c], v[c], m1, m2, rstd[r]);
    }
  });
}

// Calls fn(r, c_r, mean, rstd) for this thread's rows r of [r0, r1) of c
// (row stride H): a row and its LayerNorm statistics, one row per iteration.
template <typename T, typename Fn>
__device__ __forceinline__ void for_each_normalised_row(int64_t r0, int64_t r1, int64_t H,
                                                        const T* c, const Fn& fn) {
  for_each_element(r1 - r0, [&](int64_t k) {
    const int64_t r = r0 + k;
    const T* c_r = c + r * H;
    T mean, rstd;
    layer_norm_stats(H, [&](int64_t i) { return c_r[i]; }, mean, rstd);
    fn(r, c_r, mean, rstd);
  });
}

// The executor's cell_backward_layer_norm_output (PyTorch's gate order), one
// row per iteration.
template <typename T>
__global__ void cell_backward_layer_norm_output_kernel(int64_t r0, int64_t r1, int64_t u0,
                                                       int64_t u1, int64_t H, const T* gates,
                                                       const T* c, const T* gamma, const T* beta,
                                                       const T* dh, const T* dh_extra,
                                                       T* dgates, T* dc_hat, T* h_out) {
  for_each_normalised_row(r0, r1, H, c, [&](int64_t r, const T* c_r, T mean, T rstd) {
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t at = r * 4 * H + 3 * H + u, e = r * H + u;
      const T t = cell_tanh_layer_norm(c_r[u], mean, rstd, gamma[u], beta[u]);
      T h;
      cell_backward_output(gates[at], t, dh[e] + (dh_extra ? dh_extra[e] : T(0)), dgates[at],
                           dc_hat[e], h);
      if (h_out) h_out[e] = h;
    }
  });
}

// The executor's cell_backward_layer_norm_state (PyTorch's gate order), one
// row per iteration.
template <typename T>
__global__ void cell_backward_layer_norm_state_kernel(int64_t r0, int64_t r1, int64_t u0,
                                                      int64_t u1, int64_t carried, int64_t H,
                                                      const T* gates, const T* c,
                                                      const T* c_prev, const T* c0,
                                                      const T* zone, const T* gamma,
                                                      const T* dc_hat, T* dc_state, T* dgates,
                                                      T* dgamma) {
  for_each_normalised_row(r0, r1, H, c, [&](int64_t r, const T* c_r, T mean, T rstd) {
    const T* g_r = dc_hat + r * H;
    T m1(0), m2(0);
    for (int64_t u = 0; u < H; ++u) {
      m1 += g_r[u] * gamma[u];
      m2 += g_r[u] * gamma[u] * layer_norm_normalised(c_r[u], mean, rstd);
    }
    m1 = layer_norm_mean(m1, H);
    m2 = layer_norm_mean(m2, H);
    const T* prev = (r < carried ? c_prev : c0) + r * H;
    const T* g = gates + r * 4 * H;
    T* dg = dgates + r * 4 * H;
    for (int64_t u = u0; u < u1; ++u) {
      const T v_hat = layer_norm_normalised(c_r[u], mean, rstd);
      const int64_t e = r * H + u;
      T dc_prev;
      cell_backward_state_layer_norm(g[u], g[H + u], g[2 * H + u], prev[u], dc_state[e],
                                     zone != nullptr, zone ? zone[e] : T(0),
                                     g_r[u] * gamma[u], v_hat, m1, m2, rstd, dg[u], dg[H + u],
                                     dg[2 * H + u], dc_prev);
      dc_state[e] = dc_prev;
      dgamma[e] = g_r[u] * v_hat;
    }
  });
}

// The executor's cell_output_layer_norm (PyTorch's gate order), one row per
// iteration.
template <typename T>
__global__ void cell_output_layer_norm_kernel(int64_t r0, int64_t r1, int64_t u0, int64_t u1,
                                              int64_t H, const T* activated, const T* c,
                                              const T* gamma, const T* beta, T* h_out) {
  for_each_normalised_row(r0, r1, H, c, [&](int64_t r, const T* c_r, T mean, T rstd) {
    for (int64_t u = u0; u < u1; ++u) {
      h_out[r * H + u] = cell_output_layer_norm(activated[r * 4 * H + 3 * H + u], c_r[u], mean,
                                                rstd, gamma[u], beta[u]);
    }
  });
}

template <typename T>
__global__ void add_mul_kernel(T* dst, const T* a, const T* b, int64_t n) {
  for_each_element(n, [&](int64_t e) { dst[e] += a[e] * b[e]; });
}

template <typename T>
__global__ void zoneout_kernel(T* dst, const T* prev, const T* d, int64_t n) {
  for_each_element(n, [&](int64_t e) { dst[e] = zoneout(dst[e], prev[e], d[e]); });
}

template <typename T>
__global__ void zoneout_backward_kernel(T* fresh, T* kept, const T* a, const T* b, const T* d,
                                        int64_t n) {
  for_each_element(n, [&](int64_t e) { zoneout_backward(a[e] + b[e], d[e], fresh[e], kept[e]); });
}

}  // namespace lstm_ext::cuda
