"""CDPruner (pre-LLM): conditional DPP over the visual tokens, relevance from the instruction.

Zhang et al., 2025, "Beyond Attention or Similarity: Maximizing Conditional Diversity for Token Pruning
in MLLMs". Official code: Theia-4869/CDPruner at 9541616c; the selection rule, step by step with its lines,
is in ``llava.pruning.dpp``. Similarity from the projected image features, as the official code
(``llava/model/llava_arch.py`` l.148-153). Choice (documented fallback): the official relevance compares
CLIP image embeddings (``visual_projection(post_layernorm(feature layer))``) with CLIP text embeddings of
the instruction (``llava/model/multimodal_encoder/clip_encoder.py`` l.79-95); llava-hf checkpoints carry
no CLIP text tower, so ours compares the projected image features with the LLM's own input embeddings of
the instruction (the text after the image, up to the last prompt token). Relevance is normalised per
image (the official code normalises over its batch, which is one image in its evaluation scripts).
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
    """``visual_tokens`` = T; option ``ridge`` (default 0.0, official: none): the greedy solves
    ``L + ridge * max_j L_jj * I`` (1e-3 was our previous default)."""

    ridge: float = 0.0

    name = "cdpruner"

    def __post_init__(self) -> None:
        if not self.ridge >= 0.0:
            raise ValueError(f"cdpruner: ridge must be >= 0, got {self.ridge}")

    def select_visual(self, tokens: VisualTokens) -> TokenSelection:
        kept, relevance_rows = [], []
        for features, text in zip(tokens.features, tokens.instruction_embeddings, strict=True):
            relevance = instruction_relevance(features, text)
            kernel = conditional_kernel(features, relevance)
            kept.append(dpp_greedy_map(kernel, self.visual_tokens, self.ridge).sort().values)
            relevance_rows.append(relevance)
        metadata = {"method": "cdpruner", "relevance": "llm_text_embeddings"}
        return TokenSelection(torch.stack(kept), torch.stack(relevance_rows), metadata)
