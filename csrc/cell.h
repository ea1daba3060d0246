#pragma once
// The LSTM equations, forward and backward, for one hidden unit of one row
// (and the row statistics of its LayerNorm variant).
// Every kernel in the project (CPU vectorised, CUDA, emulated CUDA) calls
// these and nothing else writes gate math. Gate order is PyTorch's: i, f, g, o.
//
// T is the math type: float or double, or a SIMD vector of them on the CPU.
// A (Activations<T> unless a kernel names another) supplies sigmoid and tanh;
// at the end, a specialisation for at::vec::Vectorized lets the same
// equations run on whole vector registers, RoundedActivations is the
// cheaper form for results rounded to 16 bits, and PreciseActivations the
// LayerNorm variant's tanh, accurate near 0.

#include <cmath>

#if !defined(__CUDACC__)
#include <ATen/cpu/vec/vec.h>
#endif

#if defined(__CUDACC__)
#define LSTM_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define LSTM_HOST_DEVICE inline
#endif

namespace lstm_ext {

template <typename T>
struct Activations {
  static LSTM_HOST_DEVICE T sigmoid(T x) {
    using std::exp;
    return T(1) / (T(1) + exp(-x));
  }
  static LSTM_HOST_DEVICE T tanh(T x) {
    using std::tanh;
    return tanh(x);
  }
};

// In: the four gate pre-activations and c_{t-1}.
// Out: the gates replaced by their activations, c_t and h_t.
template <typename T, typename A = Activations<T>>
LSTM_HOST_DEVICE void cell_forward(T& i, T& f, T& g, T& o, T c_prev, T& c, T& h) {
  i = A::sigmoid(i);
  f = A::sigmoid(f);
  g = A::tanh(g);
  o = A::sigmoid(o);
  c = f * c_prev + i * g;
  h = o * A::tanh(c);
}

// The halves of cell_backward. Output: from dL/dh_t, with tanh_c the tanh of
// what h was made from (c_t, or with LayerNorm LN(c̃)): dL/d(o's
// pre-activation), dL/d(that value), and h_t recomputed.
template <typename T>
LSTM_HOST_DEVICE void cell_backward_output(T o, T tanh_c, T dh, T& do_, T& dc_out, T& h) {
  const T one(1);
  h = o * tanh_c;
  dc_out = dh * o * (one - tanh_c * tanh_c);
  do_ = dh * tanh_c * o * (one - o);
}

// State: from dL/dc_t in total, the gradients of i, f, g's pre-activations
// and dL/dc_{t-1}.
template <typename T>
LSTM_HOST_DEVICE void cell_backward_state(T i, T f, T g, T c_prev, T dc, T& di, T& df, T& dg,
                                          T& dc_prev) {
  const T one(1);
  di = dc * g * i * (one - i);
  df = dc * c_prev * f * (one - f);
  dg = dc * i * (one - g * g);
  dc_prev = dc * f;
}

// In: the activated gates, c_t, c_{t-1}, the total dL/dh_t and dL/dc_t carried
// back from step t+1. Out: dL/d(gate pre-activations), dL/dc_{t-1}, and h_t
// recomputed (the projection's weight gradient needs it; saving it would cost
// a (rows, H) buffer per layer).
template <typename T, typename A = Activations<T>>
LSTM_HOST_DEVICE void cell_backward(T i, T f, T g, T o, T c, T c_prev, T dh, T dc_next,
                                    T& di, T& df, T& dg, T& do_, T& dc_prev, T& h) {
  T dc_out;
  cell_backward_output(o, A::tanh(c), dh, do_, dc_out, h);
  cell_backward_state(i, f, g, c_prev, dc_next + dc_out, di, df, dg, dc_prev);
}

// Forward-mode derivative of cell_forward. In: the activated gates, c_t,
// c_{t-1}, and the tangents (directional derivatives, t_ prefix) of the four
// gate pre-activations and of c_{t-1}. Out: the tangents of c_t and h_t, and
// h_t recomputed (the projection's weight tangent multiplies it).
template <typename T, typename A = Activations<T>>
LSTM_HOST_DEVICE void cell_tangent(T i, T f, T g, T o, T c, T c_prev, T t_i, T t_f, T t_g,
                                   T t_o, T t_c_prev, T& t_c, T& t_h, T& h) {
  const T one(1);
  const T tanh_c = A::tanh(c);
  h = o * tanh_c;
  t_c = t_f * f * (one - f) * c_prev + f * t_c_prev + t_i * i * (one - i) * g +
        i * t_g * (one - g * g);
  t_h = t_o * o * (one - o) * tanh_c + o * (one - tanh_c * tanh_c) * t_c;
}

// Zoneout (Krueger et al.): a unit keeps its previous value with weight d
// (0 or 1 per step, sequence and unit in training; the probability in eval):
// the new value is fresh + d (prev - fresh). For c it follows cell_forward
// (c̃ = fresh, c_prev = prev), for h the projection if any.
template <typename T>
LSTM_HOST_DEVICE T zoneout(T fresh, T prev, T d) {
  return fresh + d * (prev - fresh);
}

// Its backward: dL/d(new value) g splits into dL/dfresh and a part for prev.
template <typename T>
LSTM_HOST_DEVICE void zoneout_backward(T g, T d, T& d_fresh, T& d_prev) {
  d_prev = d * g;
  d_fresh = g - d_prev;
}

// cell_forward with zoneout on c: c_t = zoneout(c̃, c_{t-1}, d), h from c̃.
// c̃ is returned too (backward needs it: c_t alone does not give it where
// d = 1).
template <typename T, typename A = Activations<T>>
LSTM_HOST_DEVICE void cell_forward_zoneout(T& i, T& f, T& g, T& o, T c_prev, T d, T& c_fresh,
                                           T& c, T& h) {
  cell_forward<T, A>(i, f, g, o, c_prev, c_fresh, h);
  c = zoneout(c_fresh, c_prev, d);
}

// cell_backward of cell_forward_zoneout: c_fresh is c̃, dc_next dL/dc_t.
template <typename T, typename A = Activations<T>>
LSTM_HOST_DEVICE void cell_backward_zoneout(T i, T f, T g, T o, T c_fresh, T c_prev, T d, T dh,
                                            T dc_next, T& di, T& df, T& dg, T& do_, T& dc_prev,
                                            T& h) {
  T dc_fresh, dc_kept;
  zoneout_backward(dc_next, d, dc_fresh, dc_kept);
  cell_backward<T, A>(i, f, g, o, c_fresh, c_prev, dh, dc_fresh, di, df, dg, do_, dc_prev, h);
  dc_prev = dc_prev + dc_kept;
}

// LayerNorm's statistics of a row of n values: their mean from their sum,
// then 1 / sqrt(variance + 1e-5) from the sum of their squared deviations
// from it (biased variance, two passes). Kernels that sum in vectors call
// the two halves; layer_norm_stats sums get(0), ..., get(n - 1) one by one.
template <typename T>
LSTM_HOST_DEVICE T layer_norm_mean(T sum, int64_t n) {
  return sum / T(n);
}

template <typename T>
LSTM_HOST_DEVICE T layer_norm_rstd(T squares, int64_t n) {
  using std::sqrt;
  return T(1) / sqrt(squares / T(n) + T(1e-5));
}

template <typename T, typename Get>
LSTM_HOST_DEVICE void layer_norm_stats(int64_t n, const Get& get, T& mean, T& rstd) {
  T sum(0);
  for (int64_t i = 0; i < n; ++i) sum += get(i);
  mean = layer_norm_mean(sum, n);
  T squares(0);
  for (int64_t i = 0; i < n; ++i) {
    const T v = get(i) - mean;
    squares += v * v;
  }
  rstd = layer_norm_rstd(squares, n);
}

// A value normalised by its row's statistics: v̂ = (v - mean) rstd.
template <typename T>
LSTM_HOST_DEVICE T layer_norm_normalised(T v, T mean, T rstd) {
  return (v - mean) * rstd;
}

// LayerNorm's backward for one of a row's values: dL/dv from dy_gamma =
// dL/dy ⊙ γ at it (y = v̂ γ (+ β)), v̂ there, the row's means m1 of dy_gamma
// and m2 of dy_gamma ⊙ v̂ (layer_norm_mean of their sums), and its rstd.
template <typename T>
LSTM_HOST_DEVICE T layer_norm_backward(T dy_gamma, T v_hat, T m1, T m2, T rstd) {
  return rstd * (dy_gamma - m1 - v_hat * m2);
}

// tanh(LN(c̃; γ, β)) for one unit of c̃ (haste's LayerNormLSTM), mean and
// rstd c̃'s row's: what h is made from, and its backward's tanh.
template <typename T, typename A = Activations<T>>
LSTM_HOST_DEVICE T cell_tanh_layer_norm(T c, T mean, T rstd, T gamma, T beta) {
  return A::tanh(layer_norm_normalised(c, mean, rstd) * gamma + beta);
}

// h with LayerNorm on c̃: σ(o)·tanh(LN(c̃; γ, β)), o activated.
template <typename T, typename A = Activations<T>>
LSTM_HOST_DEVICE T cell_output_layer_norm(T o, T c, T mean, T rstd, T gamma, T beta) {
  return o * cell_tanh_layer_norm<T, A>(c, mean, rstd, gamma, beta);
}

// The state half of the backward with LayerNorm on c̃: dL/dc̃ is dc_next's
// share for c̃ (all of it, or with zoneout on c (`zoned`, weight d) the fresh
// share) plus LN_c's backward of dL/dĉ (dc_hat_gamma = dL/dĉ ⊙ γ_c at this
// unit, v_hat its x̂, the row's m1, m2 and rstd as in layer_norm_backward);
// out: i, f, g's gradients and dL/dc_{t-1} (zoneout's kept share added).
template <typename T>
LSTM_HOST_DEVICE void cell_backward_state_layer_norm(T i, T f, T g, T c_prev, T dc_next,
                                                     bool zoned, T d, T dc_hat_gamma, T v_hat,
                                                     T m1, T m2, T rstd, T& di, T& df, T& dg,
                                                     T& dc_prev) {
  T dc = dc_next, kept(0);
  if (zoned) zoneout_backward(dc_next, d, dc, kept);
  dc = dc + layer_norm_backward(dc_hat_gamma, v_hat, m1, m2, rstd);
  cell_backward_state(i, f, g, c_prev, dc, di, df, dg, dc_prev);
  dc_prev = dc_prev + kept;
}

#if !defined(__CUDACC__)
// Both from one exp and one division. Sleef's tanh, behind Vectorized::tanh,
// costs several times more; this form loses relative (not absolute) accuracy
// only near 0, where the absolute error stays at one unit of 1.0.
template <typename V, typename Exp>
struct VectorActivations {
  using T = typename V::value_type;
  static V sigmoid(V x) { return V(T(1)) / (V(T(1)) + Exp::exp(x.neg())); }
  static V tanh(V x) { return V(T(1)) - V(T(2)) / (Exp::exp(x + x) + V(T(1))); }
};

// Sleef's exp, within 1 ulp.
struct SleefExp {
  template <typename V>
  static V exp(V x) {
    return x.exp();
  }
};

template <typename T>
struct Activations<at::vec::Vectorized<T>>
    : VectorActivations<at::vec::Vectorized<T>, SleefExp> {};

// ATen's polynomial exp: within 20 ulp of float (through the forms above, an
// absolute error of about 2e-6 where they lose relative accuracy, near 0),
// below what rounding the native bfloat16/float16 path's results to 16 bits
// costs (2^-9, 2^-12 relative), at a fraction of Sleef's cost (the cell pass
// was a tenth of a bfloat16 layer's time). It clamps its input, so a NaN is
// put back.
struct PolynomialExp {
  static at::vec::Vectorized<float> exp(at::vec::Vectorized<float> x) {
    return at::vec::Vectorized<float>::blendv(x.exp_u20(), x, x.isnan());
  }
};

using RoundedActivations = VectorActivations<at::vec::Vectorized<float>, PolynomialExp>;

// at::vec's tanh (Sleef's, within 1 ulp, where the level has vectors), for
// the LayerNorm variant: the next layer's LayerNorm divides by its rows'
// spread, so it sees the relative error of h, which the one-exp form above
// makes large near 0 (a float32 configuration measured 3x a float32 loop of
// cells' error with it, half of it with this). 16-bit results too: near 0
// that relative error also exceeds their rounding.
template <typename V>
struct PreciseActivations : Activations<V> {
  static V tanh(V x) { return x.tanh(); }
};
#endif

}  // namespace lstm_ext
