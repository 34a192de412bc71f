"""The trained layer-wise pruner (``llava.pruner``) as engine method ``learned``: hard masks, real removal.

At each pruning layer ``L`` of the checkpoint the head scores the live span tokens from the hidden
states entering ``L`` (question rows: tokens after the span up to the last prompt token) and keeps
those with ``sigmoid(l_j) > 0.5``; the engine then removes the others (shorter KV cache from ``L`` on).
With the attention residual on, the text->vision attention comes from layer ``L``'s own q.k
(``step.attention``); with it off, no attention is computed.

A batch stays rectangular: every sample keeps ``max_b count_b`` tokens (its best-scoring ones), so a
sample keeps exactly its ``> 0.5`` set whenever the counts agree (always at batch size 1).

Config: ``pruning_method="learned"``, ``pruning_params={"pruner_checkpoint": path}``
(``load_pretrained_model(path, pruning_method="learned", pruner_checkpoint=...)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from llava.pruner.checkpoint import existing_checkpoint, pruner_from_checkpoint, read_checkpoint
from llava.pruner.heads import LayerSpecificPruner
from llava.pruner.masks import hard_keep_mask
from llava.pruner.text_attention import gather_tokens, question_rows, text_to_vision_attention
from llava.pruning.methods.base import PruneStep, PruningMethod
from llava.pruning.registry import register_method
from llava.pruning.selection import TokenSelection, top_r_sorted


@lru_cache(maxsize=4)
def _cached_pruner(path: str, modified_ns: int) -> LayerSpecificPruner:
    del modified_ns  # part of the cache key: a rewritten checkpoint is reloaded
    return pruner_from_checkpoint(read_checkpoint(path))


def load_pruner(path: str | Path) -> LayerSpecificPruner:
    """The pruner of a checkpoint, loaded once per file version (the engine rebuilds methods every forward)."""
    path = existing_checkpoint(path)
    return _cached_pruner(str(path), path.stat().st_mtime_ns)


def keep_count(logits: torch.Tensor, upper: int) -> int:
    """Tokens every sample keeps: ``max_b #{j: l_bj > 0}``, clamped to ``[1, upper]``."""
    return int(hard_keep_mask(logits).sum(dim=1).max().clamp(1, upper))


@register_method
@dataclass
class LearnedPruning(PruningMethod):
    pruner_checkpoint: str

    name = "learned"
    params = ("pruner_checkpoint",)

    def __post_init__(self) -> None:
        self.pruner = load_pruner(self.pruner_checkpoint)

    def schedule(self, span: int) -> list[tuple[int, int]]:
        """The checkpoint's pruning layers; ``keep`` is an upper bound (the span), the mask decides."""
        return [(layer, span) for layer in self.pruner.pruning_layers]

    @torch.no_grad()
    def select(self, step: PruneStep, keep: int) -> TokenSelection:
        hidden = step.hidden_states
        rows, row_weights = question_rows(step.span_index[:, -1] + 1, step.query_index)
        attention = None
        if self.pruner.uses_attn_residual:
            attention = text_to_vision_attention(step.attention(step.layer, rows), row_weights, step.span_index)
        pruner = self.pruner.to(hidden.device)
        logits = pruner(
            step.layer,
            gather_tokens(hidden, step.span_index).float(),
            gather_tokens(hidden, rows).float(),
            row_weights > 0,
            attention,
        )
        indices = top_r_sorted(logits, keep_count(logits, keep))
        return TokenSelection(
            indices=indices,
            scores=torch.sigmoid(logits),
            metadata={"method": self.name, "kept": indices.shape[1], "checkpoint": self.pruner_checkpoint},
        )

    @classmethod
    def from_config(cls, config: Any) -> LearnedPruning:
        params = config.pruning_params or {}
        if "pruner_checkpoint" not in params:
            raise ValueError(
                "method 'learned' needs pruning_params={'pruner_checkpoint': <path to checkpoint.pt>} "
                "(load_pretrained_model(..., pruning_method='learned', pruner_checkpoint=path))"
            )
        return cls(pruner_checkpoint=str(params["pruner_checkpoint"]))

    @classmethod
    def config_for_budget(cls, target_tokens: float, num_layers: int, span: int, config: Any) -> dict[str, Any]:
        raise ValueError(
            "method 'learned' keeps what its trained masks say: its budget is set at training time "
            "(method_settings.target_keep_ratio / target_tokens), not by visual_token_num"
        )
