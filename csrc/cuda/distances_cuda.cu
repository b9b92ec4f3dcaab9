// K x K histogram distances on the GPU: one block per row prepares probabilities, their square
// roots and the exact CDF (integer prefix sums); then one warp per pair (i < j) reduces over the
// bins in a fixed order and writes both (i, j) and (j, i).
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "cuda_check.cuh"
#include "distances_cuda.h"

namespace pws::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFullMask = 0xffffffffu;
enum Metric : int { kWasserstein = 0, kKS = 1, kJS = 2, kHellinger = 3, kTV = 4 };

__global__ void __launch_bounds__(kThreads)
    prepare_rows(const long long* counts, int64_t b, double* p, double* sq, double* cdf,
                 int* empty) {
  __shared__ long long part[kThreads];
  const int64_t row = blockIdx.x;
  const int tid = static_cast<int>(threadIdx.x);
  const long long* c = counts + row * b;
  long long t = 0;
  for (int64_t j = tid; j < b; j += kThreads) t += c[j];
  part[tid] = t;
  __syncthreads();
  for (int w = kThreads / 2; w > 0; w >>= 1) {
    if (tid < w) part[tid] += part[tid + w];
    __syncthreads();
  }
  const long long total = part[0];
  const double inv = total > 0 ? 1.0 / static_cast<double>(total) : 0.0;
  for (int64_t j = tid; j < b; j += kThreads) {
    const double v = static_cast<double>(c[j]) * inv;
    p[row * b + j] = v;
    sq[row * b + j] = sqrt(v);
  }
  if (tid == 0) {
    empty[row] = total <= 0 ? 1 : 0;
    long long acc = 0;
    for (int64_t j = 0; j < b; ++j) {
      acc += c[j];
      cdf[row * b + j] = total > 0 ? static_cast<double>(acc) / static_cast<double>(total) : 0.0;
    }
  }
}

__global__ void __launch_bounds__(kThreads)
    pair_distances(const double* p, const double* sq, const double* cdf, const int* empty,
                   const double* centres, int64_t k, int64_t b, int metric, double* out) {
  const int64_t i = blockIdx.y;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  const int lane = static_cast<int>(threadIdx.x & 31);
  if (j < i || j >= k) return;  // warp-uniform
  if (j == i) {
    if (lane == 0) out[i * k + i] = empty[i] ? NAN : 0.0;
    return;
  }
  double d = NAN;
  if (!empty[i] && !empty[j]) {
    const double* pi = p + i * b;
    const double* pj = p + j * b;
    double acc = 0.0;
    for (int64_t t = lane; t < b; t += 32) {
      switch (metric) {
        case kWasserstein:
          if (t + 1 < b) {
            acc += fabs(cdf[i * b + t] - cdf[j * b + t]) * (centres[t + 1] - centres[t]);
          }
          break;
        case kKS:
          acc = fmax(acc, fabs(cdf[i * b + t] - cdf[j * b + t]));
          break;
        case kJS: {
          const double m = 0.5 * (pi[t] + pj[t]);
          if (pi[t] > 0.0) acc += 0.5 * pi[t] * log2(pi[t] / m);
          if (pj[t] > 0.0) acc += 0.5 * pj[t] * log2(pj[t] / m);
          break;
        }
        case kHellinger: {
          const double e = sq[i * b + t] - sq[j * b + t];
          acc += e * e;
          break;
        }
        default:
          acc += fabs(pi[t] - pj[t]);
          break;
      }
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      const double o = __shfl_down_sync(kFullMask, acc, off);
      acc = metric == kKS ? fmax(acc, o) : acc + o;
    }
    switch (metric) {
      case kJS:
        d = fmin(1.0, fmax(0.0, acc));
        break;
      case kHellinger:
        d = sqrt(0.5 * acc);
        break;
      case kTV:
        d = 0.5 * acc;
        break;
      default:
        d = acc;
        break;
    }
  }
  if (lane == 0) {
    out[i * k + j] = d;
    out[j * k + i] = d;
  }
}

// Device allocations freed on scope exit.
class DeviceArrays {
 public:
  ~DeviceArrays() {
    for (int n = 0; n < count_; ++n) (void)cudaFree(ptrs_[n]);
  }
  template <class T>
  T* alloc(size_t n) {
    void* ptr = nullptr;
    PWS_CUDA_CHECK(cudaMalloc(&ptr, n > 0 ? n * sizeof(T) : sizeof(T)));
    ptrs_[count_++] = ptr;
    return static_cast<T*>(ptr);
  }

 private:
  void* ptrs_[8] = {};
  int count_ = 0;
};

}  // namespace

void pairwise_distances(const int64_t* counts, int64_t k, int64_t b, const double* centres,
                        int metric, int device, double* out) {
  if (k <= 0) return;
  if (k > 65535) throw std::runtime_error("pyweightstat: at most 65535 histograms on CUDA");
  (void)cudaGetLastError();
  int prev = 0;
  PWS_CUDA_CHECK(cudaGetDevice(&prev));
  if (prev != device) PWS_CUDA_CHECK(cudaSetDevice(device));
  try {
    const size_t kb = static_cast<size_t>(k) * static_cast<size_t>(b);
    DeviceArrays mem;
    long long* d_counts = mem.alloc<long long>(kb);
    double* d_centres = mem.alloc<double>(static_cast<size_t>(b));
    double* d_p = mem.alloc<double>(kb);
    double* d_sq = mem.alloc<double>(kb);
    double* d_cdf = mem.alloc<double>(kb);
    int* d_empty = mem.alloc<int>(static_cast<size_t>(k));
    double* d_out = mem.alloc<double>(static_cast<size_t>(k) * static_cast<size_t>(k));
    PWS_CUDA_CHECK(cudaMemcpy(d_counts, counts, kb * sizeof(long long), cudaMemcpyHostToDevice));
    PWS_CUDA_CHECK(cudaMemcpy(d_centres, centres, static_cast<size_t>(b) * sizeof(double),
                              cudaMemcpyHostToDevice));
    PWS_LAUNCH(static_cast<unsigned>(k), kThreads, 0, nullptr, prepare_rows)(d_counts, b, d_p, d_sq,
                                                                             d_cdf, d_empty);
    PWS_CUDA_CHECK(cudaGetLastError());
    const dim3 grid(static_cast<unsigned>((k + kWarps - 1) / kWarps), static_cast<unsigned>(k));
    PWS_LAUNCH(grid, kThreads, 0, nullptr, pair_distances)(d_p, d_sq, d_cdf, d_empty, d_centres, k,
                                                           b, metric, d_out);
    PWS_CUDA_CHECK(cudaGetLastError());
    PWS_CUDA_CHECK(cudaMemcpy(out, d_out,
                              static_cast<size_t>(k) * static_cast<size_t>(k) * sizeof(double),
                              cudaMemcpyDeviceToHost));
  } catch (...) {
    if (prev != device) (void)cudaSetDevice(prev);
    throw;
  }
  if (prev != device) PWS_CUDA_CHECK(cudaSetDevice(prev));
}

}  // namespace pws::cuda
