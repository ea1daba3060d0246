#pragma once
// The op schemas, shared by the shipped library (namespace lstm_ext) and the
// emulated CUDA build the tests load (namespace lstm_ext_emu).

#include <torch/library.h>

namespace lstm_ext {

// One layer, one direction, over a packed sequence. Returns y, h_n, c_n and,
// for the backward, the activated gates and the cell state of every row.
// rec_scale (B, P), if given, scales h_{t-1} (h0 included) where it enters the
// recurrent product, per sequence and unit: recurrent dropout's mask over
// 1 - p. Every op of the layer takes it alike. zoneout_c (rows, H) and
// zoneout_h (rows, P), if given, are zoneout's weights per row of every step
// (csrc/cell.h: 0 or 1 in training, the probability in eval): c_t and h_t
// keep c_{t-1} and h_{t-1} with them; with zoneout_c the saved cells are c_t
// of every row, then c̃ of every row. The forward, inference and backward ops
// take them alike (the tangent op does not: forward-mode AD of zoneout is the
// composite's, _autograd.py).
inline constexpr const char* kLayerSchema =
    "lstm_layer(Tensor x, Tensor batch_sizes, Tensor h0, Tensor c0, Tensor w_ih, "
    "Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, bool reverse, "
    "Tensor? rec_scale=None, Tensor? zoneout_c=None, Tensor? zoneout_h=None, "
    "Tensor? ln_ih=None, Tensor? ln_hh=None, Tensor? ln_c_weight=None, Tensor? ln_c_bias=None) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor)";

// The same layer where no backward will come: y, h_n and c_n, nothing saved.
// The kept_ tensors, if given, are lstm_layer_lay_out's results for these
// weights, which the layer then uses instead of laying them out itself.
inline constexpr const char* kLayerInferenceSchema =
    "lstm_layer_inference(Tensor x, Tensor batch_sizes, Tensor h0, Tensor c0, Tensor w_ih, "
    "Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, bool reverse, "
    "Tensor? kept_ih=None, Tensor? kept_hh=None, Tensor? kept_hr=None, Tensor? kept_bias=None, "
    "Tensor? rec_scale=None, Tensor? zoneout_c=None, Tensor? zoneout_h=None, "
    "Tensor? ln_ih=None, Tensor? ln_hh=None, Tensor? ln_c_weight=None, Tensor? ln_c_bias=None) "
    "-> (Tensor, Tensor, Tensor)";

// The weights of one layer and direction as the inference op's products take
// them on this device, in this dtype's path (native or upcast), for a caller
// to keep while the weights are unchanged: laid-out w_ih, w_hh and w_hr (None
// without a projection) and the biases' sum (None without biases). Opaque:
// their sizes depend on the device and the CPU.
inline constexpr const char* kLayerLayOutSchema =
    "lstm_layer_lay_out(Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_hr) "
    "-> (Tensor, Tensor, Tensor, Tensor)";

// The whole stack (num_layers, each in one or two directions, as torch.lstm
// computes it, without dropout) where no backward will come: y of the last
// layer, h_n and c_n of shapes (groups, B, P) and (groups, B, H). h0 and c0
// likewise 3-D; weights in nn.LSTM's _flat_weights order; kept either empty
// or lstm_layer_lay_out's four results per layer and direction. One call for
// a decode step instead of one per layer.
inline constexpr const char* kInferenceSchema =
    "lstm_inference(Tensor x, Tensor batch_sizes, Tensor h0, Tensor c0, Tensor[] weights, "
    "Tensor?[] kept, bool has_biases, int num_layers, bool bidirectional) "
    "-> (Tensor, Tensor, Tensor)";

// output_mask selects dx, (dw_ih, dw_hh), db, dw_hr; unselected ones come
// back undefined (None), as in ATen's native backward ops. With groups > 1
// the batch is that many independent problems, interleaved (sequence s
// belongs to problem s % groups): the weight and bias gradients come per
// problem, with a leading dimension of size groups. This is how vmap runs
// per-sample gradients in one pass; with groups = B, every sequence of a
// packed batch of unequal lengths is its own problem (Opacus's per-sample
// gradients). `problems`, if given, (B,) int64 on the CPU, puts sequence s
// in problem problems[s] instead (a packed batch's own order back: its
// sorted_indices).
inline constexpr const char* kLayerBackwardSchema =
    "lstm_layer_backward(Tensor? dy, Tensor? dh_n, Tensor? dc_n, Tensor x, "
    "Tensor batch_sizes, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? w_hr, "
    "Tensor y, Tensor gates, Tensor cells, bool reverse, bool[4] output_mask, int groups=1, "
    "Tensor? rec_scale=None, Tensor? problems=None, Tensor? zoneout_c=None, "
    "Tensor? zoneout_h=None, Tensor? ln_ih=None, Tensor? ln_hh=None, Tensor? ln_c_weight=None, "
    "Tensor? ln_c_bias=None) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)";

// Forward-mode derivative: the tangents of y, h_n and c_n given those of the
// inputs (None for zero; db is that of b_ih + b_hh) and the forward's results.
inline constexpr const char* kLayerJvpSchema =
    "lstm_layer_jvp(Tensor x, Tensor batch_sizes, Tensor h0, Tensor c0, Tensor w_ih, "
    "Tensor w_hh, Tensor? w_hr, Tensor y, Tensor gates, Tensor cells, bool reverse, "
    "Tensor? dx, Tensor? dh0, Tensor? dc0, Tensor? dw_ih, Tensor? dw_hh, Tensor? db, "
    "Tensor? dw_hr, Tensor? rec_scale=None) -> (Tensor, Tensor, Tensor)";

// Defines every op above in a TORCH_LIBRARY block's library.
inline void define_ops(torch::Library& m) {
  for (const char* schema : {kLayerSchema, kLayerInferenceSchema, kLayerLayOutSchema,
                             kInferenceSchema, kLayerBackwardSchema, kLayerJvpSchema}) {
    m.def(schema);
  }
}

}  // namespace lstm_ext
