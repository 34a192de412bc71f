"""VisPruner (pre-LLM): important tokens by the vision tower's [CLS] attention, the rest by diversity.

Zhang et al., 2025, "Beyond Text-Visual Attention: Exploiting Visual Cues for Effective Token Pruning in
VLMs". Official code: Theia-4869/VisPruner at aefa01ad; the selection rule, step by step with its lines,
is in ``llava.pruning.diversity``. Inputs as the official code takes them
(``llava/model/multimodal_encoder/clip_encoder.py`` l.36-43, ``llava/model/llava_arch.py`` l.142, 154):
the [CLS] -> patch attention of the encoder layer that produces the feature layer (``attentions[-2]`` with
``hidden_states[-2]`` for LLaVA-1.5), mean over heads, here computed from that layer's q.k of the CLS row
(the tower stays on SDPA); duplicates are measured on the feature-layer patch features, before the
projector (l.160).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llava.pruning.budget import COUNT_ROUNDINGS
from llava.pruning.diversity import ATTENTION_ORDER, DIVERSE_ORDERS, check_choice, important_count, vispruner_keep
from llava.pruning.methods.base import register_method
from llava.pruning.methods.pre_llm import PreLLMMethod, VisualTokens
from llava.pruning.selection import TokenSelection


@register_method
@dataclass
class VisPruner(PreLLMMethod):
    """``visual_tokens`` = T and ``important_ratio`` = r (default 0.5); options (official defaults):
    ``count_rounding`` (``"floor"``, official ``int(T r)``, or ``"round"``) and ``diverse_order``
    (``"attention"``, official, or ``"raster"``)."""

    important_ratio: float = 0.5
    count_rounding: str = "floor"
    diverse_order: str = ATTENTION_ORDER

    name = "vispruner"

    def __post_init__(self) -> None:
        if not 0.0 <= self.important_ratio <= 1.0:
            raise ValueError(f"vispruner: important_ratio must lie in [0, 1], got {self.important_ratio}")
        check_choice("count_rounding", self.count_rounding, COUNT_ROUNDINGS)
        check_choice("diverse_order", self.diverse_order, DIVERSE_ORDERS)

    def select_visual(self, tokens: VisualTokens) -> TokenSelection:
        attention = tokens.cls_attention()
        kept = [
            vispruner_keep(
                attention[b],
                tokens.vision_features[b],
                self.visual_tokens,
                self.important_ratio,
                self.count_rounding,
                self.diverse_order,
            )
            for b in range(attention.shape[0])
        ]
        important = important_count(self.visual_tokens, self.important_ratio, self.count_rounding)
        metadata = {"method": "vispruner", "important": important}
        return TokenSelection(torch.stack(kept), attention, metadata)
