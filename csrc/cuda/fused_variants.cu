// The fused pass's launches with a small launch table (the moments of at most kSmallBatch
// tensors) or with a plan's tables in device memory (Plan(device_table=True)): the same kernel
// templates as describe_cuda.cu's (fused_launch.cuh), instantiated here for these table types, so
// that a parallel build compiles them beside describe_cuda.cu instead of after it.
#include <cuda_runtime.h>

#include <cstddef>
#include <stdexcept>

#include "describe_cuda.h"
#include "fused_launch.cuh"

namespace pws::cuda {

void launch_small_moments(const SmallTable& tab, const Params& p, cudaStream_t s) {
  launch_fused<true, kHistNone>(tab, tab, p, 0, s);
}

void launch_with_device_table(int hist, const EntryTable& tab, const EntryTable* dev,
                              const Params& p, size_t smem, cudaStream_t s) {
  const TablePtr arg{dev};
  switch (hist) {
    case kHistNone:
      launch_fused<true, kHistNone>(tab, arg, p, smem, s);
      break;
    case kHistLog:
      launch_fused<true, kHistLog>(tab, arg, p, smem, s);
      break;
    case kHistLogBand:
      launch_fused<true, kHistLogBand>(tab, arg, p, smem, s);
      break;
    default:
      throw std::logic_error("pyweightstat: no device-table launch for this histogram kind");
  }
}

}  // namespace pws::cuda
