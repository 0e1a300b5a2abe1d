"""Every Python block in README.md and docs/*.md runs as written (issue 26).

Blocks of one file run in order in one namespace, as a reader follows the page. A block that
uses names the page leaves to the reader (``model``, ``loader``) runs after a setup that defines
them (``SETUPS``); a block that is an excerpt of an example must appear in it line by line
(``TWINS``; the examples are run and shown to learn below); a block that cannot run here says why
(``SKIPS``). A block's identity is its file and its first line."""
import re
import runpy
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)

TINY_LLAMA = """
import torch, pgap
from zo_problems import tiny_llama
model, _ = tiny_llama()
ids = torch.randint(0, 64, (3, 4, 16), generator=torch.Generator().manual_seed(0))
loader = [{"input_ids": x, "labels": x, "attention_mask": torch.ones_like(x)} for x in ids]
"""
OPTIMIZER_PAIR = TINY_LLAMA + """
opt = pgap.PGAP(model, lr=1e-3, rank=2, window=4, probes=2, mode="functional")  # a side path
opt.step(lambda: model(**loader[0]).loss)
model2 = tiny_llama()[0]
opt2 = pgap.PGAP(model2, lr=1e-3, rank=2, window=4, probes=2, mode="functional")
"""
SETUPS = {
    ("README.md", "import torch, pgap"): TINY_LLAMA,                    # quick start
    ("docs/optimizers.md", "import torch, pgap"): TINY_LLAMA,
    ("docs/agzo.md", "opt = pgap.AGZO(model, lr=3e-4, eps=1e-3, rank=8, refresh=10)"): TINY_LLAMA,
    ("docs/optimizers.md", "with opt.unmerged():   # the weights without the pending updates, the state with them"):
        OPTIMIZER_PAIR,
}
TWINS = {
    ("docs/finetune.md", "from transformers import TrainingArguments"): "examples/zotrainer.py",
    ("docs/contributing.md", "class SubZero(WindowedLowRankZO):"): "python/pgap/subzero.py",
    ("docs/contributing.md", "class MeZO(SeededZO):"): "python/pgap/mezo.py",
}
SKIPS = {
    ("docs/distributed.md", "import torch.distributed as dist, pgap"):
        "needs torchrun; the same loop runs in tests/optimizers/test_distributed.py",
    ("docs/distributed.md", "from torch.distributed.fsdp import fully_shard"):
        "needs a process group; FSDP2 runs in tests/optimizers/test_distributed.py",
    ("docs/pgap.md", "opt = pgap.PGAP(model, lr=..., eps=1e-3, rank=8, window=100, probes=10, probe_eps=None,"):
        "the constructor's signature with its defaults (lr=... is left to the reader)",
    ("docs/subspace.md", "pgap_kernels.subspace_perturb_(tensors, bases, seeds, coeffs, *, keys=None, offsets=None, decay=1.0,"):
        "the op's signature",
}


def blocks(path):
    """(first line, code) of every ```python block of ``path``, in order."""
    return [(m.group(1).splitlines()[0], m.group(1)) for m in FENCE.finditer(path.read_text())]


def rel(path):
    return str(path.relative_to(ROOT))


def test_every_registered_block_exists():
    found = {(rel(p), first) for p in DOCS for first, _ in blocks(p)}
    for key in list(SETUPS) + list(TWINS) + list(SKIPS):
        assert key in found, f"{key} names no block any more: update tests/test_docs.py"


@pytest.mark.parametrize("path", DOCS, ids=rel)
def test_python_blocks_run_as_written(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # blocks may write files (opt.safetensors)
    namespace = {"__name__": "__doc__"}
    torch.manual_seed(0)
    for first, code in blocks(path):
        key = (rel(path), first)
        if key in SKIPS:
            continue
        if key in TWINS:
            twin = [line.strip() for line in (ROOT / TWINS[key]).read_text().splitlines()]
            rest = iter(twin)
            for line in filter(None, (line.strip() for line in code.splitlines())):
                assert any(line == t for t in rest), f"{key}: {line!r} is not in {TWINS[key]}"
            continue
        if key in SETUPS:
            exec(compile(SETUPS[key], f"<setup for {key}>", "exec"), namespace)
        exec(compile(code, f"{key[0]}: block {first!r}", "exec"), namespace)


def _example(name):
    return runpy.run_path(str(ROOT / "examples" / name))


def test_example_mezo_trainer_swap_learns():
    threads = torch.get_num_threads()
    try:
        before, after = _example("mezo_trainer_swap.py")["main"]()
    finally:
        torch.set_num_threads(threads)
    assert before == pytest.approx(4.163, abs=0.01)  # ≈ ln 64: the random-init model
    assert after < before - 0.3, (before, after)


def test_example_zotrainer_learns(tmp_path):
    pytest.importorskip("transformers")
    threads = torch.get_num_threads()
    try:
        before, after, log = _example("zotrainer.py")["main"](str(tmp_path))
    finally:
        torch.set_num_threads(threads)
    assert after < before - 0.25, (before, after)
    assert "grad_norm" not in log and log["projected_grad_rms"] > 0
