"""The sequence inside the decoder loop and the two stage actions that change it.

* ``compact`` (hard, inference): keep ``prefix + kept span tokens (original order) + suffix``; hidden
  states and RoPE tables are gathered, so kept tokens keep their original positions; merged tokens
  (``TokenSelection.replacement``) take their slots, labelled with ``TokenSelection.sources`` where given;
  padded keep slots (``TokenSelection.valid``) become invisible padding. With ``renumber=True`` every token's position drops by the number of tokens removed
  before it (official PDrop / SparseVLM v1.5: the shorter prompt is numbered contiguously); the caller
  rebuilds the RoPE tables from ``positions``.
* ``soft_keep`` (soft, training): nothing is removed; the span keys' weights ``P`` (product of the
  stages' keep probabilities) enter every later layer as the additive bias ``log P`` (``keyed_causal_bias``).

The attention mask of the result is built by the caller (it depends on the config and the cache).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from llava.pruning.scoring import gather_rows
from llava.pruning.selection import SoftSelection, TokenSelection
from llava.pruning.span import compaction_index, keep_mask_after_selection

KEEP_EPS = 1e-6


@dataclass
class DecoderSequence:
    """The current (possibly compacted) sequence inside the decoder loop.

    ``span_index`` / ``span_valid`` / ``query_index``: where the live span tokens and the selection query
    sit in the current sequence (None when nothing is pruned). ``key_weights``: soft keep weights of
    every key (soft mode only).
    """

    hidden: torch.Tensor  # [B, N, d]
    cos: torch.Tensor  # [B, N, head_dim]
    sin: torch.Tensor  # [B, N, head_dim]
    valid: torch.Tensor  # [B, N] bool, False = padding
    original_index: torch.Tensor  # [B, N] index of each token in the unpruned input
    positions: torch.Tensor  # [B, N] RoPE position of each token ([3, B, N] (t, h, w) for M-RoPE, Qwen2.5-VL)
    mask: Any  # what the attention implementation takes (4D tensor, None, BlockMask, ...)
    span_index: torch.Tensor | None = None  # [B, S]
    span_valid: torch.Tensor | None = None  # [B, S]
    query_index: torch.Tensor | None = None  # [B]
    key_weights: torch.Tensor | None = None  # [B, N]
    compacted: bool = False
    position_shift: torch.Tensor | None = None  # [B] tokens the last stage removed, when it renumbered

    @property
    def rope(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cos, self.sin


def compact(seq: DecoderSequence, selection: TokenSelection, renumber: bool = False) -> DecoderSequence:
    """The sequence after keeping ``selection.indices`` (columns of ``seq.span_index``); mask left to the caller.

    ``renumber``: positions of the result are ``old position - tokens removed before it`` (a removed token is
    a valid one that is pruned or becomes an invisible padded slot), and ``position_shift`` is each sample's
    removed count; the RoPE tables still hold the old positions' values (the caller rebuilds them).
    """
    kept = selection.indices.to(seq.span_index.device)
    seq_len = seq.hidden.shape[1]
    keep_mask = keep_mask_after_selection(seq_len, seq.span_index, kept)
    index = compaction_index(keep_mask)
    new_position = keep_mask.long().cumsum(dim=1) - 1  # old index -> new index, for kept tokens
    kept_span = seq.span_index.gather(1, kept)
    hidden = gather_rows(seq.hidden, index)
    if selection.replacement is not None:
        columns, merged = selection.replacement
        slots = new_position.gather(1, kept_span.gather(1, columns.to(kept_span.device)))
        hidden = hidden.scatter(1, slots[..., None].expand(-1, -1, hidden.shape[-1]), merged.to(hidden.dtype))
    span_index = new_position.gather(1, kept_span)
    span_valid = seq.span_valid.gather(1, kept)
    if selection.valid is not None:
        span_valid = span_valid & selection.valid.to(span_valid.device)
    valid = seq.valid.gather(1, index).scatter(1, span_index, span_valid)
    original_index = seq.original_index.gather(1, index)
    if selection.sources is not None:
        source_tokens = seq.span_index.gather(1, selection.sources.to(seq.span_index.device))
        original_index = original_index.scatter(1, span_index, seq.original_index.gather(1, source_tokens))
    positions = gather_positions(seq.positions, index)
    position_shift = None
    if renumber and seq.positions.dim() == 3:
        raise ValueError(
            "renumbering M-RoPE (t, h, w) positions is not defined: on Qwen2.5-VL every kept token keeps its position"
            " (run the method with positions='original')"
        )
    if renumber:
        stays_valid = torch.zeros_like(seq.valid).scatter(1, index, valid)  # on the old sequence
        removed_before = (seq.valid & ~stays_valid).long().cumsum(dim=1)
        positions = positions - removed_before.gather(1, index)
        position_shift = removed_before[:, -1]
    return replace(
        seq,
        hidden=hidden,
        cos=gather_rows(seq.cos, index),
        sin=gather_rows(seq.sin, index),
        valid=valid,
        original_index=original_index,
        positions=positions,
        position_shift=position_shift,
        span_index=span_index,
        span_valid=span_valid,
        query_index=new_position.gather(1, seq.query_index[:, None])[:, 0],
        compacted=True,
    )


def gather_positions(positions: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``positions`` ``[B, N]`` or ``[3, B, N]`` (M-RoPE) at token ``index`` ``[B, N']`` of each sample."""
    return positions.gather(-1, index.expand(*positions.shape[:-2], *index.shape))


def soft_keep(seq: DecoderSequence, selection: SoftSelection) -> DecoderSequence:
    """The sequence with the span keys' weights multiplied by this stage's keep probabilities."""
    weights = seq.key_weights if seq.key_weights is not None else torch.ones_like(seq.valid, dtype=torch.float32)
    span_weights = weights.gather(1, seq.span_index) * selection.keep_probs.to(weights.device)
    return replace(seq, key_weights=weights.scatter(1, seq.span_index, span_weights))


def keyed_causal_bias(valid: torch.Tensor, key_weights: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[B, 1, N, N]`` additive mask: ``log max(w_k, eps)`` on allowed keys (causal, non-padding), dtype min elsewhere.

    Padding query rows may attend to themselves so that no row is fully masked.
    """
    n = valid.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool, device=valid.device).tril()
    allowed = (causal[None] & valid[:, None, :]) | torch.eye(n, dtype=torch.bool, device=valid.device)[None]
    log_weights = key_weights.clamp(min=KEEP_EPS).log().to(dtype)
    return torch.where(allowed, log_weights[:, None, :], torch.finfo(dtype).min)[:, None]
