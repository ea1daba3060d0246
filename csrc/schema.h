#pragma once
// The op schemas, shared by the shipped library (namespace lstm_ext) and the
// emulated CUDA build the tests load (namespace lstm_ext_emu).

namespace lstm_ext {

// One layer, one direction, over a packed sequence. Returns y, h_n, c_n and,
// for the backward, the activated gates and the cell state of every row.
inline constexpr const char* kLayerSchema =
    "lstm_layer(Tensor x, Tensor batch_sizes, Tensor h0, Tensor c0, Tensor w_ih, "
    "Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, bool reverse) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor)";

// output_mask selects dx, (dw_ih, dw_hh), db, dw_hr; unselected ones come
// back undefined (None), as in ATen's native backward ops.
inline constexpr const char* kLayerBackwardSchema =
    "lstm_layer_backward(Tensor? dy, Tensor? dh_n, Tensor? dc_n, Tensor x, "
    "Tensor batch_sizes, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? w_hr, "
    "Tensor y, Tensor gates, Tensor cells, bool reverse, bool[4] output_mask) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)";

}  // namespace lstm_ext
