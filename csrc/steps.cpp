#include "types.h"

namespace lstm_ext {

Steps::Steps(const Tensor& batch_sizes, bool reverse) : reverse_(reverse) {
  const auto* sizes = batch_sizes.data_ptr<int64_t>();
  const int64_t count = batch_sizes.numel();
  size_.assign(sizes, sizes + count);
  offset_.resize(count);
  int64_t offset = 0;
  for (int64_t t = 0; t < count; ++t) {
    offset_[t] = offset;
    offset += size_[t];
  }
  // Sizes do not increase, so sequence b runs while size(t) > b.
  length_.assign(count > 0 ? size_[0] : 0, 0);
  for (int64_t t = 0; t < count; ++t) {
    for (int64_t b = 0; b < size_[t]; ++b) ++length_[b];
  }
}

std::pair<int64_t, int64_t> Steps::ending_at(int64_t t) const {
  if (reverse_) return {0, t == 0 ? size_[0] : 0};
  return {t + 1 < count() ? size_[t + 1] : 0, size_[t]};
}

std::vector<int64_t> Steps::split(int64_t parts) const {
  const int64_t batch = static_cast<int64_t>(length_.size());
  int64_t total = 0;
  for (int64_t len : length_) total += len;
  std::vector<int64_t> bounds{0};
  int64_t b = 0, done = 0;
  for (int64_t part = 1; part < parts; ++part) {
    while (b < batch && done * parts < total * part) done += length_[b++];
    bounds.push_back(b);
  }
  bounds.push_back(batch);
  return bounds;
}

int64_t Steps::carried(int64_t t) const {
  if (reverse_) return t == count() - 1 ? 0 : size_[t + 1];
  return t == 0 ? 0 : size_[t];
}

}  // namespace lstm_ext
