// The host low-rank kernels built for the avx512 instruction set (flags set in CMakeLists.txt).
#define PGAP_ISA_NS avx512
#include "lowrank_kernel.h"
