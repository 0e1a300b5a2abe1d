// The host low-rank kernels built for the avx2 instruction set (flags set in CMakeLists.txt).
#define PGAP_ISA_NS avx2
#include "lowrank_kernel.h"
