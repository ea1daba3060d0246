#pragma once
// The op's C++ signatures and the argument checks every device runs first.

#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <array>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace lstm_ext {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// y, h_n, c_n, then what backward needs: the activated gates and every c_t.
using LayerOut = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;
// dx, dh0, dc0, dw_ih, dw_hh, db (one tensor: it is the gradient of both
// b_ih and b_hh), dw_hr, and LayerNorm's d_ln_ih, d_ln_hh, d_ln_c_weight,
// d_ln_c_bias (with its weights; asked for as dw_ih, dw_hh). Gradients not
// asked for by output_mask are undefined.
using LayerGrads = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                              Tensor, Tensor, Tensor>;

// y, h_n and c_n (of inference), or their tangents.
using LayerOutputs = std::tuple<Tensor, Tensor, Tensor>;

// Which of dx, (dw_ih, dw_hh), db, dw_hr to compute; dh0 and dc0 come free.
struct GradMask {
  bool input, weights, bias, proj;
};

// Which dimension of a weight runs over the 4H gates: laid out in the
// executor's gate order (layer.h), or none.
enum class Gates { none, columns, rows };

// The executor's gate order for groups of `group` hidden units: position
// 4 j0 + k g + i along a gates dimension holds gate k of unit j0 + i, for the
// group of g = min(group, hidden - j0) units starting at unit j0 (a multiple of
// `group`). Element p of the result is that position's index in PyTorch's
// order, k hidden + j. With group >= hidden it is PyTorch's order.
std::vector<int64_t> gate_order(int64_t hidden, int64_t group);

// Tangents of the layer's inputs, each the shape of its input; an absent one
// is zero. bias is the tangent of b_ih + b_hh.
struct Tangents {
  OptTensor x, h0, c0, w_ih, w_hh, bias, w_hr;
};

// Zoneout (cell.h): the weight with which each unit keeps its previous value,
// per row of every step (row r of step t is sequence r's): for c (rows, H)
// and for h (rows, P), each undefined without. With c's, the forward saves
// c̃ of every row after c_t's (cells of 2 * rows).
struct Zoneout {
  OptTensor c, h;
};

// LayerNorm (haste's LayerNormLSTM; all four or none): scales of the input
// and recurrent products over the 4H gates, (4H), PyTorch's gate order; scale
// and shift of c̃ over H before its tanh, (H).
struct LayerNorm {
  OptTensor ih, hh, c_weight, c_bias;
  bool on() const { return ih.has_value(); }
};

// Sizes of one layer: rows = sum(batch_sizes), P = proj_size or H.
struct LayerDims {
  int64_t rows, batch, input, hidden, out;
};

// The packed layout: step t owns rows [offset(t), offset(t) + size(t)) of every
// per-row buffer, and those rows are sequences 0 .. size(t)-1.
class Steps {
 public:
  Steps(const Tensor& batch_sizes, bool reverse);

  int64_t count() const { return static_cast<int64_t>(size_.size()); }
  // Rows of the whole packed sequence.
  int64_t rows() const { return count() > 0 ? offset_.back() + size_.back() : 0; }
  // Time index of the s-th step in forward-processing order.
  int64_t time(int64_t s) const { return reverse_ ? count() - 1 - s : s; }
  int64_t size(int64_t t) const { return size_[t]; }
  int64_t offset(int64_t t) const { return offset_[t]; }
  // Rows of step t whose state comes from the step processed just before it
  // (rows [0, carried)); rows [carried, size) start from the initial state.
  int64_t carried(int64_t t) const;
  // Time index of the step processed just before t (meaningful when carried(t) > 0).
  int64_t previous(int64_t t) const { return reverse_ ? t + 1 : t - 1; }
  // The sequences [first, second) whose last processed step is t: their rows
  // of step t hold h_n and c_n.
  std::pair<int64_t, int64_t> ending_at(int64_t t) const;
  // Boundaries of `parts` contiguous ranges of sequences with about equal
  // numbers of rows: parts + 1 values from 0 to the batch size.
  std::vector<int64_t> split(int64_t parts) const;

 private:
  std::vector<int64_t> size_, offset_, length_;
  bool reverse_;
};

// The weights' sizes (LayerDims with no rows or batch), checked against each
// other; their dtype and device must be like's (named like_name), w_ih's
// columns `input`.
LayerDims check_weights(const Tensor& like, const char* like_name, int64_t input,
                        const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
                        const OptTensor& b_hh, const OptTensor& w_hr);

LayerDims check_layer_args(const Tensor& x, const Tensor& batch_sizes, const Tensor& h0,
                           const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
                           const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr);

// Checks the forward's results (y, and the gates and cells it saved) against
// the forward dims.
void check_saved(const LayerDims& d, const Tensor& x, const Tensor& y, const Tensor& gates,
                 const Tensor& cells, bool zoneout_c = false);

// Checks the incoming gradients against the forward dims, that `groups` is
// positive and `problems`, if given, a problem for each sequence.
void check_backward_args(const LayerDims& d, const Tensor& x, const OptTensor& dy,
                         const OptTensor& dh_n, const OptTensor& dc_n, int64_t groups,
                         const OptTensor& problems);

// rec_scale, if given, is (batch, P) in x's dtype and on its device.
void check_rec_scale(const LayerDims& d, const Tensor& x, const OptTensor& rec_scale);

// The zoneout weights, if given, are (rows, H) and (rows, P) in x's dtype and
// on its device, and constants (they get no gradient).
void check_zoneout(const LayerDims& d, const Tensor& x, const Zoneout& zoneout);

// LayerNorm's weights: all four or none, of 4H, 4H, H and H values, in x's
// dtype and on its device.
void check_layer_norm(const LayerDims& d, const Tensor& x, const LayerNorm& ln);

// Checks each tangent against the input it belongs to.
void check_tangents(const LayerDims& d, const Tensor& x, const Tangents& t, bool has_proj);

// float16 and bfloat16, "reduced precision" (as ATen's dispatch macros call
// them): products natively or upcast, the rest in float (device_ops.h).
inline bool is_reduced_precision(at::ScalarType t) { return t == at::kHalf || t == at::kBFloat16; }
template <typename T>
constexpr bool is_reduced_precision_v =
    std::is_same_v<T, c10::BFloat16> || std::is_same_v<T, c10::Half>;
// The dtype of the saved cells for inputs of dtype t (the saved gates are in
// t: activations in [-1, 1], which float16/bfloat16 hold to their precision;
// the cell state is float).
inline at::ScalarType saved_cells_dtype(at::ScalarType t) {
  return is_reduced_precision(t) ? at::kFloat : t;
}

// t's data as T* (T may be const: read only), or null where t is undefined.
template <typename T>
T* ptr(const Tensor& t) {
  if (!t.defined()) return nullptr;
  if constexpr (std::is_const_v<T>) {
    return t.const_data_ptr<std::remove_const_t<T>>();
  } else {
    return t.data_ptr<T>();
  }
}

// x is on `device` and of a floating dtype the op computes in.
void check_device_and_dtype(const Tensor& x, c10::DeviceType device);

GradMask grad_mask(std::array<bool, 4> output_mask, bool has_proj);

}  // namespace lstm_ext
