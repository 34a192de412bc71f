"""Locating the prunable span and compacting a sequence around the kept span tokens (pure functions)."""

from __future__ import annotations

import torch


def span_from_token_id(input_ids: torch.Tensor, token_id: int) -> torch.Tensor:
    """``[B, 2]`` (start, end) of the contiguous run of ``token_id`` in each row of ``input_ids``.

    Raises ``ValueError`` when a row has no such token, when the run is not contiguous, or when rows
    hold different counts (every sample must have the same span length).
    """
    is_span = input_ids == token_id
    counts = is_span.sum(dim=1)
    for row, count in enumerate(counts.tolist()):
        if count == 0:
            raise ValueError(
                f"sample {row} has no prunable tokens (token id {token_id}); pruning needs an image "
                "(or pass prune_span=(start, end) for a text span, or disable pruning for text-only inputs)"
            )
    if len(set(counts.tolist())) > 1:
        raise ValueError(
            f"every sample must hold the same number of prunable tokens, got {counts.tolist()} (LLaVA-NeXT images of"
            " different sizes give different counts: batch images of one size, or run them one at a time)"
        )
    positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    start = torch.where(is_span, positions, input_ids.shape[1]).min(dim=1).values
    end = torch.where(is_span, positions, -1).max(dim=1).values + 1
    if not torch.equal(end - start, counts):
        raise ValueError("the prunable tokens must form one contiguous run in each sample (e.g. one image)")
    return torch.stack([start, end], dim=1)


def span_from_offset(
    attention_mask: torch.Tensor | None,
    batch: int,
    seq_len: int,
    start: int,
    length: int,
    device: torch.device,
) -> torch.Tensor:
    """``[B, 2]`` span starting ``start`` tokens after each sample's left padding (FastV's ``sys_length``)."""
    pad = (
        (seq_len - attention_mask.sum(dim=1)).long()
        if attention_mask is not None
        else torch.zeros(batch, device=device)
    )
    begin = pad.to(device).long() + start
    return torch.stack([begin, begin + length], dim=1)


def last_valid_index(
    attention_mask: torch.Tensor | None, batch: int, seq_len: int, device: torch.device
) -> torch.Tensor:
    """``[B]`` index of the last non-padding token (the last prompt token, FastV's query row)."""
    if attention_mask is None:
        return torch.full((batch,), seq_len - 1, device=device, dtype=torch.long)
    positions = torch.arange(seq_len, device=device)
    return torch.where(attention_mask.bool().to(device), positions, -1).max(dim=1).values


def validate_span(span: torch.Tensor, query_index: torch.Tensor, seq_len: int) -> int:
    """Check that the span lies inside the sequence, before the query, with one length; return that length."""
    start, end = span[:, 0], span[:, 1]
    lengths = (end - start).unique()
    if lengths.numel() != 1 or lengths.item() <= 0:
        raise ValueError(
            f"the prunable span must be non-empty and of equal length in every sample, got {span.tolist()}"
        )
    if (start < 0).any() or (end > seq_len).any():
        raise ValueError(f"prunable span {span.tolist()} lies outside the sequence of length {seq_len}")
    if (query_index < end).any():
        raise ValueError(
            f"the selection query (last prompt token, index {query_index.tolist()}) must come after the span "
            f"{span.tolist()}: leave at least one token after the prunable span"
        )
    return int(lengths.item())


def compaction_index(keep_mask: torch.Tensor) -> torch.Tensor:
    """``[B, N']`` indices of the True entries of ``keep_mask`` ``[B, N]`` (equal count per row), in order."""
    counts = keep_mask.sum(dim=1)
    if (counts != counts[0]).any():
        raise ValueError(f"every sample must keep the same number of tokens, got {counts.tolist()}")
    positions = torch.arange(keep_mask.shape[1], device=keep_mask.device).expand_as(keep_mask)
    return positions[keep_mask].view(keep_mask.shape[0], -1)


def keep_mask_after_selection(seq_len: int, span_index: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """``[B, N]`` bool: every token is kept except the span tokens not in ``kept``.

    ``span_index``: ``[B, S]`` sequence index of each live span token; ``kept``: ``[B, R]`` columns of it.
    """
    batch = span_index.shape[0]
    keep = torch.ones(batch, seq_len, dtype=torch.bool, device=span_index.device)
    keep.scatter_(1, span_index, False)
    keep.scatter_(1, span_index.gather(1, kept), True)
    return keep
