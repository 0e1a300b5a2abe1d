"""Why do triton's functional views cost 3.5x one perturbed_many pass? OPT-1.3B bf16, batch 16x256.
Profiles pgap.MeZO functional steps on triton and cuda, and times perturbed_many per layer unit."""
import sys, time
from pathlib import Path
import torch
ROOT = Path.cwd()
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "python"), str(ROOT)]
from bench_zo_step import build_model
import pgap, pgap_kernels
from torch.profiler import profile, ProfilerActivity

dev = torch.device("cuda")
model = build_model("opt-1.3b", dev, torch.bfloat16)
ids = torch.randint(0, 50000, (16, 256), device=dev)
def closure():
    return model(input_ids=ids, labels=ids, use_cache=False).loss
def med(fn, n=10, warm=3):
    for _ in range(warm): fn()
    torch.cuda.synchronize(); ts = []
    for _ in range(n):
        t = time.perf_counter(); fn(); torch.cuda.synchronize(); ts.append((time.perf_counter() - t) * 1e3)
    ts.sort(); return ts[n // 2]
# perturbed_many over one decoder layer's params: host time per call and device time
layer = [p for p in model.model.decoder.layers[0].parameters()]
outs = [torch.empty_like(p) for p in layer]
allp = [p for p in model.parameters()]
allo = [torch.empty_like(p) for p in allp]
for backend in ("cuda", "triton"):
    with pgap_kernels.use_backend(backend):
        for name, src, dst in (("layer", layer, outs), ("all", allp, allo)):
            k = [0]
            def call():
                k[0] += 1
                pgap_kernels.perturbed_many(src, [k[0]], [1e-3], out=dst)
            dt = med(call, n=20)
            torch.cuda.synchronize(); t = time.perf_counter()
            for _ in range(20): call()
            host = (time.perf_counter() - t) / 20 * 1e3; torch.cuda.synchronize()
            print(f"{backend} perturbed_many {name} ({len(src)} tensors): {dt:.3f} ms synced, host {host:.3f} ms/call", flush=True)
print("forward", med(closure), flush=True)
for backend in ("triton", "cuda"):
    opt = pgap.MeZO(model, lr=1e-9, eps=1e-3, mode="functional", backend=backend)
    print(backend, "functional step", med(lambda: opt.step(closure)), flush=True)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
        for _ in range(3): opt.step(closure)
        torch.cuda.synchronize()
    print(p.key_averages().table(sort_by="cuda_time_total", row_limit=14))
    print(p.key_averages().table(sort_by="cpu_time_total", row_limit=22))
    opt.close()
