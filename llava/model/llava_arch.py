"""``LlavaForConditionalGeneration`` whose language model is the pruning decoder.

The wrapper finds the image span from ``input_ids == image_token_id`` (never a hard-coded offset:
llava-hf prompts put the image at 5, vicuna_v1 at 35), checks the image token count against the
vision tower's feature count before any heavy work, passes the span to the decoder, and reports
what the prefill did (``pruning_record``).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any

import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration

from llava.model.language_model.pruning_config import PruningLlamaConfig
from llava.model.language_model.pruning_llama import PruningLlamaModel
from llava.pruning.budget import layer_flops, prefill_flops
from llava.pruning.span import span_from_token_id


def image_features_per_image(config: LlavaConfig) -> int:
    """Visual tokens one image yields: (image_size / patch_size)^2 (+1 with the "full" strategy's CLS)."""
    vision = config.vision_config
    patches = (vision.image_size // vision.patch_size) ** 2
    return patches + (1 if config.vision_feature_select_strategy == "full" else 0)


class PruningLlavaForConditionalGeneration(LlavaForConditionalGeneration):
    """LLaVA with visual-token pruning; the method comes from ``config.text_config`` (a ``PruningLlamaConfig``)."""

    def __init__(self, config: LlavaConfig) -> None:
        if not isinstance(config.text_config, PruningLlamaConfig):
            config.text_config = PruningLlamaConfig.from_llama_config(config.text_config)
        config.text_config.image_token_id = config.image_token_id
        if config.text_config.fast_v_image_token_length is None:
            config.text_config.fast_v_image_token_length = image_features_per_image(config)
        super().__init__(config)
        self._last_prefill_ms: float | None = None
        self._last_prompt_length: int | None = None

    @property
    def language_model(self) -> PruningLlamaModel:
        return self.model.language_model

    @contextmanager
    def pruning_disabled(self):
        """Run unpruned inside the block (e.g. a ScienceQA question without an image)."""
        with self.language_model.pruning_disabled():
            yield self

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Any = None,
        prune_span: torch.Tensor | None = None,
        **kwargs: Any,
    ):
        prefill = past_key_values is None or past_key_values.get_seq_length() == 0
        if input_ids is not None and pixel_values is not None:
            self._check_image_tokens(input_ids, pixel_values)
        if (
            prefill
            and prune_span is None
            and input_ids is not None
            and self.language_model.pruning_enabled
            and self.language_model.pruning_method() is not None
        ):
            prune_span = span_from_token_id(input_ids, self.config.image_token_id)
        started = time.perf_counter()
        outputs = super().forward(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            prune_span=prune_span,
            **kwargs,
        )
        if prefill:
            if outputs.logits.is_cuda:
                torch.cuda.synchronize()
            self._last_prefill_ms = (time.perf_counter() - started) * 1000.0
            self._last_prompt_length = (input_ids if input_ids is not None else kwargs["inputs_embeds"]).shape[1]
        return outputs

    def _check_image_tokens(self, input_ids: torch.Tensor, pixel_values: torch.Tensor) -> None:
        per_image = image_features_per_image(self.config)
        found = int((input_ids == self.config.image_token_id).sum())
        expected = per_image * pixel_values.shape[0]
        if found != expected:
            raise ValueError(
                f"the prompt holds {found} image tokens (id {self.config.image_token_id}) but {pixel_values.shape[0]} "
                f"image(s) give {expected} features ({per_image} per image): expand each <image> placeholder to "
                f"{per_image} tokens (llava.mm_utils.tokenizer_image_token does this)"
            )

    @property
    def pruning_record(self) -> dict | None:
        """Summary of the last prefill: kept tokens per layer, equivalent tokens, FLOPs, prefill ms; None if unpruned."""
        record = self.language_model.last_pruning_record
        if record is None:
            return None
        text = self.config.text_config
        other = self._last_prompt_length - record.span_length
        flops = prefill_flops(record.span_per_layer, other, text.hidden_size, text.intermediate_size, "swiglu")
        full = prefill_flops(
            [record.span_length] * record.num_layers,
            other,
            text.hidden_size,
            text.intermediate_size,
            "swiglu",
        )
        vision = self.config.vision_config
        vision_flops = vision.num_hidden_layers * layer_flops(
            image_features_per_image(self.config) + 1, vision.hidden_size, vision.intermediate_size, "fastv"
        )
        return {
            **record.summary(),
            "flops": flops,
            "flops_unpruned": full,
            "flops_ratio": round(flops / full, 4),
            "flops_convention": "swiglu",
            "vision_flops": vision_flops,
            "prefill_ms": None if self._last_prefill_ms is None else round(self._last_prefill_ms, 3),
        }
