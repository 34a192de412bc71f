"""A pruning-capable Llama decoder: one decoder loop, pluggable selectors from the method registry.

At each boundary of the method's schedule (prefill only) the engine asks the selector which live
span tokens to keep, then keeps ``prefix + kept span tokens (original order) + suffix``:

* hidden states and RoPE (cos, sin) are gathered, so **kept tokens keep their original positions**
  (as FastV does; the official PDrop / SparseVLM v1.5 code renumbers positions instead);
* the attention mask is rebuilt for the shorter sequence (left padding included) and sized against
  that layer's own cache, so layers after a prune cache only the kept tokens;
* decode steps never re-prune: they reuse the compacted padding mask stored on the cache, and use the
  absolute positions of the unpruned sequence (the cache's layer 0 is never pruned).

Attention scores for the selector come from q.k of only the query rows needed
(``llava.pruning.attention``), so SDPA / flash attention stay on and ``output_attentions`` is never
required. ``pruning_scoring="full_matrix"`` materialises the N x N map instead (reference path).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import Cache, DynamicCache, LlamaForCausalLM, LlamaModel
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.models.llama.modeling_llama import LlamaPreTrainedModel, apply_rotary_pos_emb
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from llava.compat import cache_kwargs, resolve_cache
from llava.model.language_model.pruning_config import PruningLlamaConfig
from llava.pruning.attention import attention_probs_for_rows, full_attention_probs
from llava.pruning.methods.base import PruneStep, PruningMethod
from llava.pruning.record import PruningRecord, StageRecord
from llava.pruning.registry import method_from_config
from llava.pruning.selection import validate_token_selection
from llava.pruning.span import (
    compaction_index,
    keep_mask_after_selection,
    last_valid_index,
    span_from_offset,
    span_from_token_id,
    validate_span,
)


@dataclass
class _Sequence:
    """The current (possibly compacted) sequence inside the decoder loop."""

    hidden: torch.Tensor  # [B, N, d]
    cos: torch.Tensor  # [B, N, head_dim]
    sin: torch.Tensor  # [B, N, head_dim]
    valid: torch.Tensor  # [B, N] bool, False = padding
    original_index: torch.Tensor  # [B, N] index of each token in the unpruned input
    mask: Any  # what the attention implementation takes (4D tensor, None, BlockMask, ...)
    compacted: bool = False


@dataclass
class PrunedCacheState:
    """Stored on the cache after a pruned prefill so decode steps rebuild the right masks.

    ``stage_valid[layer]``: ``[B, N_layer]`` padding mask of the kept prefill tokens, for the layers
    from ``layer`` up to the next stage.
    """

    prefill_length: int
    stage_valid: dict[int, torch.Tensor]


def _gather_rows(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``tensor[b, index[b]]`` for a ``[B, N, ...]`` tensor and ``[B, N']`` index."""
    shape = index.shape + tensor.shape[2:]
    expanded = index.view(*index.shape, *([1] * (tensor.dim() - 2))).expand(shape)
    return tensor.gather(1, expanded)


class PruningLlamaModel(LlamaModel):
    """``LlamaModel`` whose prefill prunes a span of tokens as ``config.pruning_method`` says.

    Extra forward arguments:
        prune_span: ``[B, 2]`` or ``(start, end)``; the prunable span (else from ``fast_v_sys_length``
            or from ``image_token_id`` in ``input_ids``).
        prune_query_index: ``[B]`` or int; the selection query row (default: the last non-padding
            token). Recomputing a generated sequence without cache passes the prompt's last index.
    """

    config_class = PruningLlamaConfig
    default_pruning_method: ClassVar[str | None] = None

    def __init__(self, config: PruningLlamaConfig) -> None:
        if self.default_pruning_method is not None and config.pruning_method is None and not config.use_fast_v:
            config.pruning_method = self.default_pruning_method
        super().__init__(config)
        self.pruning_enabled = True
        self.last_pruning_record: PruningRecord | None = None
        self.pruning_method()  # validate the configuration before any forward

    # ----- configuration -------------------------------------------------------------------------
    def pruning_method(self) -> PruningMethod | None:
        """The configured method (rebuilt from the config, so run-time config changes apply), validated."""
        method = method_from_config(self.config)
        if method is not None:
            method.validate(self.config.num_hidden_layers, self.config.fast_v_image_token_length)
        return method

    @contextmanager
    def pruning_disabled(self):
        """Run the stock model inside the block (e.g. text-only questions of a pruned evaluation)."""
        previous, self.pruning_enabled = self.pruning_enabled, False
        try:
            yield self
        finally:
            self.pruning_enabled = previous

    @property
    def token_selection_method(self) -> str:
        return self.config.fast_v_token_selection_method

    @token_selection_method.setter
    def token_selection_method(self, value: str) -> None:
        validate_token_selection(value, self.config.fast_v_weighted_alpha)
        self.config.fast_v_token_selection_method = value

    @property
    def weighted_alpha(self) -> float:
        return self.config.fast_v_weighted_alpha

    @weighted_alpha.setter
    def weighted_alpha(self, value: float) -> None:
        validate_token_selection(self.config.fast_v_token_selection_method, value)
        self.config.fast_v_weighted_alpha = value

    # ----- what FastV-Advanced users read after a forward ----------------------------------------
    @property
    def last_gen_attention_mask(self) -> torch.Tensor | None:
        """``[B, N]`` bool over the unpruned prompt: False for the span tokens dropped."""
        record = self.last_pruning_record
        return None if record is None else record.kept_mask(self._last_prefill_length)

    @property
    def last_gen_kept_indices(self) -> torch.Tensor | None:
        """``[B, R]`` prompt positions of the span tokens kept by the last stage."""
        record = self.last_pruning_record
        return None if record is None or not record.stages else record.stages[-1].kept_index

    @property
    def last_selection_metadata(self) -> dict | None:
        record = self.last_pruning_record
        return None if record is None or not record.stages else record.stages[-1].metadata

    # ----- forward -------------------------------------------------------------------------------
    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        prune_span: torch.Tensor | tuple[int, int] | None = None,
        prune_query_index: torch.Tensor | int | None = None,
        cache: Cache | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        cache = resolve_cache(past_key_values, cache)
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        past_seen = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            position_ids = (torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen).unsqueeze(0)

        batch, seq_len = inputs_embeds.shape[:2]
        prefill = past_seen == 0
        method = self.pruning_method() if self.pruning_enabled and prefill else None
        if prefill:
            self.last_pruning_record = None
        if method is not None:
            if attention_mask is None:
                attention_mask = torch.ones(batch, seq_len, dtype=torch.long, device=inputs_embeds.device)
            span = self._resolve_span(input_ids, attention_mask, prune_span, batch, seq_len, inputs_embeds.device)
            query_index = self._resolve_query_index(
                prune_query_index, attention_mask, batch, seq_len, inputs_embeds.device
            )
            span_len = validate_span(span, query_index, seq_len)
            method.validate(self.config.num_hidden_layers, span_len)
            if cache is not None and type(cache) is not DynamicCache:
                raise ValueError(
                    f"pruning needs a DynamicCache (layers hold different lengths), got {type(cache).__name__}"
                )
            self._last_prefill_length = seq_len
            self.last_pruning_record = PruningRecord(method.name, span.cpu(), self.config.num_hidden_layers)
        decode_state: PrunedCacheState | None = getattr(cache, "pruning_state", None) if not prefill else None

        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **cache_kwargs(cache),
        )
        cos, sin = self.rotary_emb(inputs_embeds, position_ids=position_ids)
        valid = (
            attention_mask[:, -seq_len:].bool()
            if attention_mask is not None
            else torch.ones(batch, seq_len, dtype=torch.bool, device=inputs_embeds.device)
        )
        seq = _Sequence(
            hidden=inputs_embeds,
            cos=cos.expand(batch, -1, -1),
            sin=sin.expand(batch, -1, -1),
            valid=valid,
            original_index=torch.arange(seq_len, device=inputs_embeds.device).expand(batch, -1),
            mask=causal_mask,
        )
        schedule = dict(method.schedule(span_len)) if method is not None else {}
        stage_valid: dict[int, torch.Tensor] = {}
        span_index = query = None
        if method is not None:
            positions = torch.arange(span_len, device=inputs_embeds.device)
            span_index = span[:, :1].to(inputs_embeds.device) + positions  # [B, S]
            query = query_index

        previous_input = None
        for idx, decoder_layer in enumerate(self.layers[: self.config.num_hidden_layers]):
            if idx in schedule:
                step = PruneStep(
                    layer=idx,
                    stage=len(stage_valid),
                    span_index=span_index,
                    query_index=query,
                    hidden_states=seq.hidden,
                    attention=self._attention_fn(idx, seq, previous_input),
                    original_index=seq.original_index,
                    original_span=span,
                    input_embeddings=inputs_embeds,
                    rope=(seq.cos, seq.sin),
                )
                seq, span_index, query = self._prune(method, step, schedule[idx], seq, cache)
                stage_valid[idx] = seq.valid
            elif decode_state is not None and idx in decode_state.stage_valid:
                seq = self._decode_stage(idx, seq, decode_state, attention_mask, cache)
            previous_input = seq.hidden
            seq.hidden = decoder_layer(
                seq.hidden,
                attention_mask=seq.mask,
                position_embeddings=(seq.cos, seq.sin),
                position_ids=None if seq.compacted else position_ids,
                use_cache=use_cache,
                **cache_kwargs(cache),
                **kwargs,
            )

        if stage_valid and cache is not None:
            cache.pruning_state = PrunedCacheState(prefill_length=seq_len, stage_valid=stage_valid)
        hidden_states = self.norm(seq.hidden)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, **cache_kwargs(cache))

    # ----- helpers -------------------------------------------------------------------------------
    def _resolve_span(self, input_ids, attention_mask, prune_span, batch, seq_len, device) -> torch.Tensor:
        if prune_span is not None:
            span = torch.as_tensor(prune_span, device=device, dtype=torch.long)
            return span.expand(batch, 2) if span.dim() == 1 else span
        if self.config.fast_v_sys_length is not None:
            return span_from_offset(
                attention_mask,
                batch,
                seq_len,
                self.config.fast_v_sys_length,
                self.config.fast_v_image_token_length,
                device,
            )
        if input_ids is not None and self.config.image_token_id is not None:
            return span_from_token_id(input_ids, self.config.image_token_id)
        raise ValueError(
            "no prunable span: pass prune_span=(start, end), set fast_v_sys_length and fast_v_image_token_length, "
            "or set image_token_id and include those tokens in input_ids"
        )

    @staticmethod
    def _resolve_query_index(prune_query_index, attention_mask, batch, seq_len, device) -> torch.Tensor:
        if prune_query_index is None:
            return last_valid_index(attention_mask, batch, seq_len, device)
        return torch.as_tensor(prune_query_index, device=device, dtype=torch.long).expand(batch).clone()

    def _attention_fn(self, boundary: int, seq: _Sequence, previous_input: torch.Tensor | None):
        """``attention(layer, query_index [B, Q]) -> [B, H, Q, N]`` for ``layer`` in {boundary - 1, boundary}."""

        def attention(layer: int, query_index: torch.Tensor) -> torch.Tensor:
            if layer == boundary:
                layer_input = seq.hidden
            elif layer == boundary - 1 and previous_input is not None:
                layer_input = previous_input
            else:
                raise ValueError(f"attention at layer {layer} is not available at boundary {boundary}")
            decoder_layer = self.layers[layer]
            attn = decoder_layer.self_attn
            normed = decoder_layer.input_layernorm(layer_input)
            keys = attn.k_proj(normed).view(*normed.shape[:2], -1, attn.head_dim).transpose(1, 2)
            if self.config.pruning_scoring == "full_matrix":
                queries = attn.q_proj(normed).view(*normed.shape[:2], -1, attn.head_dim).transpose(1, 2)
                queries, keys = apply_rotary_pos_emb(queries, keys, seq.cos, seq.sin)
                probs = full_attention_probs(queries, keys, seq.valid, attn.scaling)
                index = query_index[:, None, :, None].expand(-1, probs.shape[1], -1, probs.shape[-1])
                return probs.gather(2, index)
            rows = _gather_rows(normed, query_index)
            queries = attn.q_proj(rows).view(*rows.shape[:2], -1, attn.head_dim).transpose(1, 2)
            q_cos, q_sin = _gather_rows(seq.cos, query_index), _gather_rows(seq.sin, query_index)
            queries, _ = apply_rotary_pos_emb(queries, queries, q_cos, q_sin)
            _, keys = apply_rotary_pos_emb(keys, keys, seq.cos, seq.sin)
            return attention_probs_for_rows(queries, keys, query_index, seq.valid, attn.scaling)

        return attention

    def _prune(
        self, method: PruningMethod, step: PruneStep, keep: int, seq: _Sequence, cache: Cache | None
    ) -> tuple[_Sequence, torch.Tensor, torch.Tensor]:
        """Select ``keep`` span tokens and compact the sequence; return it with the new span and query index."""
        started = time.perf_counter()
        selection = method.select(step, keep)
        kept = selection.indices.to(step.span_index.device)
        selection_ms = (time.perf_counter() - started) * 1000.0
        seq_len = seq.hidden.shape[1]
        keep_mask = keep_mask_after_selection(seq_len, step.span_index, kept)
        index = compaction_index(keep_mask)
        new_position = keep_mask.long().cumsum(dim=1) - 1  # old index -> new index, for kept tokens
        kept_span = step.span_index.gather(1, kept)
        hidden = _gather_rows(seq.hidden, index)
        metadata = selection.metadata
        if selection.replacement is not None:
            columns, merged = selection.replacement
            merged_span = kept_span.gather(1, columns.to(kept_span.device))
            slots = new_position.gather(1, merged_span)
            hidden = hidden.scatter(1, slots[..., None].expand(-1, -1, hidden.shape[-1]), merged.to(hidden.dtype))
            metadata = {**metadata, "merged_positions": seq.original_index.gather(1, merged_span).tolist()}
        self.last_pruning_record.stages.append(
            StageRecord(
                layer=step.layer,
                kept_index=seq.original_index.gather(1, kept_span).cpu(),
                scores=selection.scores.detach().cpu(),
                metadata=metadata,
                selection_ms=selection_ms,
            )
        )
        valid = seq.valid.gather(1, index)
        mask = create_causal_mask(
            config=self.config,
            inputs_embeds=hidden,
            attention_mask=valid,
            **cache_kwargs(cache),
            position_ids=None,
            layer_idx=step.layer,
        )
        compacted = replace(
            seq,
            hidden=hidden,
            cos=_gather_rows(seq.cos, index),
            sin=_gather_rows(seq.sin, index),
            valid=valid,
            original_index=seq.original_index.gather(1, index),
            mask=mask,
            compacted=True,
        )
        return (
            compacted,
            new_position.gather(1, kept_span),
            new_position.gather(1, step.query_index[:, None])[:, 0],
        )

    def _decode_stage(
        self, layer: int, seq: _Sequence, state: PrunedCacheState, attention_mask, cache: Cache
    ) -> _Sequence:
        """Mask for a decode step at a layer whose cache holds only the kept prefill tokens."""
        kept = state.stage_valid[layer]
        if attention_mask is None:
            new = torch.ones(
                kept.shape[0],
                cache.get_seq_length() + seq.hidden.shape[1] - state.prefill_length,
                dtype=torch.bool,
                device=kept.device,
            )
        else:
            new = attention_mask[:, state.prefill_length :].bool()
        mask = create_causal_mask(
            config=self.config,
            inputs_embeds=seq.hidden,
            attention_mask=torch.cat([kept, new.to(kept.device)], dim=1),
            **cache_kwargs(cache),
            position_ids=None,
            layer_idx=layer,
        )
        return replace(seq, mask=mask, compacted=True)


class PruningLlamaForCausalLM(LlamaForCausalLM):
    """``LlamaForCausalLM`` with the pruning decoder; ``from_pretrained(path, pruning_method=..., ...)`` works."""

    config_class = PruningLlamaConfig

    def __init__(self, config: PruningLlamaConfig) -> None:
        LlamaPreTrainedModel.__init__(self, config)
        self.model = PruningLlamaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        *args: Any,
        prune_span: torch.Tensor | tuple[int, int] | None = None,
        prune_query_index: torch.Tensor | int | None = None,
        **kwargs: Any,
    ):
        """``LlamaForCausalLM.forward`` plus the span arguments (named here so ``generate`` accepts them)."""
        return super().forward(*args, prune_span=prune_span, prune_query_index=prune_query_index, **kwargs)


class Fastv_LlamaModel(PruningLlamaModel):
    """Drop-in name of the FastV fork: the pruning decoder with ``fastv`` as its default method."""

    default_pruning_method = "fastv"


class FastvAdvanced_LlamaModel(Fastv_LlamaModel):
    """Drop-in name of FastV-Advanced: FastV plus run-time ``token_selection_method`` / ``weighted_alpha``
    switching and ``last_gen_attention_mask`` / ``last_gen_kept_indices`` / ``last_selection_metadata``."""


class FastvFineHead_LlamaModel(PruningLlamaModel):
    """Drop-in name of the fine-head fork: the pruning decoder with ``fastv_fine_head`` as its default method
    (``pruning_params``: ``heads``, ``head_strategy``)."""

    default_pruning_method = "fastv_fine_head"


class SparseVLM_LlamaModel(PruningLlamaModel):
    """Drop-in name for SparseVLM: the pruning decoder with ``sparsevlm`` as its default method."""

    default_pruning_method = "sparsevlm"


class PDrop_LlamaModel(PruningLlamaModel):
    """Drop-in name for PyramidDrop: the pruning decoder with ``pdrop`` as its default method."""

    default_pruning_method = "pdrop"


class VisPruner_LlamaModel(PruningLlamaModel):
    """Drop-in name for VisPruner, a pre-LLM method: the decoder itself runs unpruned and
    :class:`~llava.model.llava_arch.PruningLlavaForConditionalGeneration` selects the visual tokens."""

    default_pruning_method = "vispruner"


class CDPruner_LlamaModel(PruningLlamaModel):
    """Drop-in name for CDPruner, a pre-LLM method (see :class:`VisPruner_LlamaModel`)."""

    default_pruning_method = "cdpruner"
