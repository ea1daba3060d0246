// Weights laid out once per call for the CPU's products (gemm.h), and
// weight gradients put back in PyTorch's gate order.

#include "gemm.h"

#include "brgemm_pairs.h"
#include "tiles.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <vector>

namespace lstm_ext::cpu {

at::Tensor weight_layout(const at::Tensor& b, Gates gates, int64_t group) {
  const int64_t k = b.size(0), n = b.size(1);
  const bool gate_columns = gates == Gates::columns, gate_rows = gates == Gates::rows;
  // order[i]: the source index of position i along the gates dimension.
  const std::vector<int64_t> order =
      gates == Gates::none ? std::vector<int64_t>() : gate_order((gate_rows ? k : n) / 4, group);
  const auto column = [&](int64_t c) { return gate_columns ? order[c] : c; };
  // b in the gate order, contiguous.
  const auto ordered = [&] {
    if (order.empty()) return b.contiguous();
    const at::Tensor index = at::empty({int64_t(order.size())}, b.options().dtype(at::kLong));
    std::copy(order.begin(), order.end(), index.data_ptr<int64_t>());
    return b.index_select(gate_rows ? 0 : 1, index).contiguous();
  };
  // nn.LSTM's weights come transposed (b = w.t()): their panels are
  // transposed blocks of w, with no transposed copy of w made first.
  const bool of_transpose = !gate_rows && b.stride(0) == 1 && b.stride(1) != 1;
  const auto type = b.scalar_type();
  if (type == at::kBFloat16 || type == at::kHalf) {
    // A pair of rows of a VNNI panel is a 32-bit word of a row of w.
    if (!of_transpose || b.stride(1) != k || k % 2 != 0) return vnni_panels(ordered());
    at::Tensor panels = at::empty({k, n}, b.options());
    transposed_panels(reinterpret_cast<const float*>(b.const_data_ptr()), k / 2, n, column,
                      reinterpret_cast<float*>(panels.data_ptr()));
    return panels;
  }
  if (type != at::kFloat) return ordered();
  const at::Tensor src = of_transpose ? b.t().contiguous() : b.contiguous();
  at::Tensor panels = at::empty({k, n}, b.options());
  const float* from = src.const_data_ptr<float>();
  float* dst = panels.data_ptr<float>();
  if (of_transpose) {
    transposed_panels(from, k, n, column, dst);
    return panels;
  }
  // The panel of columns [j, j + width) starts at k * j.
  for_each_panel(n, k * n * 4, [&](int64_t j, int64_t width) {
    float* panel = dst + k * j;
    for (int64_t p = 0; p < k; ++p) {
      const float* row = from + (gate_rows ? order[p] : p) * n;
      float* out = panel + p * width;
      if (!gate_columns) {
        std::copy_n(row + j, width, out);
      } else {
        for (int64_t c = j; c < j + width; ++c) out[c - j] = row[order[c]];
      }
    }
  });
  return panels;
}

namespace {

// Moves values [c0, c1) of each of `order.size()` blocks (block stride
// `stride`) at t from block p to block order[p], cycle by cycle.
template <typename T>
void permute_blocks(T* t, const std::vector<int64_t>& order, int64_t stride, int64_t c0,
                    int64_t c1) {
  const int64_t width = c1 - c0;
  std::vector<bool> done(order.size());
  std::vector<T> carry(width), next(width);
  for (size_t start = 0; start < order.size(); ++start) {
    if (done[start]) continue;
    std::copy_n(t + start * stride + c0, width, carry.begin());
    for (size_t p = start; !done[p]; p = order[p]) {
      done[p] = true;
      T* to = t + order[p] * stride + c0;
      std::copy_n(to, width, next.begin());
      std::copy_n(carry.begin(), width, to);
      std::swap(carry, next);
    }
  }
}

}  // namespace

void to_pytorch_gate_order(at::Tensor& t, int64_t dim, int64_t group) {
  const int64_t hidden = t.size(dim) / 4;
  if (group >= hidden) return;
  const std::vector<int64_t> order = gate_order(hidden, group);
  const int64_t outer = t.numel() / (t.size(dim) * t.stride(dim)), width = t.stride(dim);
  AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "to_pytorch_gate_order", [&] {
    scalar_t* data = t.data_ptr<scalar_t>();
    // Each thread moves its own columns of every block.
    at::parallel_for(0, width, grain(0, width, t.nbytes()), [&](int64_t c0, int64_t c1) {
      for (int64_t o = 0; o < outer; ++o) {
        permute_blocks(data + o * t.size(dim) * width, order, width, c0, c1);
      }
    });
  });
}

}  // namespace lstm_ext::cpu
