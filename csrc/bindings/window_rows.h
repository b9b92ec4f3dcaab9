// Copies of the touched windows of n consecutive log-histogram records into host staging, shared
// by the CUDA result fetches. Plain C++ (the copies are a template argument), so the layout logic
// is testable on a host without a GPU.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace pws {

// Records are `rec` int64 apart, their counts start after `header` int64; window k spans buckets
// [first[k], first[k] + len[k]). One 2-D copy of the columns all windows span when that moves at
// most 4x the values needed (or under 1 M values), else one copy per window (a few scattered
// tensors could otherwise make the 2-D copy huge, e.g. m = 10 and wide ranges).
class WindowRows {
 public:
  WindowRows(const int64_t* first, const int64_t* len, size_t n) : first_(first), len_(len), n_(n) {
    int64_t lo = INT64_MAX, hi = -1;
    size_t total = 0;
    offs_.resize(n);
    for (size_t k = 0; k < n; ++k) {
      offs_[k] = total;
      total += static_cast<size_t>(len[k]);
      if (len[k] > 0) {
        lo = std::min(lo, first[k]);
        hi = std::max(hi, first[k] + len[k] - 1);
      }
    }
    lo_ = hi >= 0 ? lo : 0;
    width_ = hi >= 0 ? static_cast<size_t>(hi - lo + 1) : 0;
    dense_ = n * width_ <= std::max<size_t>(size_t(1) << 20, 4 * total);
    values_ = dense_ ? n * width_ : total;
  }

  // int64 values of staging the copies need.
  size_t values() const { return values_; }
  bool dense() const { return dense_; }

  // Enqueue the copies from the records at `hist` into `stage`. Copies has
  // rows(dst, src, width_bytes, src_pitch_bytes, height) and one(dst, src, bytes).
  template <class Copies>
  void enqueue(int64_t* stage, const char* hist, size_t rec, size_t header,
               const Copies& copies) const {
    if (dense_) {
      if (width_ > 0) {
        copies.rows(stage, hist + (header + static_cast<size_t>(lo_)) * 8, width_ * 8, rec * 8, n_);
      }
      return;
    }
    for (size_t k = 0; k < n_; ++k) {
      if (len_[k] == 0) continue;
      copies.one(stage + offs_[k], hist + (k * rec + header + static_cast<size_t>(first_[k])) * 8,
                 static_cast<size_t>(len_[k]) * 8);
    }
  }

  // Window k in `stage` once the copies completed.
  const int64_t* row(const int64_t* stage, size_t k) const {
    return dense_ ? stage + k * width_ + static_cast<size_t>(first_[k] - lo_) : stage + offs_[k];
  }

 private:
  const int64_t* first_;
  const int64_t* len_;
  size_t n_;
  std::vector<size_t> offs_;
  int64_t lo_ = 0;
  size_t width_ = 0;
  bool dense_ = true;
  size_t values_ = 0;
};

}  // namespace pws
