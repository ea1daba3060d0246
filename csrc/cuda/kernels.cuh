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
