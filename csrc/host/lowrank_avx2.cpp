// The host low-rank and subspace kernels built for the avx2 instruction set (flags set in CMakeLists.txt).
#define PGAP_ISA_NS avx2
#include "lowrank_kernel.h"
#include "subspace_kernel.h"
