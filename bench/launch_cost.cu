// Device cost of a kernel launch by the size of its __grid_constant__ parameter (a standalone
// microbenchmark for bench/gpu_check.sh; it does not use pyweightstat).
//
// A CUDA pass of pyweightstat is two launches, the fused kernel and its merge kernel, and each
// carries the launch table (tensor pointers, sizes, prefix sums: 28,848 bytes for up to 200
// tensors, with the 136-byte Params 28,984) as __grid_constant__ parameters, even for one tensor.
// At 10^8 values a pass spends 10-12 us outside both kernels' work
// (bench/results/gpu_check_H200_2026-11-27_s11.md); this measures how much of that the parameter's
// size can explain. For each size it times, with events after a spin kernel (so every launch is
// queued before the GPU reaches it):
//   chain   N launches of a one-block kernel, in stream order
//   pair    N pairs: a one-block kernel, then a one-block dependent one (stream order)
//   pdl     N pairs, the second a programmatic dependent launch (griddepcontrol, sm_90)
// and prints microseconds per launch or pair; with a file argument also writes them as JSON.
//
//   nvcc -O2 -std=c++17 -arch=sm_90 bench/launch_cost.cu -o /tmp/launch_cost && /tmp/launch_cost
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CHECK(call)                                                                                \
  do {                                                                                             \
    cudaError_t err_ = (call);                                                                     \
    if (err_ != cudaSuccess) {                                                                     \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(err_)); \
      std::exit(1);                                                                                \
    }                                                                                              \
  } while (0)

template <int kBytes>
struct Blob {
  unsigned char data[kBytes];
};

__global__ void spin(long long cycles) {
  const long long t0 = clock64();
  while (clock64() - t0 < cycles) {
  }
}

// Reads the parameter's last byte (so it is not optimised away) and lets a dependent start.
template <int kBytes>
__global__ void primary(const __grid_constant__ Blob<kBytes> b, unsigned char* out) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
  if (threadIdx.x == 0) out[0] = b.data[kBytes - 1];
}

template <int kBytes>
__global__ void dependent(const __grid_constant__ Blob<kBytes> b, unsigned char* out) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
  if (threadIdx.x == 0) out[1] = static_cast<unsigned char>(out[0] + b.data[0]);
}

struct Row {
  int bytes;
  double chain_us, pair_us, pdl_us;
};

template <int kBytes>
void launch(bool second, bool pdl, const Blob<kBytes>& b, unsigned char* out, cudaStream_t s) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(1);
  cfg.blockDim = dim3(32);
  cfg.stream = s;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl ? 1 : 0;
  if (second) {
    CHECK(cudaLaunchKernelEx(&cfg, dependent<kBytes>, b, out));
  } else {
    CHECK(cudaLaunchKernelEx(&cfg, primary<kBytes>, b, out));
  }
}

// Median over `reps` of the device time of n launches (mode 0) or n pairs (1: plain, 2: PDL).
template <int kBytes>
double time_us(int mode, int n, int reps, unsigned char* out, cudaStream_t s, long long lead) {
  Blob<kBytes> b{};
  b.data[0] = 1;
  b.data[kBytes - 1] = 2;
  cudaEvent_t e0, e1;
  CHECK(cudaEventCreate(&e0));
  CHECK(cudaEventCreate(&e1));
  std::vector<double> t;
  for (int r = 0; r < reps + 1; ++r) {  // the first is a warm-up
    spin<<<1, 1, 0, s>>>(lead);
    CHECK(cudaGetLastError());
    CHECK(cudaEventRecord(e0, s));
    for (int i = 0; i < n; ++i) {
      launch<kBytes>(false, false, b, out, s);
      if (mode > 0) launch<kBytes>(true, mode == 2, b, out, s);
    }
    CHECK(cudaEventRecord(e1, s));
    CHECK(cudaEventSynchronize(e1));
    float ms = 0.0f;
    CHECK(cudaEventElapsedTime(&ms, e0, e1));
    if (r > 0) t.push_back(1000.0 * ms / n);
  }
  CHECK(cudaEventDestroy(e0));
  CHECK(cudaEventDestroy(e1));
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

template <int kBytes>
Row measure(unsigned char* out, cudaStream_t s, long long lead) {
  const int n = 200, reps = 7;
  return {kBytes, time_us<kBytes>(0, n, reps, out, s, lead),
          time_us<kBytes>(1, n, reps, out, s, lead), time_us<kBytes>(2, n, reps, out, s, lead)};
}

int main(int argc, char** argv) {
  int dev = 0;
  CHECK(cudaSetDevice(dev));
  cudaDeviceProp prop{};
  CHECK(cudaGetDeviceProperties(&prop, dev));
  unsigned char* out = nullptr;
  CHECK(cudaMalloc(&out, 16));
  cudaStream_t s;
  CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  int khz = 0;
  CHECK(cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, dev));
  const long long lead = static_cast<long long>(khz) * 10;  // about 10 ms: every launch queued
  std::vector<Row> rows;
  rows.push_back(measure<64>(out, s, lead));
  rows.push_back(measure<1024>(out, s, lead));
  rows.push_back(measure<4096>(out, s, lead));
  rows.push_back(measure<16384>(out, s, lead));
  rows.push_back(measure<28984>(out, s, lead));  // the fused kernel's: table 28,848 + 136
  rows.push_back(measure<32000>(out, s, lead));
  std::printf("launch cost on %s (device time per launch / pair, median of 7 x 200)\n", prop.name);
  std::printf("%10s %12s %12s %12s\n", "param B", "chain us", "pair us", "pdl pair us");
  for (const Row& r : rows) {
    std::printf("%10d %12.2f %12.2f %12.2f\n", r.bytes, r.chain_us, r.pair_us, r.pdl_us);
  }
  if (argc > 1) {
    FILE* f = std::fopen(argv[1], "w");
    if (f == nullptr) {
      std::perror(argv[1]);
      return 1;
    }
    std::fprintf(f, "{\"device\": \"%s\", \"rows\": [", prop.name);
    for (size_t i = 0; i < rows.size(); ++i) {
      std::fprintf(
          f,
          "%s{\"param_bytes\": %d, \"chain_us\": %.3f, \"pair_us\": %.3f, \"pdl_pair_us\": %.3f}",
          i ? ", " : "", rows[i].bytes, rows[i].chain_us, rows[i].pair_us, rows[i].pdl_us);
    }
    std::fprintf(f, "]}\n");
    std::fclose(f);
  }
  CHECK(cudaFree(out));
  CHECK(cudaStreamDestroy(s));
  return 0;
}
