// Driver of the host-emulated CUDA kernels (tests/test_cuda_emulated.py; see cuda_emu/pws_emu.h).
// Runs the engine's real launchers (csrc/cuda/*.cu compiled with -DPWS_CUDA_EMULATION) on cases
// read from a binary file and writes their raw device results, which the Python test decodes and
// checks against float64 references and the CPU engine.
//
// Input (little-endian int64 unless noted): ncases, then per case its kind:
//   0 describe: hist_kind, bins, mantissa_bits, edge_mode, lo (f64), hi (f64), total (0: none,
//     1: states, 2: states and histograms), P; per tensor: dtype, ndim, offset (elements from the
//     buffer start to element [0, ..., 0]), nbytes, shape[ndim], strides[ndim] (elements), the
//     buffer (nbytes, padded to 8); with edge_mode 3: P x (bins + 1) f64 edges.
//   1 distances: k, b, metric, counts[k * b], centres[b] (f64).
// Output per case: status (0 ok, 1 error: then the message length and bytes, padded to 8);
//   describe: P, nb, record, edge_arrays; (P + 1) state rows of 8 f64 (mean, M2, M3, M4, min, max,
//     sum|x|, sum x^2) and 5 int64 (count, NaN, +Inf, -Inf, zero); (P + 1) x record int64
//     histogram records; edge_arrays x (bins + 1) f64 edges.
//   distances: k x k f64.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "../../csrc/bindings/cuda_entry.h"
#include "../../csrc/cuda/describe_cuda.h"
#include "../../csrc/cuda/distances_cuda.h"

namespace {

namespace cu = pws::cuda;

struct Reader {
  FILE* f;
  int64_t i64() {
    int64_t v = 0;
    bytes(&v, 8);
    return v;
  }
  double f64() {
    double v = 0;
    bytes(&v, 8);
    return v;
  }
  void bytes(void* dst, size_t n) {
    if (n > 0 && std::fread(dst, 1, n, f) != n) throw std::runtime_error("truncated input");
    const size_t pad = (8 - n % 8) % 8;
    char skip[8];
    if (pad > 0 && std::fread(skip, 1, pad, f) != pad) throw std::runtime_error("truncated input");
  }
};

struct Writer {
  std::vector<char> out;
  void put(const void* p, size_t n) {
    const char* c = static_cast<const char*>(p);
    out.insert(out.end(), c, c + n);
    out.resize(out.size() + (8 - n % 8) % 8, 0);
  }
  void i64(int64_t v) { put(&v, 8); }
};

struct Freer {
  void operator()(void* p) const { std::free(p); }
};
using Buffer = std::unique_ptr<void, Freer>;

// Exactly `bytes` (256-byte aligned, like a device allocation): a sanitizer build of the driver
// reports any read past an input's last byte.
Buffer alloc(size_t bytes) {
  void* p = nullptr;
  if (posix_memalign(&p, 256, bytes > 0 ? bytes : 1) != 0) throw std::bad_alloc();
  return Buffer(p);
}

void run_describe(Reader& in, Writer& out) {
  cu::Request req;
  req.hist_kind = static_cast<int>(in.i64());
  req.bins = in.i64();
  req.mantissa_bits = static_cast<int>(in.i64());
  req.edge_mode = static_cast<int>(in.i64());
  req.lo = in.f64();
  req.hi = in.f64();
  const int64_t total = in.i64();
  const int64_t P = in.i64();
  std::vector<Buffer> buffers;
  std::vector<pws::TensorView> views;
  for (int64_t t = 0; t < P; ++t) {
    pws::TensorView v;
    v.dtype = static_cast<pws::DType>(in.i64());
    v.device = pws::DeviceKind::CUDA;
    v.ndim = static_cast<int>(in.i64());
    const int64_t offset = in.i64();
    const int64_t nbytes = in.i64();
    v.numel = 1;
    for (int d = 0; d < v.ndim; ++d) v.numel *= (v.shape[d] = in.i64());
    for (int d = 0; d < v.ndim; ++d) v.strides[d] = in.i64();
    buffers.push_back(alloc(static_cast<size_t>(nbytes)));
    in.bytes(buffers.back().get(), static_cast<size_t>(nbytes));
    v.data = static_cast<const char*>(buffers.back().get()) + offset * pws::dtype_size(v.dtype);
    views.push_back(v);
  }
  std::vector<double> host_edges;
  if (req.edge_mode == cu::kEdgesExplicit) {
    host_edges.resize(static_cast<size_t>(P * (req.bins + 1)));
    in.bytes(host_edges.data(), host_edges.size() * 8);
  }
  // the whole case is read first: a refused input leaves the next case readable
  std::vector<cu::Entry> entries;
  std::vector<int64_t> numels;
  for (const pws::TensorView& v : views) {
    entries.push_back(pws::bind::make_entry(v, "input " + std::to_string(entries.size())));
    numels.push_back(v.numel);
  }
  const cu::Layout L = cu::make_layout(numels, req);
  void* result = cu::alloc_async(L.result_bytes, nullptr);
  void* scratch = cu::alloc_async(L.scratch_bytes, nullptr);
  std::unique_ptr<void, void (*)(void*)> keep_result(
      result, [](void* p) { cu::free_async_noexcept(p, nullptr); });
  std::unique_ptr<void, void (*)(void*)> keep_scratch(
      scratch, [](void* p) { cu::free_async_noexcept(p, nullptr); });
  cu::launch_describe(entries, req, L, result, scratch, nullptr,
                      host_edges.empty() ? nullptr : host_edges.data());
  // the first total of a result adds into the record launch_describe zeroed (the emulator fills
  // fresh memory with garbage, so a missed zeroing shows)
  if (total > 0) cu::launch_total(req, L, result, nullptr, total > 1, false);
  cu::stream_synchronize(nullptr);  // the work is only queued until the host waits for it
  out.i64(0);
  out.i64(L.tensors);
  out.i64(L.nb);
  out.i64(L.record);
  out.i64(L.edge_arrays);
  const char* r = static_cast<const char*>(result);
  for (int64_t t = 0; t <= P; ++t) {
    pws::MomentState s;
    std::memcpy(&s, r + L.off_states + static_cast<size_t>(t) * sizeof(s), sizeof(s));
    const double f[8] = {s.mean, s.m2, s.m3, s.m4, s.min, s.max, s.sum_abs, s.sum_sq};
    const int64_t n[5] = {s.n, s.nan, s.posinf, s.neginf, s.zero};
    out.put(f, sizeof f);
    out.put(n, sizeof n);
  }
  out.put(r + L.off_hist, static_cast<size_t>((P + 1) * L.record) * 8);
  out.put(r + L.off_edges, static_cast<size_t>(L.edge_arrays * (req.bins + 1)) * 8);
}

void run_distances(Reader& in, Writer& out) {
  const int64_t k = in.i64(), b = in.i64(), metric = in.i64();
  std::vector<int64_t> counts(static_cast<size_t>(k * b));
  std::vector<double> centres(static_cast<size_t>(b));
  in.bytes(counts.data(), counts.size() * 8);
  in.bytes(centres.data(), centres.size() * 8);
  std::vector<double> d(static_cast<size_t>(k * k));
  cu::pairwise_distances(counts.data(), k, b, centres.data(), static_cast<int>(metric), 0,
                         d.data());
  out.i64(0);
  out.put(d.data(), d.size() * 8);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s CASES RESULTS\n", argv[0]);
    return 2;
  }
  FILE* f = std::fopen(argv[1], "rb");
  if (f == nullptr) {
    std::perror(argv[1]);
    return 2;
  }
  Reader in{f};
  Writer out;
  int rc = 0;
  try {
    const int64_t n = in.i64();
    for (int64_t c = 0; c < n; ++c) {
      const int64_t kind = in.i64();
      const size_t mark = out.out.size();
      try {
        if (kind == 0) {
          run_describe(in, out);
        } else if (kind == 1) {
          run_distances(in, out);
        } else {
          throw std::runtime_error("unknown case kind " + std::to_string(kind));
        }
      } catch (const std::exception& e) {  // a CUDA error or a refused input: reported per case
        out.out.resize(mark);
        out.i64(1);
        const std::string msg = e.what();
        out.i64(static_cast<int64_t>(msg.size()));
        out.put(msg.data(), msg.size());
        if (kind != 0 && kind != 1) break;  // its input cannot be skipped
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cuda_emu_check: %s\n", e.what());
    rc = 2;
  }
  std::fclose(f);
  FILE* o = std::fopen(argv[2], "wb");
  if (o == nullptr || std::fwrite(out.out.data(), 1, out.out.size(), o) != out.out.size()) {
    std::perror(argv[2]);
    return 2;
  }
  std::fclose(o);
  return rc;
}
