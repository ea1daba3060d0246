#include "types.h"

#include <algorithm>

namespace lstm_ext {

std::vector<int64_t> gate_order(int64_t hidden, int64_t group) {
  std::vector<int64_t> order(4 * hidden);
  for (int64_t j0 = 0; j0 < hidden; j0 += group) {
    const int64_t g = std::min(group, hidden - j0);
    for (int64_t k = 0; k < 4; ++k) {
      for (int64_t i = 0; i < g; ++i) order[4 * j0 + k * g + i] = k * hidden + j0 + i;
    }
  }
  return order;
}

}  // namespace lstm_ext
