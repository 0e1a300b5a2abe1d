"""Profile ``pgap.MeZO`` steps on a CUDA GPU (OPT-1.3B config, bf16, batch 16 x 256): the median
step of 10 (after 3 warm-up steps) for the cuda and triton backends in functional and in-place
mode beside a plain forward, and a torch.profiler table of three functional cuda steps (top ops by
CPU and by CUDA time). Run from the repository root on a GPU machine after building ``_C``
(``pgap`` installed, or ``PYTHONPATH=python``)::

    python -m bench.steps.profile_mezo_step
"""
import time

import torch

import pgap
from bench.common import build_model


def main() -> None:
    dev = torch.device("cuda")
    model = build_model("opt-1.3b", dev, torch.bfloat16)
    ids = torch.randint(0, 50000, (16, 256), device=dev)
    def closure():
        return model(input_ids=ids, labels=ids, use_cache=False).loss
    def timed(fn, n=10):
        for _ in range(3): fn()
        torch.cuda.synchronize(); ts=[]
        for _ in range(n):
            t=time.perf_counter(); fn(); torch.cuda.synchronize(); ts.append((time.perf_counter()-t)*1e3)
        ts.sort(); return ts[n//2]
    with torch.no_grad():
        print("forward", timed(closure))
    for backend in ("cuda", "triton"):
        for mode in ("functional", "inplace"):
            opt = pgap.MeZO(model, lr=1e-9, eps=1e-3, mode=mode, backend=backend)
            print(backend, mode, "step", timed(lambda: opt.step(closure)), flush=True)
            if mode == "functional" and backend == "cuda":
                from torch.profiler import profile, ProfilerActivity
                with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
                    for _ in range(3): opt.step(closure)
                    torch.cuda.synchronize()
                print(p.key_averages().table(sort_by="cpu_time_total", row_limit=18))
                print(p.key_averages().table(sort_by="cuda_time_total", row_limit=12))
            opt.close()


if __name__ == "__main__":
    main()
