// The host low-rank and subspace kernels built for the generic instruction set (flags set in CMakeLists.txt).
#define PGAP_ISA_NS generic
#include "lowrank_kernel.h"
#include "subspace_kernel.h"
