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

from llava.compat import cache_kwargs, output_cache, resolve_cache
from llava.model.language_model.pruning_config import PruningLlamaConfig
from llava.model.language_model.pruning_llama import PruningLlamaModel
from llava.pruning.budget import layer_flops, prefill_flops
from llava.pruning.methods.pre_llm import PreLLMMethod, VisualTokens
from llava.pruning.record import PruningRecord, StageRecord
from llava.pruning.span import compaction_index, last_valid_index, span_from_token_id


def cls_attention(layer: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """``[B, S]`` [CLS] -> patch attention of a CLIP encoder ``layer`` on its input ``hidden`` ``[B, 1 + S, d]``.

    Only the CLS row is computed (q of one token against every key), mean over heads; the tower keeps SDPA.
    """
    attn = layer.self_attn
    normed = layer.layer_norm1(hidden)
    batch, tokens, _ = normed.shape
    query = attn.q_proj(normed[:, :1]).view(batch, 1, attn.num_heads, attn.head_dim).transpose(1, 2)
    keys = attn.k_proj(normed).view(batch, tokens, attn.num_heads, attn.head_dim).transpose(1, 2)
    probs = (query.float() @ keys.float().transpose(-1, -2) * attn.scale).softmax(dim=-1)  # [B, heads, 1, N]
    return probs[:, :, 0, 1:].mean(dim=1)


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
        cache: Any = None,
        **kwargs: Any,
    ):
        cache = resolve_cache(past_key_values, cache)
        prefill = cache is None or cache.get_seq_length() == 0
        if input_ids is not None and pixel_values is not None:
            self._check_image_tokens(input_ids, pixel_values)
        method = self.language_model.pruning_method() if self.language_model.pruning_enabled else None
        if isinstance(method, PreLLMMethod):
            return self._forward_pre_llm(method, input_ids, pixel_values, attention_mask, cache, **kwargs)
        if prefill and prune_span is None and input_ids is not None and method is not None:
            prune_span = span_from_token_id(input_ids, self.config.image_token_id)
        started = time.perf_counter()
        outputs = super().forward(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            prune_span=prune_span,
            **cache_kwargs(cache),
            **kwargs,
        )
        if prefill:
            self._record_prefill_time(
                outputs, started, (input_ids if input_ids is not None else kwargs["inputs_embeds"]).shape[1]
            )
        return outputs

    def _record_prefill_time(self, outputs: Any, started: float, prompt_length: int) -> None:
        """Store the prefill wall time (synchronising CUDA first) and the unpruned prompt length."""
        if outputs.logits.is_cuda:
            torch.cuda.synchronize()
        self._last_prefill_ms = (time.perf_counter() - started) * 1000.0
        self._last_prompt_length = prompt_length

    def _forward_pre_llm(
        self,
        method: PreLLMMethod,
        input_ids: torch.LongTensor | None,
        pixel_values: torch.FloatTensor | None,
        attention_mask: torch.Tensor | None,
        cache: Any,
        prune_query_index: torch.Tensor | int | None = None,
        **kwargs: Any,
    ):
        """Prefill: keep ``method``'s visual tokens and drop the other image tokens before the LLM.

        Decode steps drop the same prompt columns from the attention mask ``generate`` grows (the cache
        holds only the kept tokens); the LLM itself never prunes.
        """
        prefill = cache is None or cache.get_seq_length() == 0
        keep_prompt = getattr(cache, "pre_llm_keep", None)
        if not prefill or pixel_values is None:
            if keep_prompt is not None and attention_mask is not None:
                prompt = keep_prompt.shape[1]
                kept_columns = attention_mask[:, :prompt][keep_prompt].view(keep_prompt.shape[0], -1)
                attention_mask = torch.cat([kept_columns, attention_mask[:, prompt:]], dim=1)
            with self.language_model.pruning_disabled():
                return super().forward(
                    input_ids=input_ids, attention_mask=attention_mask, **cache_kwargs(cache), **kwargs
                )
        started = time.perf_counter()
        batch, seq_len = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        span = span_from_token_id(input_ids, self.config.image_token_id)
        query = (
            last_valid_index(attention_mask, batch, seq_len, input_ids.device)
            if prune_query_index is None
            else torch.as_tensor(prune_query_index, device=input_ids.device).expand(batch)
        )
        tokens, features = self._visual_tokens(input_ids, pixel_values, span, query)
        selection_started = time.perf_counter()
        selection = method.select_visual(tokens)
        selection_ms = (time.perf_counter() - selection_started) * 1000.0
        kept = selection.indices.to(input_ids.device) + span[:, :1]  # prompt positions of the kept image tokens
        keep = torch.ones_like(input_ids, dtype=torch.bool)
        positions = torch.arange(seq_len, device=input_ids.device)
        keep &= ~((positions >= span[:, :1]) & (positions < span[:, 1:]))
        keep.scatter_(1, kept, True)
        embeddings = self.get_input_embeddings()(input_ids)
        image_rows = (input_ids == self.config.image_token_id)[..., None].expand_as(embeddings)
        embeddings = embeddings.masked_scatter(image_rows, features.to(embeddings.dtype))
        index = compaction_index(keep)
        with self.language_model.pruning_disabled():
            outputs = super().forward(
                inputs_embeds=embeddings.gather(1, index[..., None].expand(-1, -1, embeddings.shape[-1])),
                attention_mask=attention_mask.gather(1, index),
                **cache_kwargs(cache),
                **kwargs,
            )
        if output_cache(outputs) is not None:
            output_cache(outputs).pre_llm_keep = keep
        record = PruningRecord(method.name, span.cpu(), self.config.text_config.num_hidden_layers)
        record.stages.append(
            StageRecord(0, kept.cpu(), selection.scores.detach().cpu(), selection.metadata, selection_ms)
        )
        self.language_model.last_pruning_record = record
        self.language_model._last_prefill_length = seq_len
        self._record_prefill_time(outputs, started, seq_len)
        return outputs

    def _visual_tokens(
        self, input_ids: torch.Tensor, pixel_values: torch.Tensor, span: torch.Tensor, query: torch.Tensor
    ) -> tuple[VisualTokens, torch.Tensor]:
        """What pre-LLM methods look at, from one pass of the vision tower; also the projected features."""
        layer = self.config.vision_feature_layer
        if not isinstance(layer, int):
            raise ValueError(f"pre-LLM pruning needs a single vision_feature_layer, got {layer}")
        tower = self.model.vision_tower
        hidden = tower(pixel_values.to(tower.dtype), output_hidden_states=True).hidden_states
        selected = hidden[layer]
        if self.config.vision_feature_select_strategy == "default":
            selected = selected[:, 1:]
        features = self.model.multi_modal_projector(selected)
        producing_layer = layer % len(hidden) - 1  # hidden[i] is the output of encoder layer i - 1
        embeddings = self.get_input_embeddings()(input_ids)
        instruction = [embeddings[b, int(span[b, 1]) : int(query[b]) + 1] for b in range(input_ids.shape[0])]
        tokens = VisualTokens(
            features=features,
            vision_features=selected,
            cls_attention=lambda: cls_attention(tower.encoder.layers[producing_layer], hidden[producing_layer]),
            instruction_embeddings=instruction,
        )
        return tokens, features

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
    def last_prefill_ms(self) -> float | None:
        """Wall time of the last prefill forward (vision tower + LLM), pruned or not."""
        return self._last_prefill_ms

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
