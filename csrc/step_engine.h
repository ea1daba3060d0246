#pragma once
// The step engine: how a recurrent layer's time loop is cut and shared
// between threads, knowing nothing of the cell it runs. A cell's passes
// (layer.h for the LSTM) give it phases; it runs them for every step, in
// blocks of steps, in processing order or in its reverse.
//
// The recurrence couples the steps of a sequence, never two sequences. A step
// runs as phases, each over hidden units or over output columns (the LSTM's
// forward: the gates' product and the cell pass by units, then the
// projection by columns). The executor chooses how to share the work between
// its threads (run_steps): by sequences, each thread running every phase of
// its own rows, step after step, with no barrier; or by units and columns,
// every thread taking part of each phase of each step, with a barrier after
// each phase (few sequences per thread: each keeps its slice of the weights
// in cache). Within a phase, a cell may go a chunk of units at a time
// (for_each_chunk_of_units), so that a chunk's product and its cell pass
// meet in cache.
//
// Where a pass need not keep every row's values at once, it works a block of
// steps at a time (for_each_block): few products of many rows, in a
// workspace that does not grow with T.
//
// The executor supplies:
//   for_each_row_range(steps, flops_per_row, body)   calls body(first, last)
//   split_by_units(steps, flops_per_row, units), for_each_part(extent, align, body)
//   chunk_units(rows, H)   units per chunk of a fused product and cell pass
//   copy(dst, src, n)
//
// Within a step, row r is sequence r. Its previous state is row r of the
// previously processed step if r < carried(t), else row r of the initial
// state.

#include "types.h"

#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <utility>

namespace lstm_ext {

// Where the rows of every step need not be kept at once, a pass keeps a block
// of steps' rows of its widest per-row buffer (4H gates for the LSTM) in a
// workspace of about kWorkspace elements (2 MB in float32), but of at least
// kBlockRows rows (8 MB of float32 gates at H = 1024), so that the products
// over a block (the weight gradients' sums over its rows) stay long, and at
// least one step. 2 MB rather than the
// 8 MB it was: the same speed (benchmarks/README.md, large batches), and
// below nn.LSTM's peak memory without grad.
constexpr int64_t kWorkspace = int64_t(1) << 19;
constexpr int64_t kBlockRows = 512;

// The rows of a block of steps whose widest per-row buffer is `width` wide.
inline int64_t block_rows(int64_t width, int64_t batch) {
  return std::max({kWorkspace / width, kBlockRows, batch});
}

// A per-row buffer (a (rows, width) tensor, or undefined) with its data typed
// once: at(r) is row r.
template <typename T>
struct Rows {
  Tensor tensor;
  T* data;
  int64_t width;

  explicit Rows(Tensor t)
      : tensor(std::move(t)),
        data(ptr<T>(tensor)),
        width(tensor.defined() ? tensor.size(1) : 0) {
    TORCH_INTERNAL_ASSERT(!tensor.defined() || (tensor.dim() == 2 && tensor.is_contiguous()));
  }
  T* at(int64_t r) const { return data + r * width; }
  explicit operator bool() const { return data != nullptr; }
};

// Steps [begin, end) of the processing order, whose rows are contiguous:
// `rows` of them from row0 on.
struct Block {
  int64_t begin, end, rows, row0;
};

// Calls fn(Block) for consecutive blocks of at most max_rows rows (a step of
// more is a block alone) covering every step, in processing order or,
// backwards, in its reverse.
template <typename Fn>
void for_each_block(const Steps& steps, int64_t max_rows, bool backwards, const Fn& fn) {
  const int64_t count = steps.count();
  const auto size = [&](int64_t s) { return steps.size(steps.time(s)); };
  for (int64_t done = 0; done < count;) {
    // The block grows from `first` away from the steps already done.
    const int64_t first = backwards ? count - 1 - done : done, dir = backwards ? -1 : 1;
    int64_t last = first, rows = size(first);
    while (done + (last - first) * dir + 1 < count && rows + size(last + dir) <= max_rows) {
      last += dir;
      rows += size(last);
    }
    const int64_t begin = std::min(first, last), end = std::max(first, last) + 1;
    done += end - begin;
    fn(Block{begin, end, rows,
             std::min(steps.offset(steps.time(begin)), steps.offset(steps.time(end - 1)))});
  }
}

// What a range of sequences [first, last) does at step t: its rows of the
// step are [first, rows) and start at row `off` of every per-row buffer; rows
// [first, split) continue from the step processed before (whose rows start
// at `prev`), rows [split, rows) start from the initial state.
struct StepRows {
  int64_t t, first, rows, off, carried, prev, split;
};

inline StepRows step_rows(const Steps& steps, int64_t t, int64_t first, int64_t last) {
  const int64_t rows = std::min(last, steps.size(t)), carried = steps.carried(t);
  return {t, first, rows, steps.offset(t), carried,
          carried > 0 ? steps.offset(steps.previous(t)) : 0, std::clamp(carried, first, rows)};
}

// Time index of the i-th of the block's steps in processing order, or, for a
// backward pass, in its reverse.
inline int64_t step_time(const Steps& steps, const Block& b, int64_t i, bool backwards) {
  return steps.time(backwards ? b.end - 1 - (i - b.begin) : i);
}

// One phase of a step: fn(StepRows, lo, hi) does [lo, hi) of [0, extent)
// (units or columns) for the rows; split, the pieces start at multiples of
// `align`.
template <typename Fn>
struct Phase {
  int64_t extent, align;
  Fn fn;
};

template <typename Fn>
Phase<Fn> phase(int64_t extent, int64_t align, Fn fn) {
  return {extent, align, std::move(fn)};
}

// Runs the block's steps (backwards: in reverse), each as its phases in
// order, shared between the executor's threads by sequences or by units (see
// the top of this file). A phase of extent 0 is skipped.
template <typename Ex, typename... Phases>
void run_steps(Ex& ex, const Steps& steps, const Block& b, bool backwards, int64_t flops_per_row,
               int64_t units, const Phases&... phases) {
  if (ex.split_by_units(steps, flops_per_row, units)) {
    for (int64_t i = b.begin; i < b.end; ++i) {
      const int64_t t = step_time(steps, b, i, backwards);
      const StepRows r = step_rows(steps, t, 0, steps.size(t));
      const auto run = [&](const auto& p) {
        if (p.extent > 0) {
          ex.for_each_part(p.extent, p.align, [&](int64_t lo, int64_t hi) { p.fn(r, lo, hi); });
        }
      };
      (run(phases), ...);
    }
    return;
  }
  ex.for_each_row_range(steps, flops_per_row, [&](int64_t first, int64_t last) {
    for (int64_t i = b.begin; i < b.end; ++i) {
      const StepRows r = step_rows(steps, step_time(steps, b, i, backwards), first, last);
      if (r.first >= r.rows) continue;
      const auto run = [&](const auto& p) {
        if (p.extent > 0) p.fn(r, 0, p.extent);
      };
      (run(phases), ...);
    }
  });
}

// Calls fn(a, b) over units [u0, u1) in chunks [a, b) small enough that a
// chunk's gates (of `rows` rows) stay in cache between its product and its
// cell pass.
template <typename Ex, typename Fn>
void for_each_chunk_of_units(const Ex& ex, int64_t rows, int64_t H, int64_t u0, int64_t u1,
                             const Fn& fn) {
  const int64_t chunk = ex.chunk_units(rows, H);
  for (int64_t a = u0; a < u1; a += chunk) fn(a, std::min(u1, a + chunk));
}

// Runs of rows whose previous states are consecutive rows of one buffer:
// calls fn(row, count, from_out, source) for the rows [row, row + count) of
// the steps [t0, t1) (time order), whose h_{t-1} are rows [source, source +
// count) of the layer's output (from_out) or of the initial state. A weight's
// gradient or tangent through h_{t-1} is then a product per run, with no copy
// of the rows: padded input has two runs.
template <typename Fn>
void for_each_previous_state_run(const Steps& steps, int64_t t0, int64_t t1, const Fn& fn) {
  int64_t row = 0, count = 0, source = 0;  // the run from the output being extended
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t off = steps.offset(t), carried = steps.carried(t), size = steps.size(t);
    if (carried > 0) {
      const int64_t from = steps.offset(steps.previous(t));
      if (count > 0 && off == row + count && from == source + count) {
        count += carried;
      } else {
        if (count > 0) fn(row, count, true, source);
        row = off, count = carried, source = from;
      }
    }
    if (carried < size) fn(off + carried, size - carried, false, carried);
  }
  if (count > 0) fn(row, count, true, source);
}

// Row b of the result is sequence b's row of its last processed step in
// `rows` (a per-row buffer of the given width): the final state. Device
// copies of contiguous ranges, so nothing waits on the host.
template <typename T, typename Ex>
Tensor final_state(Ex& ex, const Steps& steps, const Tensor& rows, int64_t batch) {
  const int64_t width = rows.size(1);
  Tensor out = at::empty({batch, width}, rows.options());
  for (int64_t t = 0; t < steps.count(); ++t) {
    const auto [first, last] = steps.ending_at(t);
    ex.copy(ptr<T>(out) + first * width, ptr<T>(rows) + (steps.offset(t) + first) * width,
            (last - first) * width);
  }
  return out;
}

}  // namespace lstm_ext
