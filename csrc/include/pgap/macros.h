// Portability macros shared by the host (C++) and device (CUDA) builds.
#pragma once

#if defined(__CUDACC__)
#define PGAP_HD __host__ __device__ __forceinline__
#else
#define PGAP_HD inline __attribute__((always_inline))
#endif
