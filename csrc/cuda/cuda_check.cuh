// Checking CUDA calls and launches: failures become std::runtime_error (RuntimeError in Python)
// naming the call and the CUDA error. Included by the .cu files only.
#pragma once
#include <cuda_runtime.h>

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
