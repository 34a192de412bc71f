"""``LlavaForConditionalGeneration`` whose language model is the pruning decoder.

The wrapper checks the image token count against the vision tower's feature count before any heavy
work, finds the image span from ``input_ids == image_token_id`` (never a hard-coded offset: llava-hf
prompts put the image at 5, vicuna_v1 at 35), hands in-LLM methods the span and pre-LLM methods the
visual tokens (``llava.model.pre_llm``), and reports what the prefill did (``pruning_record``,
``llava.model.cost_report``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping

from llava.model import pre_llm
from llava.model.cost_report import prefill_cost
from llava.model.language_model.pruning_config import PruningLlamaConfig
from llava.model.language_model.pruning_llama import PruningLlamaModel
from llava.model.placeholders import expand_image_placeholders, has_placeholders
from llava.model.vision import check_image_tokens, image_features_per_image
from llava.pruning.methods.base import PruningMethod
from llava.pruning.span import span_from_token_id
from toolkit_common.devices import synchronize
from toolkit_common.transformers_compat import cache_kwargs, output_cache, resolve_cache

# transformers skips its checkpoint key conversions for classes defined outside it: without this, a
# llava-hf checkpoint (keys ``language_model.lm_head.*``, ``language_model.model.*``, ...) would load
# with a freshly initialised LM head
if get_checkpoint_conversion_mapping("PruningLlavaForConditionalGeneration") is None:
    register_checkpoint_conversion_mapping("PruningLlavaForConditionalGeneration", get_checkpoint_conversion_mapping("llava"))


def llava_images(images: torch.Tensor | list | None, pixel_values: torch.Tensor | None) -> torch.Tensor | None:
    """``pixel_values`` from LLaVA's ``images=`` (a ``[B, 3, H, W]`` tensor or a list of ``[3, H, W]``)."""
    if images is None:
        return pixel_values
    if pixel_values is not None:
        raise ValueError("pass the image as images= (LLaVA) or pixel_values= (transformers), not both")
    return torch.stack(list(images)) if isinstance(images, list | tuple) else images


class PruningVlmMixin:
    """What every pruning VLM wrapper shares: the method lives on the language model (a ``PruningLlamaModel``,
    ``self.language_model.method``), the in-LLM prefill finds the image span from ``image_token_id``, and the
    prefill's cost is reported (``pruning_record``). A family class puts this before its transformers class."""

    config: Any
    span_planner: Callable[[int], PruningMethod] | None = None
    """For a family whose images give varying token counts and a budget: the method planned for a span length
    (``llava.model.builder`` sets it; each prefill runs the plan for its prompt's image span)."""

    @staticmethod
    def pruning_text_config(config: Any, image_tokens: int | None) -> None:
        """``config.text_config`` as a ``PruningLlamaConfig`` that knows the image token (and, for a family
        whose images always give ``image_tokens`` features, the span length)."""
        if not isinstance(config.text_config, PruningLlamaConfig):
            config.text_config = PruningLlamaConfig.from_llama_config(config.text_config)
        config.text_config.image_token_id = config.image_token_id
        if config.text_config.fast_v_image_token_length is None:
            config.text_config.fast_v_image_token_length = image_tokens

    @property
    def language_model(self) -> PruningLlamaModel:
        return self.model.language_model

    @property
    def method(self) -> PruningMethod | None:
        return self.language_model.method

    def set_pruning_method(self, method: PruningMethod | None) -> None:
        self.language_model.set_pruning_method(method)

    @contextmanager
    def pruning(self, method: PruningMethod | None) -> Iterator[PruningVlmMixin]:
        with self.language_model.pruning(method):
            yield self

    @contextmanager
    def pruning_disabled(self) -> Iterator[PruningVlmMixin]:
        """Run unpruned inside the block (e.g. a ScienceQA question without an image)."""
        with self.language_model.pruning_disabled():
            yield self

    def _forward_in_llm(self, input_ids, prune_span, cache, prefill: bool, **model_inputs: Any):
        """The family's own forward with the pruning decoder choosing among the image tokens of the prompt."""
        planned = nullcontext()
        if prefill and prune_span is None and input_ids is not None and self.language_model.active_method is not None:
            prune_span = span_from_token_id(input_ids, self.config.image_token_id)
            if self.span_planner is not None:
                planned = self.language_model.pruning(self.span_planner(int(prune_span[0, 1] - prune_span[0, 0])))
        started = time.perf_counter()
        with planned:
            outputs = super().forward(
                input_ids=input_ids, prune_span=prune_span, prune_input_ids=input_ids, **cache_kwargs(cache), **model_inputs
            )
        if prefill:
            self._record_prefill_time(outputs, started, input_ids, model_inputs.get("inputs_embeds"))
        return outputs

    def _record_prefill_time(self, outputs: Any, started: float, input_ids, inputs_embeds) -> None:
        """Store the prefill wall time (synchronising CUDA / MPS first) and the unpruned prompt length."""
        synchronize(outputs.logits.device)
        state = self.language_model.pruning_state
        self._last_prefill_ms = (time.perf_counter() - started) * 1000.0
        self._last_prompt_length = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        if state is not None and state.prefill_ms is None:
            state.prefill_ms = self._last_prefill_ms

    @property
    def last_prefill_ms(self) -> float | None:
        """Wall time of the last prefill forward (vision tower + LLM), pruned or not."""
        return getattr(self, "_last_prefill_ms", None)

    @property
    def pruning_record(self) -> dict | None:
        """Summary of the last prefill: kept tokens per layer, equivalent tokens, FLOPs, prefill ms; None if unpruned."""
        return self.sample_pruning_record(None)

    def sample_pruning_record(self, sample: int | None) -> dict | None:
        """``pruning_record`` of one sample of the last batch (the batch mean when ``sample`` is None)."""
        state = self.language_model.pruning_state
        if state is None:
            return None
        # a sample's own prompt (its left padding is not computed for it)
        length = state.prompt_length if sample is None else int(state.prompt_mask[sample].sum())
        return prefill_cost(self.config, state.record, length, state.prefill_ms, sample)


class PruningLlavaForConditionalGeneration(PruningVlmMixin, LlavaForConditionalGeneration):
    """LLaVA-1.5 with visual-token pruning: in-LLM methods in the decoder, pre-LLM methods on the visual tokens."""

    def __init__(self, config: LlavaConfig) -> None:
        self.pruning_text_config(config, image_features_per_image(config))
        super().__init__(config)
        self._last_prompt_length: int | None = None

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Any = None,
        prune_span: torch.Tensor | None = None,
        cache: Any = None,
        images: torch.Tensor | None = None,
        image_sizes: Any = None,
        **kwargs: Any,
    ):
        """llava-hf's forward; also LLaVA's ``images=`` and ``IMAGE_TOKEN_INDEX`` placeholders (``expand_placeholders``)."""
        del image_sizes  # LLaVA-1.6's anyres only; LLaVA-1.5 ignores it too
        pixel_values = llava_images(images, pixel_values)
        if has_placeholders(input_ids):
            input_ids, attention_mask = self.expand_placeholders(input_ids, attention_mask)
        cache = resolve_cache(past_key_values, cache)
        prefill = cache is None or cache.get_seq_length() == 0
        if input_ids is not None and pixel_values is not None:
            check_image_tokens(self.config, input_ids, pixel_values)
        method = self.language_model.active_method
        if method is not None and method.pre_llm:
            return self._forward_pre_llm(method, input_ids, pixel_values, attention_mask, cache, prefill, **kwargs)
        return self._forward_in_llm(
            input_ids, prune_span, cache, prefill, pixel_values=pixel_values, attention_mask=attention_mask, **kwargs
        )

    def expand_placeholders(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None):
        """``input_ids`` with each ``IMAGE_TOKEN_INDEX`` (-200) as this model's image tokens, and the mask."""
        pad = self.config.text_config.pad_token_id
        pad = pad if pad is not None else (self.generation_config.pad_token_id or 0)
        return expand_image_placeholders(input_ids, attention_mask, self.config.image_token_id, image_features_per_image(self.config), pad)

    @torch.no_grad()
    def generate(self, inputs: torch.Tensor | None = None, images: torch.Tensor | None = None, image_sizes: Any = None, **kwargs: Any):
        """``GenerationMixin.generate``, also called as LLaVA's ``model.generate(input_ids, images=...)``.

        With ``IMAGE_TOKEN_INDEX`` placeholders in the ids (``tokenizer_image_token``'s default) the ids
        are expanded first and, as LLaVA's own ``generate`` does, only the new tokens are returned;
        llava-hf style ids (image tokens already expanded) return prompt + new tokens as transformers does.
        """
        del image_sizes
        kwargs["pixel_values"] = llava_images(images, kwargs.get("pixel_values"))
        input_ids = inputs if inputs is not None else kwargs.pop("input_ids", None)
        if not has_placeholders(input_ids):
            return super().generate(input_ids, **kwargs)
        input_ids, kwargs["attention_mask"] = self.expand_placeholders(input_ids, kwargs.get("attention_mask"))
        output = super().generate(input_ids, **kwargs)
        prompt = input_ids.shape[1]
        if isinstance(output, torch.Tensor):
            return output[:, prompt:]
        output.sequences = output.sequences[:, prompt:]
        return output

    def _forward_pre_llm(self, method, input_ids, pixel_values, attention_mask, cache, prefill: bool, **kwargs: Any):
        kwargs.pop("prune_query_index", None)
        state = self.language_model.pruning_state
        if not prefill or pixel_values is None:
            if state is not None and state.owns(cache) and attention_mask is not None:
                attention_mask = pre_llm.decode_mask(state, attention_mask)
            with self.language_model.pruning_disabled():
                return super().forward(input_ids=input_ids, attention_mask=attention_mask, **cache_kwargs(cache), **kwargs)
        started = time.perf_counter()
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if cache is None and state is not None and state.pre_llm_keep is not None and state.continued_by(input_ids, attention_mask):
            new_tokens = torch.ones(input_ids.shape[0], input_ids.shape[1] - state.prompt_length, dtype=torch.bool, device=input_ids.device)
            keep = torch.cat([state.pre_llm_keep, new_tokens], dim=1)
            features = state.pre_llm_features
        else:
            keep, features, state = pre_llm.choose_prompt_tokens(self, method, input_ids, pixel_values, attention_mask)
        embeddings, mask = pre_llm.compacted_inputs(self, input_ids, features, attention_mask, keep)
        with self.language_model.pruning_disabled():
            outputs = super().forward(inputs_embeds=embeddings, attention_mask=mask, **cache_kwargs(cache), **kwargs)
        if output_cache(outputs) is not None:
            state.attach_cache(output_cache(outputs))
        self.language_model.pruning_state = state
        self._record_prefill_time(outputs, started, input_ids, None)
        return outputs
