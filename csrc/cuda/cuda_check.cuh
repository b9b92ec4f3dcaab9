// Checking CUDA calls and launches: failures become std::runtime_error (RuntimeError in Python)
// naming the call and the CUDA error. Included by the .cu files only.
#pragma once
#include <cuda_runtime.h>  // tests/cpp/cuda_emu/cuda_runtime.h when PWS_CUDA_EMULATION is defined

#include <stdexcept>
#include <string>

namespace pws::cuda {

[[noreturn]] inline void fail(const char* what, cudaError_t err) {
  throw std::runtime_error(std::string("pyweightstat: CUDA error in ") + what + ": " +
                           cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")");
}

}  // namespace pws::cuda

#define PWS_CUDA_CHECK(call)                                         \
  do {                                                               \
    const cudaError_t pws_err_ = (call);                             \
    if (pws_err_ != cudaSuccess) ::pws::cuda::fail(#call, pws_err_); \
  } while (0)

#define PWS_CUDA_CHECK_LAUNCH(name)                                 \
  do {                                                              \
    const cudaError_t pws_err_ = cudaGetLastError();                \
    if (pws_err_ != cudaSuccess) ::pws::cuda::fail(name, pws_err_); \
  } while (0)

// Kernel launches and dynamic shared memory go through these two macros so that the tests can run
// the kernels on the host without a GPU (tests/cpp/cuda_emu, -DPWS_CUDA_EMULATION).
#if defined(PWS_CUDA_EMULATION)
#define PWS_LAUNCH(grid, block, smem, stream, ...) \
  ::pws_emu::launch(grid, block, smem, stream, __VA_ARGS__)
#define PWS_DYNAMIC_SHARED(type, name) type* name = ::pws_emu::dynamic_shared<type>()
#else
#define PWS_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#define PWS_DYNAMIC_SHARED(type, name) extern __shared__ __align__(16) type name[]
#endif
