"""Text->vision attention for the pruner's residual, from attention rows computed by q.k (pure functions).

The question rows are the tokens after the image span up to the last prompt token (inclusive). For
query rows ``Q`` (weights ``w_q``, summing to 1 per sample) and heads ``H``:

    a_j = sum_q w_q * (1 / H) * sum_h A[h, q, j]        for every live vision token j

``A`` comes from the pruning layer's own q and k (``llava.pruning.attention``), never from
``output_attentions``.
"""

from __future__ import annotations

import torch


def gather_tokens(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``tensor[b, index[b]]``: ``[B, T, d]`` rows of a ``[B, N, d]`` tensor for a ``[B, T]`` index."""
    return tensor.gather(1, index[:, :, None].expand(-1, -1, tensor.shape[-1]))


def question_rows(span_end: torch.Tensor, query_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``[B, T]`` of the rows ``span_end .. query_index`` and their weights ``[B, T]``.

    Samples with fewer rows than the longest are padded with their last row at weight 0; real rows
    weigh ``1 / count``.
    """
    counts = query_index - span_end + 1
    if (counts < 1).any():
        raise ValueError(
            f"no question token after the image span (span ends {span_end.tolist()}, query {query_index.tolist()})"
        )
    offsets = torch.arange(int(counts.max()), device=span_end.device)
    valid = offsets[None, :] < counts[:, None]
    rows = torch.minimum(span_end[:, None] + offsets[None, :], query_index[:, None])
    weights = valid.float() / counts[:, None].float()
    return rows, weights


def text_to_vision_attention(probs: torch.Tensor, row_weights: torch.Tensor, span_index: torch.Tensor) -> torch.Tensor:
    """``a_j = sum_q w_q mean_h A[h, q, span_index_j]``, shape ``[B, S]``.

    Args:
        probs: ``[B, H, T, N]`` attention probabilities of the question rows.
        row_weights: ``[B, T]`` from ``question_rows``.
        span_index: ``[B, S]`` sequence index of each live vision token.
    """
    per_row = probs.mean(dim=1)  # [B, T, N]
    pooled = (per_row * row_weights[:, :, None]).sum(dim=1)  # [B, N]
    return pooled.gather(1, span_index)


