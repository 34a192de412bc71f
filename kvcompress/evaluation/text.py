"""Token streams from a text file (WikiText-2 by default, read by path, never copied)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

DEFAULT_TEXT = Path("../shared/data/wikitext-2/test.txt")


def load_token_stream(path: str | Path, tokenizer: PreTrainedTokenizerBase, max_tokens: int | None = None) -> torch.Tensor:
    """Tokenise a text file into one ``[N]`` id tensor (only about the first ``max_tokens`` tokens)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text file {path} is absent (WikiText-2 lives at {DEFAULT_TEXT} by default)")
    text = path.read_text(encoding="utf-8")
    if max_tokens is not None:
        text = text[: max_tokens * 8]  # generous: WikiText averages ~4-5 characters per token
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0]
    return ids if max_tokens is None else ids[:max_tokens]


def split_windows(tokens: torch.Tensor, length: int, count: int) -> list[torch.Tensor]:
    """``count`` consecutive, non-overlapping ``[1, length]`` windows from the start of ``tokens``."""
    available = tokens.numel() // length
    if available < count:
        raise ValueError(f"need {count} windows of {length} tokens but the text has only {available}")
    return [tokens[i * length : (i + 1) * length][None] for i in range(count)]
