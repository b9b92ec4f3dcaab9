// Macros shared by host C++ and CUDA device code. Nothing here includes CUDA headers.
#pragma once

#if defined(__CUDACC__)
#define PWS_HD __host__ __device__
#define PWS_FORCEINLINE __forceinline__
#else
#define PWS_HD
#define PWS_FORCEINLINE inline __attribute__((always_inline))
#endif
