// The host perturbation kernel built for the avx2 instruction set (flags set in CMakeLists.txt).
#define PGAP_ISA_NS avx2
#include "perturb_kernel.h"
