// lstm_ext::lstm_layer and its backward on CUDA.

#include "../op.h"
#include "backend.cuh"
#include "executor.cuh"

#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

namespace lstm_ext {
namespace {

template <typename scalar_t>
using Executor = cuda::Executor<cuda::Backend, scalar_t>;

// The current stream, cuBLAS handle and launches are those of the current
// device: make it x's. (The op's checks reject x off the GPU, or any
// argument on another device.)
c10::cuda::OptionalCUDAGuard current_device_for(const Tensor& x) {
  return c10::cuda::OptionalCUDAGuard(x.is_cuda() ? std::optional(x.device()) : std::nullopt);
}

LayerOut lstm_layer_cuda(const Tensor& x, const Tensor& batch_sizes, const Tensor& h0,
                         const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
                         const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr,
                         bool reverse) {
  const auto guard = current_device_for(x);
  return forward_op<Executor>(c10::DeviceType::CUDA, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih,
                              b_hh, w_hr, reverse);
}

LayerGrads lstm_layer_backward_cuda(const OptTensor& dy, const OptTensor& dh_n,
                                    const OptTensor& dc_n, const Tensor& x,
                                    const Tensor& batch_sizes, const Tensor& h0, const Tensor& c0,
                                    const Tensor& w_ih, const Tensor& w_hh, const OptTensor& w_hr,
                                    const Tensor& y, const Tensor& gates, const Tensor& cells,
                                    bool reverse, std::array<bool, 4> output_mask) {
  const auto guard = current_device_for(x);
  return backward_op<Executor>(c10::DeviceType::CUDA, dy, dh_n, dc_n, x, batch_sizes, h0, c0,
                               w_ih, w_hh, w_hr, y, gates, cells, reverse, output_mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(lstm_ext, CUDA, m) {
  m.impl("lstm_layer", &lstm_layer_cuda);
  m.impl("lstm_layer_backward", &lstm_layer_backward_cuda);
}

}  // namespace lstm_ext
