#pragma once
// Where a CPU layer's time goes, by kind of work: what benchmarks/phases.py
// reads (through the test op _cpu_profile) to put a GF/s on each phase. Off,
// it costs each timed call one relaxed load; on, two clock reads and three
// atomic adds per call (a product or a chunk's cell pass: microseconds).

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>

namespace lstm_ext::cpu {

// Products on the calling thread are timed per thread (they run inside the
// time loop's threads: their times add up over the threads); the rest are
// wall times on the thread that calls them.
enum class Work : int {
  layout,           // weights laid out for the products
  sequence_gemm,    // whole-block products: input projection, input gradient
  step_gemm,        // a step's products: recurrent, projection, dL/dh_{t-1}
  weight_gemm,      // weight gradients
  cell_forward,     // the cell passes (flops: one per row and unit)
  cell_backward,
  time_loop,        // wall time inside the time loop's parallel regions
  count
};

inline constexpr std::array<const char*, static_cast<int>(Work::count)> kWorkNames{
    "layout", "sequence_gemm", "step_gemm", "weight_gemm", "cell_forward", "cell_backward",
    "time_loop"};

struct Profile {
  std::atomic<bool> on{false};
  std::array<std::atomic<int64_t>, static_cast<int>(Work::count)> ns{}, calls{}, flops{};
};

inline Profile& profile() {
  static Profile p;
  return p;
}

// Adds its lifetime to `work` when the profile is on.
class Timed {
 public:
  Timed(Work work, int64_t flops)
      : work_(static_cast<int>(work)), flops_(flops), on_(profile().on.load(std::memory_order_relaxed)) {
    if (on_) start_ = std::chrono::steady_clock::now();
  }
  ~Timed() {
    if (!on_) return;
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                        std::chrono::steady_clock::now() - start_)
                        .count();
    Profile& p = profile();
    p.ns[work_].fetch_add(ns, std::memory_order_relaxed);
    p.calls[work_].fetch_add(1, std::memory_order_relaxed);
    p.flops[work_].fetch_add(flops_, std::memory_order_relaxed);
  }
  Timed(const Timed&) = delete;
  Timed& operator=(const Timed&) = delete;

 private:
  int work_;
  int64_t flops_;
  bool on_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace lstm_ext::cpu
