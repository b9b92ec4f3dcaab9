// Walking a strided tensor in fixed-size pieces of its flattened index space. Dimensions are
// reordered by stride and merged where contiguous; the visiting order only changes rounding,
// never which piece a value falls in, so results stay independent of the thread count.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstdlib>

#include "pws/tensor_view.h"

namespace pws::cpu {

struct FlatView {
  const char* base = nullptr;
  int esize = 4;
  int ndim = 0;  // after coalescing; innermost last
  int64_t shape[kMaxDims] = {};
  int64_t strides[kMaxDims] = {};  // elements, all >= 0
  int64_t numel = 0;
  bool contiguous() const { return ndim <= 1 && (ndim == 0 || strides[0] == 1 || shape[0] <= 1); }
};

inline FlatView flatten(const TensorView& v) {
  FlatView f;
  f.esize = dtype_size(v.dtype);
  f.numel = v.numel;
  const char* base = static_cast<const char*>(v.data);
  int64_t sh[kMaxDims], st[kMaxDims];
  int n = 0;
  for (int d = 0; d < v.ndim; ++d) {
    if (v.shape[d] == 1) continue;
    int64_t s = v.strides[d];
    if (s < 0) {  // walk negative strides forwards from the lowest address
      base += (v.shape[d] - 1) * s * f.esize;
      s = -s;
    }
    sh[n] = v.shape[d];
    st[n] = s;
    ++n;
  }
  // order by decreasing stride so the innermost dimension has the smallest stride
  int idx[kMaxDims];
  for (int i = 0; i < n; ++i) idx[i] = i;
  std::stable_sort(idx, idx + n, [&](int a, int b) { return st[a] > st[b]; });
  int m = 0;
  for (int k = 0; k < n; ++k) {
    const int64_t s = st[idx[k]], z = sh[idx[k]];
    if (m > 0 && f.strides[m - 1] == s * z) {  // merge with the outer dimension
      f.shape[m - 1] *= z;
      f.strides[m - 1] = s;
    } else {
      f.shape[m] = z;
      f.strides[m] = s;
      ++m;
    }
  }
  f.ndim = m;
  f.base = base;
  return f;
}

// Copy-convert elements [start, start + count) of the flattened view into `out`.
template <class T, class CT, class LoadFn>
inline void gather(const FlatView& f, int64_t start, int64_t count, CT* out, LoadFn load) {
  const T* p = reinterpret_cast<const T*>(f.base);
  if (f.ndim == 0) {
    if (count > 0) out[0] = load(p);
    return;
  }
  int64_t idx[kMaxDims];
  int64_t rem = start;
  for (int d = f.ndim - 1; d >= 0; --d) {
    idx[d] = rem % f.shape[d];
    rem /= f.shape[d];
  }
  int64_t k = 0;
  const int inner = f.ndim - 1;
  const int64_t istride = f.strides[inner];
  while (k < count) {
    int64_t off = 0;
    for (int d = 0; d < inner; ++d) off += idx[d] * f.strides[d];
    const int64_t run = std::min(count - k, f.shape[inner] - idx[inner]);
    const T* q = p + off + idx[inner] * istride;
    for (int64_t i = 0; i < run; ++i) out[k + i] = load(q + i * istride);
    k += run;
    idx[inner] += run;
    for (int d = inner; d > 0 && idx[d] == f.shape[d]; --d) {
      idx[d] = 0;
      ++idx[d - 1];
    }
  }
}

}  // namespace pws::cpu
