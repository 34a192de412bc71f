"""Training-time forward over the frozen LLaVA's decoder layers with *soft* visual-token pruning.

The engine (``llava.model.language_model.pruning_llama``) removes tokens, which has no gradient. In
training the tokens stay and every layer from a pruning layer on sees an additive attention bias on
the image *key* columns:

    bias[q, k] = log max(P_i(k), eps)   if k is an image token and layer >= L_i (stage i)
               = 0                       for other allowed keys (causal, non-padding)
               = -inf (dtype min)        otherwise

so ``softmax(qk + bias) = A_k P(k) / sum_k' A_k' P(k')``: a token with ``P = 0`` is invisible, as if
removed, and gradients of every loss reach the pruner through ``P`` (and the residual weight). The
pruner at layer ``L_i`` sees the hidden states entering ``L_i``; its residual attention is the layer's
own q.k attention of the question rows reweighted by the current ``P`` (``reweight_keys``), which
equals the engine's attention over the kept tokens when ``P`` is 0/1.

This module uses the engine's q.k row attention (``PruningLlamaModel._attention_fn``) so both modes
score with the same code; it adds no hook to the engine.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llava.model.language_model.pruning_llama import PruningLlamaModel, _Sequence
from llava.pruner.data import PrunerBatch
from llava.pruner.heads import LayerSpecificPruner
from llava.pruner.masks import gumbel_keep_probs
from llava.pruner.text_attention import gather_tokens, question_rows, reweight_keys, text_to_vision_attention

KEEP_EPS = 1e-6


@dataclass
class SoftForwardOutput:
    """``stage_logits[i]`` = ``l_i`` and ``cumulative_keep[i]`` = ``P_i`` (``[B, S]``);
    ``stage_states[i]``: ``[B, N, d]`` hidden states at the end of stage ``i`` (input of the next pruning
    layer; output of the last decoder layer for the last stage)."""

    logits: torch.Tensor
    stage_logits: list[torch.Tensor]
    cumulative_keep: list[torch.Tensor]
    stage_states: list[torch.Tensor]


@torch.no_grad()
def multimodal_embeddings(llava, input_ids: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
    """Token embeddings with the projected image features in place of the image tokens (frozen model)."""
    embeds = llava.get_input_embeddings()(input_ids)
    features = llava.model.get_image_features(
        pixel_values=pixel_values.to(embeds.device, embeds.dtype),
        vision_feature_layer=llava.config.vision_feature_layer,
        vision_feature_select_strategy=llava.config.vision_feature_select_strategy,
        return_dict=True,
    ).pooler_output
    features = torch.cat(list(features)).to(embeds.dtype)
    image_mask = (input_ids == llava.config.image_token_id)[..., None].expand_as(embeds)
    return embeds.masked_scatter(image_mask, features)


def keyed_causal_bias(valid: torch.Tensor, key_weights: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[B, 1, N, N]`` additive mask: ``log max(w_k, eps)`` on allowed keys (causal, non-padding), dtype min elsewhere.

    Padding query rows may attend to themselves so that no row is fully masked.
    """
    n = valid.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool, device=valid.device).tril()
    allowed = (causal[None] & valid[:, None, :]) | torch.eye(n, dtype=torch.bool, device=valid.device)[None]
    log_weights = key_weights.clamp(min=KEEP_EPS).log().to(dtype)
    return torch.where(allowed, log_weights[:, None, :], torch.finfo(dtype).min)[:, None]


def residual_attention(
    language_model: PruningLlamaModel,
    layer: int,
    hidden: torch.Tensor,
    cos_sin: tuple[torch.Tensor, torch.Tensor],
    valid: torch.Tensor,
    key_weights: torch.Tensor,
    rows: torch.Tensor,
    row_weights: torch.Tensor,
    span_index: torch.Tensor,
) -> torch.Tensor:
    """Text->vision attention ``[B, S]`` at ``layer`` from its q.k, with keys weighted by ``key_weights``."""
    sequence = _Sequence(
        hidden=hidden,
        cos=cos_sin[0],
        sin=cos_sin[1],
        valid=valid,
        original_index=torch.arange(hidden.shape[1], device=hidden.device).expand(hidden.shape[0], -1),
        mask=None,
    )
    probs = language_model._attention_fn(layer, sequence, None)(layer, rows)
    return text_to_vision_attention(reweight_keys(probs, key_weights), row_weights, span_index)


def soft_pruned_forward(
    llava,
    inputs_embeds: torch.Tensor,
    batch: PrunerBatch,
    pruning_layers: list[int],
    pruner: LayerSpecificPruner | None = None,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> SoftForwardOutput:
    """Run the decoder layers of ``llava`` with soft keep masks from ``pruner`` (None: unpruned, the real branch).

    ``pruning_layers`` fixes where stage states are recorded (those of the pruner when it is given).
    """
    language_model = llava.language_model
    batch_size, seq_len, _ = inputs_embeds.shape
    device = inputs_embeds.device
    positions = torch.arange(seq_len, device=device)[None]
    cos, sin = language_model.rotary_emb(inputs_embeds, positions)
    cos_sin = (cos.expand(batch_size, -1, -1), sin.expand(batch_size, -1, -1))
    valid = batch.attention_mask.to(device).bool()
    span_length = int(batch.span[0, 1] - batch.span[0, 0])
    span_index = batch.span[:, :1].to(device) + torch.arange(span_length, device=device)
    rows, row_weights = question_rows(batch.span[:, 1].to(device), batch.query_index.to(device))
    key_weights = torch.ones(batch_size, seq_len, device=device)
    mask = keyed_causal_bias(valid, key_weights, inputs_embeds.dtype)
    stage_logits: list[torch.Tensor] = []
    cumulative: list[torch.Tensor] = []
    stage_states: list[torch.Tensor] = []
    hidden = inputs_embeds
    for idx, decoder_layer in enumerate(language_model.layers[: language_model.config.num_hidden_layers]):
        if idx in pruning_layers:
            if idx != pruning_layers[0]:
                stage_states.append(hidden)
            if pruner is not None:
                attention = None
                if pruner.uses_attn_residual:
                    attention = residual_attention(
                        language_model, idx, hidden, cos_sin, valid, key_weights, rows, row_weights, span_index
                    )
                logits = pruner(
                    idx, gather_tokens(hidden, span_index), gather_tokens(hidden, rows), row_weights > 0, attention
                )
                stage_logits.append(logits)
                probs = gumbel_keep_probs(logits.float(), temperature, generator)
                previous = cumulative[-1] if cumulative else torch.ones_like(probs)
                cumulative.append(previous * probs)
                key_weights = key_weights.scatter(1, span_index, cumulative[-1])
                mask = keyed_causal_bias(valid, key_weights, inputs_embeds.dtype)
        hidden = decoder_layer(hidden, attention_mask=mask, position_embeddings=cos_sin, position_ids=positions)
    stage_states.append(hidden)
    logits = llava.lm_head(language_model.norm(hidden))
    return SoftForwardOutput(logits, stage_logits, cumulative, stage_states)
