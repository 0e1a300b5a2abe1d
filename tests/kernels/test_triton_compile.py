"""The Triton kernels compile for sm_80 and sm_90 without a GPU, and their aligned paths vectorize.

The CPU tests run Triton's interpreter, which accepts code the GPU compiler may reject; this
compiles every specialization ahead of time (Triton ships ptxas) in a subprocess without
TRITON_INTERPRET.
"""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compile_triton.py"


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_triton_kernels_compile_for_nvidia_and_vectorize():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, str(SCRIPT), "80", "90"], capture_output=True, text=True,
                         env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    by_kernel = {name: [r for r in rows if r["kernel"] == name]
                 for name in ("perturb", "lowrank", "sketch", "subspace")}
    narrow = [r for r in by_kernel["perturb"] if r["src_dtype"] != r["dtype"]]
    by_kernel["perturb"] = [r for r in by_kernel["perturb"] if r["src_dtype"] == r["dtype"]]
    roundings = 5  # float32, and bfloat16/float16 each rounded to nearest or stochastically
    # Gaussian: mean x overwrite x aligned; Rademacher: 2 of the mean x overwrite pairs x aligned
    assert len(by_kernel["perturb"]) == 2 * roundings * (2 * 2 * 2 + 2 * 2)
    assert sum(r["rademacher"] for r in by_kernel["perturb"]) == 2 * roundings * 2 * 2
    assert len(by_kernel["lowrank"]) == 2 * roundings * 2 * 2
    assert len(by_kernel["sketch"]) == 2 * 2 * 2 * 2
    assert len(by_kernel["subspace"]) == 2 * roundings * 2
    for r in by_kernel["perturb"]:
        ops = r["memory_ops"]
        width = "v4" if r["dtype"] == "float32" else "v2"  # 16 bytes / 8 bytes per Philox block
        if r["aligned"]:
            assert f"st.global.{width}.b32" in ops, r
            if not r["overwrite"]:
                assert f"ld.global.{width}.b32" in ops, r
    # float32 into bf16/fp16 (functional views under autocast): arch x out dtype x mean x aligned
    # x stream; aligned, each Philox block one 16-byte load of the source, one 8-byte store
    assert len(narrow) == 2 * 2 * 2 * 2 * 2
    for r in narrow:
        if r["aligned"]:
            assert "ld.global.v4.b32" in r["memory_ops"] and "st.global.v2.b32" in r["memory_ops"], r
    for r in by_kernel["lowrank"] + by_kernel["sketch"] + by_kernel["subspace"]:
        # float32 dots with input_precision="ieee" run on FMA units: no TF32 tensor-core mma;
        # no atomics, so the results are deterministic.
        assert not r["mma"] and not r["atomics"], r
        if r["aligned"]:  # 16 bytes per access: 4 float32 or 8 bfloat16/float16 values
            assert "st.global.v4.b32" in r["memory_ops"], r  # W, or the sketch
            if not r.get("overwrite", False):
                assert "ld.global.v4.b32" in r["memory_ops"], r  # W, or omega
