"""The trained ``TokenMerger`` as a pre-LLM method: ``M`` merged tokens replace the 576 image tokens.

Before the LLM runs, the merger (``llava.pruning.learned.merger``) summarises the projected image
features ``[B, S, d]`` into ``M`` tokens with learnable queries modulated by the instruction (the LLM
input embeddings of the text after the image). Through the pre-LLM path of the LLaVA wrapper
(``llava.model.pre_llm``) the LLM then sees ``M`` image tokens: the first ``M`` image positions, carrying
the merged features (a ``TokenSelection`` with a ``replacement``), i.e. ``M`` equivalent tokens at every
layer. The merger is trained by ``llava.train.pruner.merger_training`` (frozen VLM, task loss).

Config: ``pruning_method="learned_merger"``, ``merger_checkpoint=<path>``; ``visual_token_num`` (planned as
for every pre-LLM method, ``visual_tokens = round(T)``) must equal the checkpoint's ``M``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from llava.pruning.learned.checkpoint import read_checkpoint
from llava.pruning.learned.merger import TokenMerger
from llava.pruning.methods.base import register_method
from llava.pruning.methods.pre_llm import PreLLMMethod, VisualTokens
from llava.pruning.selection import TokenSelection


def merger_from_checkpoint(path: str | Path) -> TokenMerger:
    """The ``TokenMerger`` of a checkpoint written by the merger training, in eval mode."""
    checkpoint = read_checkpoint(path)
    merger = TokenMerger(**checkpoint["merger_config"])
    merger.load_state_dict(checkpoint["merger"])
    return merger.eval()


def padded_instructions(embeddings: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ``[T_b, d]`` embeddings as ``[B, T, d]`` (zeros after each sample's end) and ``[B, T]`` validity."""
    width = max(e.shape[0] for e in embeddings)
    padded = embeddings[0].new_zeros(len(embeddings), width, embeddings[0].shape[-1])
    valid = torch.zeros(len(embeddings), width, dtype=torch.bool, device=padded.device)
    for b, e in enumerate(embeddings):
        padded[b, : e.shape[0]], valid[b, : e.shape[0]] = e, True
    return padded, valid


@register_method
@dataclass
class LearnedMerger(PreLLMMethod):
    """``merger_checkpoint``: path of a merger checkpoint; ``visual_tokens`` is its ``M``."""

    merger_checkpoint: str | None = None
    visual_tokens: int | None = None
    merger: TokenMerger | None = field(default=None, init=False, repr=False, compare=False)

    name = "learned_merger"

    def __post_init__(self) -> None:
        if self.merger_checkpoint is None:
            raise ValueError("method 'learned_merger' needs merger_checkpoint=<path> (python -m llava.train.pruner.merger_training)")
        self.merger = merger_from_checkpoint(self.merger_checkpoint)
        outputs = self.merger.queries.shape[0]
        if self.visual_tokens is None:
            self.visual_tokens = outputs
        if self.visual_tokens != outputs:
            raise ValueError(f"learned_merger: the checkpoint merges into M={outputs} tokens, not {self.visual_tokens}")

    @classmethod
    def from_merger(cls, merger: TokenMerger) -> LearnedMerger:
        """A method around an in-memory merger (training)."""
        method = cls.__new__(cls)
        method.merger_checkpoint, method.merger, method.visual_tokens = None, merger, merger.queries.shape[0]
        return method

    def select_visual(self, tokens: VisualTokens) -> TokenSelection:
        question, valid = padded_instructions(tokens.instruction_embeddings)
        merger = self.merger.to(tokens.features.device)
        merged = merger(tokens.features.float(), question.float(), valid)  # [B, M, d]
        batch, count = merged.shape[:2]
        columns = torch.arange(count, device=merged.device).expand(batch, -1)
        scores = torch.zeros(batch, tokens.features.shape[1], device=merged.device)
        return TokenSelection(columns, scores, {"method": self.name, "merged": count}, replacement=(columns, merged))
