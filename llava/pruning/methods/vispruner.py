"""VisPruner (pre-LLM): important tokens by the vision tower's [CLS] attention, the rest by diversity.

Zhang et al., 2025, "Beyond Text-Visual Attention: Exploiting Visual Cues for Effective Token Pruning in
VLMs". See ``llava.pruning.diversity``. Choices: the [CLS] attention is the attention of the layer that
produces the feature layer (-2 for LLaVA-1.5), computed from that layer's q.k of the CLS row (the tower
stays on SDPA); duplicates are measured on the feature-layer patch features (before the projector).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llava.pruning.diversity import vispruner_keep
from llava.pruning.methods.base import register_method
from llava.pruning.methods.pre_llm import PreLLMMethod, VisualTokens
from llava.pruning.selection import TokenSelection


@register_method
@dataclass
class VisPruner(PreLLMMethod):
    """``visual_tokens`` = T and ``important_ratio`` = r (default 0.5)."""

    important_ratio: float = 0.5

    name = "vispruner"

    def __post_init__(self) -> None:
        if not 0.0 <= self.important_ratio <= 1.0:
            raise ValueError(f"vispruner: important_ratio must lie in [0, 1], got {self.important_ratio}")

    def select_visual(self, tokens: VisualTokens) -> TokenSelection:
        attention = tokens.cls_attention()
        kept = [
            vispruner_keep(attention[b], tokens.vision_features[b], self.visual_tokens, self.important_ratio)
            for b in range(attention.shape[0])
        ]
        metadata = {"method": "vispruner", "important": round(self.visual_tokens * self.important_ratio)}
        return TokenSelection(torch.stack(kept), attention, metadata)
