"""A minimal driver for profiling ``perturb_``'s GPU kernel with Nsight Compute.

Runs ``perturb_`` (one seed, MeZO's +eps pass) on a 2**N-element tensor per dtype under the
chosen backend: two warm-up calls, then ``--calls`` calls (each inside an NVTX range
``perturb_<dtype>``). With the self-check off, the kernel launches are exactly these, so, e.g.::

    PGAP_SELFTEST=0 ncu -k regex:perturb_kernel --section SpeedOfLight \\
        --section ComputeWorkloadAnalysis --section InstructionStats \\
        python -m bench.kernels.profile_perturb --backend cuda
"""
from __future__ import annotations

import argparse
import sys

import torch

import pgap_kernels as pk

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="cuda")
    p.add_argument("--log2", type=int, default=27)
    p.add_argument("--calls", type=int, default=1)
    p.add_argument("--dtypes", default="fp32,bf16")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("profile_perturb: no CUDA device")
        return 0
    with pk.use_backend(args.backend):
        for name in args.dtypes.split(","):
            t = torch.zeros(1 << args.log2, device="cuda", dtype=DTYPES[name])
            for _ in range(2):
                pk.perturb_(t, 1, 1e-3)
            torch.cuda.synchronize()
            for _ in range(args.calls):
                torch.cuda.nvtx.range_push(f"perturb_{name}")
                pk.perturb_(t, 1, 1e-3)
                torch.cuda.nvtx.range_pop()
            torch.cuda.synchronize()
    print("profile_perturb: done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
