"""Compile every specialization of the Triton subspace kernel for NVIDIA targets, no GPU needed.

Run without TRITON_INTERPRET. Prints one JSON line per specialization (see compile_triton.py):
the float32 product must use no tensor-core (mma) and no atomic instruction.
"""
import itertools
import sys
from pathlib import Path

import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compile_triton  # noqa: E402

from pgap_kernels.backends.triton import subspace  # noqa: E402

compile_triton.RUNTIME_ARGS.update({"n_mats": "i32", "span": "i32"})


def main(archs):
    # (BLOCKS, SINGLE_K, rank): whole Philox blocks with Xi drawn once (r = 8), and per-element
    # draws per rank slice (r = 100).
    for arch, dtype, overwrite, aligned, (blocks, single_k, rank) in itertools.product(
            archs, ("float32", "bfloat16", "float16"), (False, True), (False, True),
            ((True, True, 8), (False, False, 100))):
        block_m, block_n, block_k, warps = subspace.block_sizes(rank)
        constexprs = {"DTYPE": getattr(tl, dtype), "OVERWRITE": overwrite, "BLOCKS": blocks,
                      "SINGLE_K": single_k, "ALIGNED": aligned, "SEARCH_STEPS": 3,
                      "BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k}
        compile_triton.emit({"kernel": "subspace", "arch": arch, "dtype": dtype,
                             "overwrite": overwrite, "blocks": blocks, "single_k": single_k,
                             "aligned": aligned, "block_k": block_k,
                             **compile_triton.compile_one(subspace._subspace_kernel, arch, constexprs,
                                                          warps)})


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [80, 90])
