"""Compile every specialization of the Triton kernels for NVIDIA targets, no GPU needed.

Run without TRITON_INTERPRET. Prints one JSON line per specialization with the PTX memory
instructions it uses (so a test can check that the aligned paths vectorize) and whether
the PTX uses tensor-core (mma) or atomic instructions: the float32 GEMMs of the low-rank kernels
must not (TF32 would break their tolerance; atomics their determinism).
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

from pgap_kernels.backends.triton import lowrank, sketch, subspace
from pgap_kernels.backends.triton.perturb import BLOCKS, _perturb_kernel

RUNTIME_ARGS = {
    # perturb
    "meta_ptr": "*i64", "seeds_ptr": "*i64", "coeffs_ptr": "*fp32", "n_seeds": "i32",
    "n_tensors": "i32", "decay": "fp32", "mean_coeff": "fp32", "rseed_ptr": "*i64",
    # lowrank
    "w_tab": "*i64", "l_tab": "*i64", "r_tab": "*i64", "index_tab": "*i64", "m": "i32", "n": "i32",
    "k": "i32",
    # sketch
    "key_tab": "*i64", "offset_tab": "*i64", "omega_tab": "*i64", "out_tab": "*i64", "q": "i32",
    "splits": "i32", "split_len": "i32",
    # subspace
    "n_mats": "i32", "span": "i32",
}
# (dtype, stochastic rounding): stochastic rounding exists for the 16-bit dtypes only
ROUNDINGS = (("float32", False), ("bfloat16", False), ("bfloat16", True), ("float16", False),
             ("float16", True))


def compile_one(kernel, arch, constexprs, num_warps=4, divisible=()):
    """PTX facts of one specialization; ``divisible`` names the arguments Triton's launcher
    would see as multiples of 16 (16-byte aligned pointers, sizes divisible by 16)."""
    params = list(inspect.signature(kernel.fn).parameters)
    signature = {p: RUNTIME_ARGS.get(p, "constexpr") for p in params}
    attrs = {(params.index(p),): [["tt.divisibility", 16]] for p in divisible}
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs),
                              target=GPUTarget("cuda", arch, 32),
                              options={"enable_fp_fusion": False,  # as the launches
                                       "num_warps": num_warps})
    ptx = compiled.asm["ptx"]
    return {"memory_ops": sorted(set(re.findall(r"\b(?:ld|st)\.global[.a-z0-9]*", ptx))),
            "mma": bool(re.search(r"\b(?:w?mma)\.", ptx)), "atomics": bool(re.search(r"\b(?:atom|red)\.", ptx))}


def emit(row):
    print(json.dumps(row), flush=True)


def perturb_cases(archs):
    """(arch, dtype, stochastic, has_mean, overwrite, aligned, rademacher): every Gaussian
    specialization, and the Rademacher stream's in every dtype, rounding and alignment with a
    mean in place and without one overwriting (what ``rademacher()`` runs): its own code is the
    same in the other two."""
    for arch, (dtype, stochastic), has_mean, overwrite, aligned, rademacher in itertools.product(
            archs, ROUNDINGS, (False, True), (False, True), (False, True), (False, True)):
        if not rademacher or has_mean != overwrite:
            yield arch, dtype, stochastic, has_mean, overwrite, aligned, rademacher


def narrow_cases(archs):
    """(arch, dtype, has_mean, aligned, rademacher): perturbed from float32 into a 16-bit out
    (functional views under autocast): decay 1, rounded to nearest."""
    return itertools.product(archs, ("bfloat16", "float16"), (False, True), (False, True), (False, True))


def main(archs):
    for arch, dtype, stochastic, has_mean, overwrite, aligned, rademacher in perturb_cases(archs):
        constexprs = {"DTYPE": getattr(tl, dtype), "SRC_DTYPE": getattr(tl, dtype), "HAS_MEAN": has_mean,
                      "OVERWRITE": overwrite, "STOCHASTIC": stochastic, "BLOCKS": BLOCKS,
                      "SEARCH_STEPS": 3, "ALIGNED": aligned, "RADEMACHER": rademacher}
        emit({"kernel": "perturb", "arch": arch, "dtype": dtype, "src_dtype": dtype,
              "stochastic": stochastic, "has_mean": has_mean, "overwrite": overwrite,
              "aligned": aligned, "rademacher": rademacher,
              **compile_one(_perturb_kernel, arch, constexprs)})
    for arch, dtype, has_mean, aligned, rademacher in narrow_cases(archs):
        constexprs = {"DTYPE": getattr(tl, dtype), "SRC_DTYPE": tl.float32, "HAS_MEAN": has_mean,
                      "OVERWRITE": False, "STOCHASTIC": False, "BLOCKS": BLOCKS, "SEARCH_STEPS": 3,
                      "ALIGNED": aligned, "RADEMACHER": rademacher}
        emit({"kernel": "perturb", "arch": arch, "dtype": dtype, "src_dtype": "float32",
              "stochastic": False, "has_mean": has_mean, "overwrite": False, "aligned": aligned,
              "rademacher": rademacher, **compile_one(_perturb_kernel, arch, constexprs)})
    block_m, block_n, block_k, warps = lowrank.block_sizes()
    for arch, (dtype, stochastic), overwrite, aligned in itertools.product(
            archs, ROUNDINGS, (False, True), (False, True)):
        constexprs = {"DTYPE": getattr(tl, dtype), "OVERWRITE": overwrite,
                      "STOCHASTIC": stochastic, "ALIGNED": aligned,
                      "BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k}
        divisible = ("w_tab", "l_tab", "r_tab", "n", "k") if aligned else ()
        emit({"kernel": "lowrank", "arch": arch, "dtype": dtype, "stochastic": stochastic,
              "overwrite": overwrite, "aligned": aligned,
              **compile_one(lowrank._lowrank_kernel, arch, constexprs, warps, divisible)})
    for arch, (dtype, stochastic), single_k in itertools.product(archs, ROUNDINGS, (False, True)):
        block_m, block_n, block_k, warps = subspace.block_sizes(8 if single_k else 100)
        constexprs = {"DTYPE": getattr(tl, dtype), "OVERWRITE": False, "STOCHASTIC": stochastic,
                      "BLOCKS": True, "SINGLE_K": single_k, "ALIGNED": True, "SEARCH_STEPS": 3,
                      "BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k}
        emit({"kernel": "subspace", "arch": arch, "dtype": dtype, "stochastic": stochastic,
              "single_k": single_k, "aligned": False,  # vectorization is not checked here
              **compile_one(subspace._subspace_kernel, arch, constexprs, warps)})
    for arch, aligned, transpose, blocks in itertools.product(
            archs, (False, True), (False, True), (False, True)):
        q = 64 if aligned else 5
        block_r, block_q, block_k, warps = sketch.block_sizes(q)
        constexprs = {"TRANSPOSE": transpose, "BLOCKS": blocks, "ALIGNED": aligned,
                      "BLOCK_R": block_r, "BLOCK_Q": block_q, "BLOCK_K": block_k}
        divisible = ("key_tab", "offset_tab", "omega_tab", "out_tab", "q") if aligned else ()
        emit({"kernel": "sketch", "arch": arch, "q": q, "aligned": aligned, "transpose": transpose,
              "blocks": blocks,
              **compile_one(sketch._sketch_kernel, arch, constexprs, warps, divisible)})


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [80, 90])
