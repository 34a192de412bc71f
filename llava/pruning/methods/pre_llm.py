"""Pre-LLM methods: choose ``T`` visual tokens per image before the language model runs.

The LLaVA wrapper (``llava.model.llava_arch``) computes what they need once per prefill
(``VisualTokens``), asks ``select_visual`` for the kept indices, and removes the other image tokens from
the embeddings and the attention mask, so the LLM never sees them (every layer processes ``T`` visual
tokens: ``T`` equivalent tokens). Kept tokens are renumbered contiguously, as the official VisPruner /
CDPruner code does (the LLM simply receives a shorter prompt).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from llava.pruning.methods.base import PruneStep, PruningMethod, without_budget_fields
from llava.pruning.selection import TokenSelection


@dataclass
class VisualTokens:
    """Inputs of a pre-LLM selection for a batch of ``B`` images of ``S`` tokens.

    Attributes:
        features: ``[B, S, d]`` projected image features (what the LLM would receive).
        vision_features: ``[B, S, d_v]`` the vision tower's feature-layer patch features (before the projector).
        cls_attention: ``() -> [B, S]`` [CLS] -> patch attention at the feature layer, mean over heads
            (computed on demand from that layer's q.k of the CLS row).
        instruction_embeddings: per sample ``[T_b, d]`` LLM input embeddings of the text after the image.
    """

    features: torch.Tensor
    vision_features: torch.Tensor
    cls_attention: Callable[[], torch.Tensor]
    instruction_embeddings: list[torch.Tensor]


@dataclass
class PreLLMMethod(PruningMethod):
    """Keeps ``visual_tokens`` (T) image tokens, chosen before the LLM; nothing is pruned inside it."""

    visual_tokens: int = 64

    pre_llm = True

    def schedule(self, span: int) -> list[tuple[int, int]]:
        return []

    def select(self, step: PruneStep, keep: int) -> TokenSelection:
        raise RuntimeError(f"{self.name} prunes before the LLM (select_visual); the decoder never calls it")

    @abstractmethod
    def select_visual(self, tokens: VisualTokens) -> TokenSelection:
        """Kept token indices ``[B, T]`` (ascending) into the image's ``S`` tokens."""

    def validate(
        self, num_layers: int, span: int | None, num_heads: int | None = None, hidden_size: int | None = None
    ) -> None:
        upper = span if span is not None else "the image token count"
        if self.visual_tokens < 1 or (span is not None and self.visual_tokens > span):
            raise ValueError(
                f"{self.name}: cannot keep {self.visual_tokens} visual tokens: valid range is [1, {upper}]"
            )

    @classmethod
    def for_budget(
        cls, target_tokens: float, num_layers: int, span: int, params: Mapping[str, Any] | None = None
    ) -> PreLLMMethod:
        """``visual_tokens = round(target_tokens)``: every LLM layer sees that many visual tokens."""
        params = without_budget_fields(cls, params, ("visual_tokens",))
        if not 0 < target_tokens <= span:
            raise ValueError(
                f"{cls.name}: a budget of {target_tokens} tokens is out of range: valid range is (0, {span}]"
            )
        return cls.from_params({**params, "visual_tokens": round(target_tokens)})
