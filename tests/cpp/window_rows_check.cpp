// Host check of pws::WindowRows (csrc/bindings/window_rows.h), the copy plan of the CUDA result
// fetches: random log-histogram records and windows, copied with memcpy in place of the device
// copies; every window must come back exactly, in both the 2-D and the per-window mode.
// Prints "bad=<mismatches> dense=<trials> sparse=<trials>".
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "window_rows.h"

namespace {

struct HostCopies {
  void rows(void* dst, const void* src, size_t width, size_t pitch, size_t height) const {
    for (size_t r = 0; r < height; ++r) {
      std::memcpy(static_cast<char*>(dst) + r * width, static_cast<const char*>(src) + r * pitch,
                  width);
    }
  }
  void one(void* dst, const void* src, size_t bytes) const { std::memcpy(dst, src, bytes); }
};

}  // namespace

int main() {
  std::mt19937_64 gen(1);
  long bad = 0, dense = 0, sparse = 0;
  // One buffer of records, filled once and reused: values depend on the position only.
  const size_t max_values = 40 * (5 + 520193);
  std::vector<int64_t> recs(max_values);
  for (size_t i = 0; i < max_values; ++i) recs[i] = static_cast<int64_t>((i * 2654435761u) % 1000);
  for (int trial = 0; trial < 3000; ++trial) {
    const bool wide = trial % 3 == 0;         // m = 10: scattered windows, per-window copies
    const int64_t nb = wide ? 520193 : 4065;  // buckets of m = 10 and m = 3
    const size_t n = 1 + gen() % 40, hdr = 5, rec = hdr + static_cast<size_t>(nb);
    std::vector<int64_t> first(n, 0), len(n, 0);
    for (size_t k = 0; k < n; ++k) {
      if (gen() % 5 == 0) continue;  // no finite value: empty window
      const int64_t span = 1 + static_cast<int64_t>(gen() % (wide ? 300 : 800));
      first[k] = static_cast<int64_t>(gen() % static_cast<uint64_t>(nb - span + 1));
      len[k] = span;
    }
    const pws::WindowRows w(first.data(), len.data(), n);
    std::vector<int64_t> stage(w.values() + 1, -7);
    w.enqueue(stage.data(), reinterpret_cast<const char*>(recs.data()), rec, hdr, HostCopies{});
    (w.dense() ? dense : sparse)++;
    if (stage[w.values()] != -7) ++bad;  // nothing written past the staging it asked for
    for (size_t k = 0; k < n; ++k) {
      const int64_t* row = w.row(stage.data(), k);
      for (int64_t j = 0; j < len[k]; ++j) {
        if (row[j] != recs[k * rec + hdr + static_cast<size_t>(first[k] + j)]) ++bad;
      }
    }
  }
  std::printf("bad=%ld dense=%ld sparse=%ld\n", bad, dense, sparse);
  return bad == 0 ? 0 : 1;
}
