"""What a pruned prefill did: kept tokens per stage and per sample, token counts, equivalent tokens."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from llava.pruning.budget import equivalent_tokens


@dataclass
class StageRecord:
    """One pruning boundary: before ``layer`` the span shrank to ``kept_index.shape[1]`` tokens.

    ``kept_index``: ``[B, R]`` positions in the *unpruned* input of the span tokens kept;
    ``scores``: ``[B, S]`` the method's per-token scores over the live span (may be empty);
    ``selection_ms``: time spent choosing (scoring + top-k), for overhead reports.
    """

    layer: int
    kept_index: torch.Tensor
    scores: torch.Tensor
    metadata: dict
    selection_ms: float


@dataclass
class PruningRecord:
    method: str
    span: torch.Tensor  # [B, 2] (start, end) in the unpruned input
    num_layers: int
    stages: list[StageRecord] = field(default_factory=list)

    @property
    def span_length(self) -> int:
        return int((self.span[0, 1] - self.span[0, 0]).item())

    @property
    def span_per_layer(self) -> list[int]:
        """Span tokens each layer processed."""
        per_layer = [self.span_length] * self.num_layers
        for stage in self.stages:
            for i in range(stage.layer, self.num_layers):
                per_layer[i] = stage.kept_index.shape[1]
        return per_layer

    @property
    def equivalent_tokens(self) -> float:
        return equivalent_tokens(self.span_per_layer)

    @property
    def selection_ms(self) -> float:
        return sum(stage.selection_ms for stage in self.stages)

    def kept_mask(self, seq_len: int) -> torch.Tensor:
        """``[B, N]`` bool over the unpruned input: False for span tokens dropped by the last stage."""
        batch = self.span.shape[0]
        positions = torch.arange(seq_len, device=self.span.device).expand(batch, -1)
        in_span = (positions >= self.span[:, :1]) & (positions < self.span[:, 1:])
        keep = ~in_span
        if not self.stages:
            return keep | in_span
        return keep.scatter(1, self.stages[-1].kept_index.to(keep.device), True)

    def summary(self) -> dict:
        """JSON-friendly summary (for answers' metadata and result tables)."""
        return {
            "method": self.method,
            "span_length": self.span_length,
            "kept_per_layer": self.span_per_layer,
            "equivalent_tokens": round(self.equivalent_tokens, 2),
            "selection_ms": round(self.selection_ms, 3),
        }
