// CPU fused pass: moments and (optionally) a uniform or log histogram of many tensors at once.
// Callers (the bindings) have validated every input; these functions assume valid views.
#pragma once
#include <cstdint>
#include <vector>

#include "pws/moment_state.h"
#include "pws/tensor_view.h"

namespace pws::cpu {

enum class HistKind : int { None = 0, Uniform = 1, Log = 2 };

struct HistRequest {
  HistKind kind = HistKind::None;
  // Uniform: one edges array per tensor (bins + 1 values each, may all point to the same array).
  int64_t bins = 0;
  std::vector<const double*> edges;
  // Log: mantissa bits.
  int mantissa_bits = 7;
};

struct HistOutput {
  int64_t first = 0;            // global index of counts[0] (log layout), 0 for uniform
  std::vector<int64_t> counts;  // uniform: bins; log: the non-empty window
  int64_t underflow = 0;
  int64_t overflow = 0;
  int64_t nan = 0;
};

struct DescribeOutput {
  MomentState state;
  HistOutput hist;
};

// One fused pass over every tensor. `moments=false` skips the moment accumulation (min, max and
// the special-value counts are always computed). Deterministic for any number of threads.
std::vector<DescribeOutput> describe(const std::vector<TensorView>& views, bool moments,
                                     const HistRequest& hist);

int max_threads();
void set_threads(int n);
const char* simd_name();

}  // namespace pws::cpu
