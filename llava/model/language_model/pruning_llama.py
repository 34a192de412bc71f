"""A pruning-capable Llama decoder: the one decoder loop, driven by a method from the registry.

At each boundary of the method's schedule (prefill only) the engine asks the method which live span
tokens to keep, then applies one of two stage actions (``llava.model.language_model.sequence``):

* hard (inference): keep ``prefix + kept span tokens (original order) + suffix``; positions follow the
  method's official code (``PruningMethod.keeps_original_positions``): FastV's kept tokens keep their
  original RoPE positions (cos, sin gathered), official PDrop / SparseVLM v1.5 renumber the shorter
  sequence contiguously (each token's position drops by the tokens removed before it; a decode step's
  position drops by each stage's removed count from that stage's layer on); the attention mask is rebuilt
  for the shorter sequence (left padding included) and sized against that layer's own cache, so layers
  after a prune cache only the kept tokens;
* soft (training): the span keys are weighted by keep probabilities through an additive ``log P`` bias.

Decode steps never re-prune: they rebuild masks from the kept tokens' padding masks the prefill left in
the model's ``PruningState`` and start from the absolute positions of the unpruned sequence (the cache's
layer 0 is never pruned), shifted per stage for renumbering methods. A forward without cache that continues the last pruned prompt replays its
selections (``generate(use_cache=False)`` == ``generate()``).

Attention scores for the method come from q.k of only the query rows needed
(``llava.pruning.scoring``), so SDPA / flash attention stay on and ``output_attentions`` is never
required. ``pruning_scoring="full_matrix"`` materialises the N x N map instead (reference path).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import Cache, DynamicCache, LlamaForCausalLM, LlamaModel
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.models.llama.modeling_llama import LlamaPreTrainedModel
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from llava.model.language_model.pruning_config import PruningLlamaConfig
from llava.model.language_model.pruning_state import PruningState
from llava.model.language_model.readouts import PruningReadouts
from llava.model.language_model.sequence import DecoderSequence, compact, keyed_causal_bias, soft_keep
from llava.pruning.methods.base import PruneStep, PruningMethod
from llava.pruning.record import PruningRecord, StageRecord
from llava.pruning.registry import PARAMETER_ALIASES, method_from_config
from llava.pruning.scoring import decoder_attention_rows
from llava.pruning.selection import SoftSelection, detached_values
from llava.pruning.span import last_valid_index, span_from_offset, span_from_token_id, validate_span
from toolkit_common.stopwatch import Stopwatch
from toolkit_common.transformers_compat import cache_kwargs, resolve_cache


class PruningLlamaModel(PruningReadouts, LlamaModel):
    """``LlamaModel`` whose prefill prunes a span of tokens with its method (``self.method``).

    The method is built once from the config (``pruning_method``, ``pruning_params``, FastV's fields) and
    replaced with ``set_pruning_method`` (or for one block with ``with model.pruning(method):``).

    Extra forward arguments:
        prune_span: ``[B, 2]`` or ``(start, end)``; the prunable span (else from ``fast_v_sys_length``
            or from ``image_token_id`` in ``input_ids``).
        prune_query_index: ``[B]`` or int; the selection query row (default: the last non-padding token).
        prune_input_ids: the prompt's ids when the model is given ``inputs_embeds`` (the LLaVA wrapper
            passes them so a no-cache generation step is recognised as a continuation of the prompt).
    """

    config_class = PruningLlamaConfig
    default_pruning_method: ClassVar[str | None] = None

    def __init__(self, config: PruningLlamaConfig) -> None:
        if self.default_pruning_method is not None and config.pruning_method is None and not config.use_fast_v:
            config.pruning_method = self.default_pruning_method
        super().__init__(config)
        self.pruning_enabled = True
        self.pruning_state: PruningState | None = None
        self._method: PruningMethod | None = None
        self._install(method_from_config(config))

    # ----- the method ----------------------------------------------------------------------------
    @property
    def method(self) -> PruningMethod | None:
        """The pruning method this model runs (None: pruning is off)."""
        return self._method

    def _install(self, method: PruningMethod | None) -> None:
        if method is not None:
            method.validate(
                self.config.num_hidden_layers, self.config.fast_v_image_token_length, self.config.num_attention_heads,
                self.config.hidden_size,
            )
        self._method = method

    def set_pruning_method(self, method: PruningMethod | None) -> None:
        """Run ``method`` from now on (validated against this model); the config records it for saving."""
        self._install(method)
        for legacy in PARAMETER_ALIASES:
            if hasattr(self.config, legacy):
                setattr(self.config, legacy, None)
        self.config.use_fast_v = method is not None and method.use_fast_v
        self.config.pruning_method = None if method is None else method.name
        self.config.pruning_params = None if method is None else method.params()

    @contextmanager
    def pruning(self, method: PruningMethod | None) -> Iterator[PruningLlamaModel]:
        """Run ``method`` inside the block (e.g. a soft-mode training method), the configured one after it."""
        previous = self._method
        self._install(method)
        try:
            yield self
        finally:
            self._method = previous

    @contextmanager
    def pruning_disabled(self) -> Iterator[PruningLlamaModel]:
        """Run the stock model inside the block (e.g. text-only questions of a pruned evaluation)."""
        previous, self.pruning_enabled = self.pruning_enabled, False
        try:
            yield self
        finally:
            self.pruning_enabled = previous

    @property
    def active_method(self) -> PruningMethod | None:
        return self._method if self.pruning_enabled else None

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
        prune_input_ids: torch.Tensor | None = None,
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
        prompt_ids = input_ids if input_ids is not None else prune_input_ids
        plan = self._forward_plan(past_seen, prompt_ids, attention_mask, cache)
        seq = self._initial_sequence(inputs_embeds, attention_mask, position_ids, cache, plan.soft)
        if plan.method is not None:
            plan = self._start_pruning(plan, seq, prompt_ids, attention_mask, prune_span, prune_query_index, cache)
        seq = self._run_layers(plan, seq, inputs_embeds, position_ids, attention_mask, cache, use_cache, kwargs)
        if plan.recording is not None and cache is not None:
            plan.recording.attach_cache(cache)
        return BaseModelOutputWithPast(last_hidden_state=self.norm(seq.hidden), **cache_kwargs(cache))

    # ----- the phases of one forward --------------------------------------------------------------
    def _forward_plan(self, past_seen: int, prompt_ids, attention_mask, cache: Cache | None) -> ForwardPlan:
        """What this forward is: a prefill that prunes (its method), a decode step after a pruned prefill (that
        prefill's state: which cached tokens each layer kept), or a no-cache step that continues the last pruned
        prompt (its selections, replayed)."""
        method = self.active_method if past_seen == 0 else None
        soft = method is not None and getattr(method, "soft", False)
        if soft and cache is not None:
            raise ValueError("soft pruning (training) runs without a KV cache: pass use_cache=False")
        state = self.pruning_state
        if past_seen > 0:
            return ForwardPlan(None, False, decode=self._decode_state(cache))
        if method is not None and not soft and cache is None and state is not None and state.continued_by(prompt_ids, attention_mask):
            return ForwardPlan(method, False, replay=state)
        self.pruning_state = None
        return ForwardPlan(method, soft)

    def _start_pruning(
        self, plan: ForwardPlan, seq: DecoderSequence, prompt_ids, attention_mask, prune_span, prune_query_index,
        cache: Cache | None,
    ) -> ForwardPlan:
        """Find the span and the selection query, check them, start the prefill's record (not when replaying) and
        put the span's bookkeeping on ``seq``; the plan gains the stage schedule and the state it records into."""
        batch, seq_len = seq.hidden.shape[:2]
        device = seq.hidden.device
        mask_2d = attention_mask if attention_mask is not None else torch.ones(batch, seq_len, dtype=torch.long, device=device)
        span = self._resolve_span(prompt_ids, mask_2d, prune_span, batch, seq_len, device)
        query = (
            last_valid_index(mask_2d, batch, seq_len, device)
            if prune_query_index is None
            else torch.as_tensor(prune_query_index, device=device, dtype=torch.long).expand(batch).clone()
        )
        span_len = validate_span(span, query, seq_len)
        recording = None
        if plan.replay is None:
            plan.method.validate(self.config.num_hidden_layers, span_len, self.config.num_attention_heads)
            if cache is not None and type(cache) is not DynamicCache:
                raise ValueError(f"pruning needs a DynamicCache (layers hold different lengths), got {type(cache).__name__}")
            recording = PruningState(
                record=PruningRecord(plan.method.name, span.clone(), self.config.num_hidden_layers, params=plan.method.params()),
                prompt_ids=None if prompt_ids is None else prompt_ids.detach().clone(),
                prompt_mask=mask_2d.bool().clone(),
            )
            self.pruning_state = recording
        seq.span_index = span[:, :1].to(device) + torch.arange(span_len, device=device)
        seq.span_valid = torch.ones(batch, span_len, dtype=torch.bool, device=device)
        seq.query_index = query
        return replace(plan, schedule=dict(plan.method.schedule(span_len)), recording=recording)

    def _run_layers(
        self, plan: ForwardPlan, seq: DecoderSequence, inputs_embeds: torch.Tensor, position_ids, attention_mask,
        cache: Cache | None, use_cache: bool | None, kwargs: dict[str, Any],
    ) -> DecoderSequence:
        """The one decoder loop: each layer on the current sequence, a pruning stage (or a decode step's mask of a
        pruned layer) before the layers the plan names."""
        previous_input = None
        for idx, decoder_layer in enumerate(self.layers[: self.config.num_hidden_layers]):
            if idx in plan.schedule:
                seq = self._run_stage(plan, idx, seq, previous_input, inputs_embeds, cache)
            elif plan.decode is not None and idx in plan.decode.stage_valid:
                seq = self._decode_stage(idx, seq, plan.decode, attention_mask, cache)
            previous_input = seq.hidden
            seq.hidden = decoder_layer(
                seq.hidden,
                attention_mask=seq.mask,
                position_embeddings=seq.rope,
                position_ids=None if seq.compacted else position_ids,
                use_cache=use_cache,
                **cache_kwargs(cache),
                **kwargs,
            )
        return seq

    # ----- helpers -------------------------------------------------------------------------------
    def _initial_sequence(self, inputs_embeds, attention_mask, position_ids, cache, soft: bool) -> DecoderSequence:
        batch, seq_len = inputs_embeds.shape[:2]
        valid = (
            attention_mask[:, -seq_len:].bool()
            if attention_mask is not None
            else torch.ones(batch, seq_len, dtype=torch.bool, device=inputs_embeds.device)
        )
        if soft:
            mask = keyed_causal_bias(valid, torch.ones(valid.shape, device=valid.device), inputs_embeds.dtype)
        else:
            mask = create_causal_mask(
                config=self.config,
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                **cache_kwargs(cache),
            )
        positions = position_ids.expand(batch, -1)
        cos, sin = self._rope(inputs_embeds, positions)
        return DecoderSequence(
            hidden=inputs_embeds,
            cos=cos,
            sin=sin,
            valid=valid,
            original_index=torch.arange(seq_len, device=inputs_embeds.device).expand(batch, -1),
            positions=positions,
            mask=mask,
        )

    def _rope(self, hidden: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cos, sin)``, each ``[B, N, head_dim]``, of the rotary embedding at ``positions`` ``[B, N]``."""
        cos, sin = self.rotary_emb(hidden, position_ids=positions)
        return cos.expand(positions.shape[0], -1, -1), sin.expand(positions.shape[0], -1, -1)

    def _decode_state(self, cache: Cache | None) -> PruningState | None:
        """The state of the prefill that filled ``cache``, if it pruned; a pruned cache without one is an error."""
        state = self.pruning_state
        if state is not None and state.owns(cache):
            return state
        lengths = {layer.get_seq_length() for layer in getattr(cache, "layers", [])}
        if len(lengths) > 1:
            raise ValueError(
                "this KV cache was filled by a pruned prefill that is not the model's last one: its layers hold "
                "different lengths and the kept-token masks are gone; decode right after the prefill that made it"
            )
        return None

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

    def _attention_fn(
        self, boundary: int, seq: DecoderSequence, previous_input: torch.Tensor | None, cache: Cache | None
    ):
        """``attention(layer, query_index [B, Q]) -> [B, H, Q, N]`` for ``layer`` in {boundary - 1, boundary}.

        Layer ``boundary - 1`` has run on this sequence: with a cache its keys (after RoPE) are read from it."""
        full_matrix = self.config.pruning_scoring == "full_matrix"

        def attention(layer: int, query_index: torch.Tensor) -> torch.Tensor:
            cached_keys = None
            if layer == boundary:
                layer_input = seq.hidden
            elif layer == boundary - 1 and previous_input is not None:
                layer_input = previous_input
                cached_keys = layer_keys(cache, layer, seq.hidden.shape[1])
            else:
                raise ValueError(f"attention at layer {layer} is not available at boundary {boundary}")
            return decoder_attention_rows(
                self.layers[layer], layer_input, seq.rope, seq.valid, query_index, seq.key_weights, full_matrix,
                cached_keys,
            )

        return attention

    def _run_stage(
        self,
        plan: ForwardPlan,
        layer: int,
        seq: DecoderSequence,
        previous_input: torch.Tensor | None,
        inputs_embeds: torch.Tensor,
        cache: Cache | None,
    ) -> DecoderSequence:
        """One boundary: the method's selection (or the replayed one) applied to the sequence, recorded into
        ``plan.recording`` (nothing is recorded when replaying)."""
        if seq.hidden.device != inputs_embeds.device:  # a model split over devices: select where the bookkeeping is
            seq = replace(seq, hidden=seq.hidden.to(inputs_embeds.device))
            previous_input = None if previous_input is None else previous_input.to(inputs_embeds.device)
        watch = None
        if plan.replay is not None:
            selection = plan.replay.selections[sorted(plan.replay.stage_valid).index(layer)]
        else:
            step = self._prune_step(plan.recording, layer, seq, previous_input, inputs_embeds, cache)
            with Stopwatch(seq.hidden.device) as watch:  # no synchronisation: read when the record is
                selection = plan.method.select(step, plan.schedule[layer])
        if isinstance(selection, SoftSelection):
            seq = soft_keep(seq, selection)
            plan.recording.soft_stages.append((layer, selection, seq.key_weights.gather(1, seq.span_index)))
            return replace(seq, mask=keyed_causal_bias(seq.valid, seq.key_weights, seq.hidden.dtype))
        previous = seq
        seq = compact(seq, selection, renumber=not plan.method.keeps_original_positions())
        if seq.position_shift is not None:
            seq.cos, seq.sin = self._rope(seq.hidden, seq.positions)
        if plan.recording is not None:
            record_stage(plan.recording, layer, selection, previous, seq, watch)
        seq.mask = create_causal_mask(
            config=self.config,
            inputs_embeds=seq.hidden,
            attention_mask=seq.valid,
            **cache_kwargs(cache),
            position_ids=None,
            layer_idx=layer,
        )
        return seq

    def _prune_step(
        self, state: PruningState, layer: int, seq: DecoderSequence, previous_input: torch.Tensor | None,
        inputs_embeds: torch.Tensor, cache: Cache | None,
    ) -> PruneStep:
        """What a method sees at the boundary before ``layer`` (``llava.pruning.methods.base.PruneStep``)."""
        return PruneStep(
            layer=layer,
            stage=len(state.selections) + len(state.soft_stages),
            span_index=seq.span_index,
            span_valid=seq.span_valid,
            query_index=seq.query_index,
            hidden_states=seq.hidden,
            attention=self._attention_fn(layer, seq, previous_input, cache),
            original_index=seq.original_index,
            original_span=state.record.span.to(seq.hidden.device),
            input_embeddings=inputs_embeds,
            rope=seq.rope,
        )

    def _decode_stage(
        self, layer: int, seq: DecoderSequence, state: PruningState, attention_mask, cache: Cache
    ) -> DecoderSequence:
        """Mask for a decode step at a layer whose cache holds only the kept prompt tokens."""
        kept = state.stage_valid[layer]
        if attention_mask is None:
            new = torch.ones(
                kept.shape[0],
                cache.get_seq_length() + seq.hidden.shape[1] - state.prompt_length,
                dtype=torch.bool,
                device=kept.device,
            )
        else:
            new = attention_mask[:, state.prompt_length :].bool()
        mask = create_causal_mask(
            config=self.config,
            inputs_embeds=seq.hidden,
            attention_mask=torch.cat([kept, new.to(kept.device)], dim=1),
            **cache_kwargs(cache),
            position_ids=None,
            layer_idx=layer,
        )
        shift = state.position_shift.get(layer)
        if shift is None:
            return replace(seq, mask=mask, compacted=True)
        positions = seq.positions - shift[:, None].to(seq.positions.device)
        cos, sin = self._rope(seq.hidden, positions)
        return replace(seq, mask=mask, compacted=True, positions=positions, cos=cos, sin=sin)


@dataclass
class ForwardPlan:
    """What one forward of the decoder does (``PruningLlamaModel._forward_plan``).

    ``method``: the method of a prefill (None on decode steps and without pruning); ``soft``: its training mode;
    ``replay``: the state of the pruned prompt a no-cache step continues (its selections are replayed);
    ``decode``: the state of the pruned prefill whose cache a decode step extends; ``recording``: the state this
    prefill records into; ``schedule``: ``{layer: tokens kept from it on}`` of the stages.
    """

    method: PruningMethod | None
    soft: bool
    replay: PruningState | None = None
    decode: PruningState | None = None
    recording: PruningState | None = None
    schedule: dict[int, int] = field(default_factory=dict)


def record_stage(
    state: PruningState, layer: int, selection, before: DecoderSequence, after: DecoderSequence, watch: Stopwatch
) -> None:
    """Append one hard stage to the prefill's record and remember what decode steps and replays need, tensors
    on the device as computed (readers convert: ``llava.pruning.record``)."""
    metadata = detached_values(selection.device_metadata)
    if selection.replacement is not None:
        slots = selection.indices if selection.sources is None else selection.sources
        merged = before.span_index.gather(1, slots.to(before.span_index.device))
        merged = merged.gather(1, selection.replacement[0].to(merged.device))
        metadata["merged_positions"] = before.original_index.gather(1, merged)
    state.record.stages.append(
        StageRecord(
            layer=layer,
            kept_index=after.original_index.gather(1, after.span_index),
            scores=selection.scores.detach(),
            device_metadata=metadata,
            stopwatch=watch,
            kept_valid=None if selection.valid is None else selection.valid.detach(),
        )
    )
    state.selections.append(selection)
    state.stage_valid[layer] = after.valid
    if after.position_shift is not None:
        state.position_shift[layer] = after.position_shift


def layer_keys(cache: Cache | None, layer: int, length: int) -> torch.Tensor | None:
    """``[B, H_kv, length, head_dim]`` keys after RoPE that ``layer`` cached in this prefill (None without them)."""
    layers = getattr(cache, "layers", None)
    if layers is None or layer >= len(layers):
        return None
    keys = getattr(layers[layer], "keys", None)
    return keys if keys is not None and keys.shape[-2] == length else None


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
