// The lstm_ext ops on CUDA.

#include "../device_ops.h"
#include "backend.cuh"
#include "executor.cuh"

#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

namespace lstm_ext {
namespace {

template <typename scalar_t>
using Executor = cuda::Executor<cuda::Backend, scalar_t>;

// The current stream, cuBLAS handle and launches are those of the current
// device: make it x's. (The ops' checks reject x off the GPU, or any
// argument on another device.)
struct DeviceGuard {
  explicit DeviceGuard(const Tensor& x)
      : guard(x.is_cuda() ? std::optional(x.device()) : std::nullopt) {}
  c10::cuda::OptionalCUDAGuard guard;
};

}  // namespace
}  // namespace lstm_ext

TORCH_LIBRARY_IMPL(lstm_ext, CUDA, m) {
  using Ops = lstm_ext::DeviceOps<lstm_ext::Executor, c10::DeviceType::CUDA, lstm_ext::DeviceGuard>;
  Ops::register_kernels(m);
}
