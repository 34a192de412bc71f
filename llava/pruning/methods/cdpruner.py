"""CDPruner (pre-LLM): conditional DPP over the visual tokens, relevance from the instruction.

Zhang et al., 2025, "Beyond Attention or Similarity: Maximizing Conditional Diversity for Token Pruning
in MLLMs". See ``llava.pruning.dpp``. Choice (documented fallback): llava-hf checkpoints carry no CLIP
text tower, so relevance compares the projected image features with the LLM's own input embeddings of
the instruction (the text after the image, up to the last prompt token).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llava.pruning.dpp import conditional_kernel, dpp_greedy_map, instruction_relevance
from llava.pruning.methods.base import register_method
from llava.pruning.methods.pre_llm import PreLLMMethod, VisualTokens
from llava.pruning.selection import TokenSelection


@register_method
@dataclass
class CDPruner(PreLLMMethod):
    """``visual_tokens`` = T."""

    name = "cdpruner"

    def select_visual(self, tokens: VisualTokens) -> TokenSelection:
        kept, relevance_rows = [], []
        for features, text in zip(tokens.features, tokens.instruction_embeddings, strict=True):
            relevance = instruction_relevance(features, text)
            kernel = conditional_kernel(features, relevance)
            kept.append(dpp_greedy_map(kernel, self.visual_tokens).sort().values)
            relevance_rows.append(relevance)
        metadata = {"method": "cdpruner", "relevance": "llm_text_embeddings"}
        return TokenSelection(torch.stack(kept), torch.stack(relevance_rows), metadata)
