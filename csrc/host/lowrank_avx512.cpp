// The host low-rank and subspace kernels built for the avx512 instruction set (flags set in CMakeLists.txt).
#define PGAP_ISA_NS avx512
#include "lowrank_kernel.h"
#include "subspace_kernel.h"
