"""``LlavaNextForConditionalGeneration`` (LLaVA-NeXT / LLaVA-1.6) whose language model is the pruning decoder.

What is pruned: LLaVA-NeXT's anyres image gives the base image's features, then the tiles' features with an
``image_newline`` token closing each row, all marked ``image_token_id`` in ``input_ids`` (the processor expands
``<image>`` to that count for the image's size): one contiguous run per image, of a length that depends on the
image size (e.g. 2,144-2,928 tokens at 336 px for the 7B models). In-LLM methods score that whole run together
(base, tiles and newline tokens alike) as one span. Pre-LLM methods (VisPruner, CDPruner, the learned merger)
choose among one tower's 576 features and are not run on this family yet (refused at load).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping

from llava.model.llava_arch import PruningVlmMixin
from llava.pruning.methods.base import PruningMethod
from toolkit_common.transformers_compat import resolve_cache

if get_checkpoint_conversion_mapping("PruningLlavaNextForConditionalGeneration") is None:
    register_checkpoint_conversion_mapping(
        "PruningLlavaNextForConditionalGeneration", get_checkpoint_conversion_mapping("llava_next")
    )


def refuse_pre_llm(method: PruningMethod | None, family: str) -> None:
    """A pre-LLM method on a family whose vision side it does not know yet is a one-line error."""
    if method is not None and method.pre_llm:
        raise ValueError(
            f"{method.name} chooses among the vision tower's features before the LLM; on {family} it is not supported yet"
            " (in-LLM methods are: fastv, pdrop, sparsevlm, random, ...)"
        )


class PruningLlavaNextForConditionalGeneration(PruningVlmMixin, LlavaNextForConditionalGeneration):
    """LLaVA-NeXT with in-LLM visual-token pruning over each sample's whole anyres image span."""

    family = "LLaVA-NeXT"

    def __init__(self, config: LlavaNextConfig) -> None:
        self.pruning_text_config(config, None)  # the span length follows the image size
        super().__init__(config)
        self._last_prompt_length: int | None = None

    def set_pruning_method(self, method: PruningMethod | None) -> None:
        refuse_pre_llm(method, self.family)
        super().set_pruning_method(method)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_sizes: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Any = None,
        prune_span: torch.Tensor | None = None,
        cache: Any = None,
        **kwargs: Any,
    ):
        """llava-hf's LLaVA-NeXT forward with the image span pruned in the decoder."""
        refuse_pre_llm(self.language_model.active_method, self.family)
        cache = resolve_cache(past_key_values, cache)
        prefill = cache is None or cache.get_seq_length() == 0
        return self._forward_in_llm(
            input_ids, prune_span, cache, prefill,
            pixel_values=pixel_values, image_sizes=image_sizes, attention_mask=attention_mask, **kwargs,
        )
