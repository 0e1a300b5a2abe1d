// The host perturbation kernel built for the generic instruction set (flags set in CMakeLists.txt).
#define PGAP_ISA_NS generic
#include "perturb_kernel.h"
