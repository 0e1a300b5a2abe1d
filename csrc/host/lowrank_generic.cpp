// The host low-rank kernels built for the generic instruction set (flags set in CMakeLists.txt).
#define PGAP_ISA_NS generic
#include "lowrank_kernel.h"
