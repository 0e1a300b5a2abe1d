"""Compile every specialization of the Triton perturb kernel for NVIDIA targets, no GPU needed.

Run without TRITON_INTERPRET. Prints one JSON line per specialization with the PTX memory
instructions it uses, so a test can check that the aligned path vectorizes.
"""
import inspect
import itertools
import json
import re
import sys

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from pgap_kernels.backends.triton.perturb import BLOCKS, _perturb_kernel

RUNTIME_ARGS = {"meta_ptr": "*i64", "seeds_ptr": "*i64", "coeffs_ptr": "*fp32", "n_seeds": "i32",
                "n_tensors": "i32", "decay": "fp32", "mean_coeff": "fp32"}


def main(archs):
    params = list(inspect.signature(_perturb_kernel.fn).parameters)
    signature = {p: RUNTIME_ARGS.get(p, "constexpr") for p in params}
    for arch, dtype, has_mean, overwrite, aligned in itertools.product(
            archs, ("float32", "bfloat16", "float16"), (False, True), (False, True), (False, True)):
        constexprs = {"DTYPE": getattr(tl, dtype), "HAS_MEAN": has_mean, "OVERWRITE": overwrite,
                      "BLOCKS": BLOCKS, "SEARCH_STEPS": 3, "ALIGNED": aligned}
        kernel = triton.compile(ASTSource(fn=_perturb_kernel, signature=signature, constexprs=constexprs),
                                target=GPUTarget("cuda", arch, 32),
                                options={"enable_fp_fusion": False})  # as perturb_group launches
        ops = sorted(set(re.findall(r"\b(?:ld|st)\.global[.a-z0-9]*", kernel.asm["ptx"])))
        print(json.dumps({"arch": arch, "dtype": dtype, "has_mean": has_mean, "overwrite": overwrite,
                          "aligned": aligned, "memory_ops": ops}), flush=True)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [80, 90])
