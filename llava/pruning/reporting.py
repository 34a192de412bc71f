"""What a budget becomes for a method (chosen parameters, achieved equivalent tokens), and per-layer kept indices."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from llava.pruning.budget import equivalent_tokens, span_tokens_per_layer
from llava.pruning.methods.base import PruningMethod
from llava.pruning.record import PruningRecord
from llava.pruning.registry import plan_method


@dataclass
class BudgetPlan:
    """What a budget of ``target_tokens`` equivalent tokens became for one method."""

    target_tokens: float
    method: PruningMethod
    span_per_layer: list[int]

    @property
    def equivalent_tokens(self) -> float:
        return equivalent_tokens(self.span_per_layer)

    def summary(self) -> dict[str, Any]:
        return {
            "method": self.method.name,
            "target_tokens": self.target_tokens,
            "params": self.method.params(),
            "kept_per_layer": self.span_per_layer,
            "equivalent_tokens": round(self.equivalent_tokens, 2),
        }


def planned_tokens_per_layer(method: PruningMethod, num_layers: int, span: int) -> list[int]:
    """Span tokens each layer will process under ``method`` (pre-LLM methods: the kept count everywhere)."""
    if method.pre_llm:
        return [method.visual_tokens] * num_layers
    return span_tokens_per_layer(num_layers, span, method.schedule(span))


def plan_budget(
    name: str, target_tokens: float, num_layers: int, span: int, params: Mapping[str, Any] | None = None
) -> BudgetPlan:
    """The method ``name`` (other parameters from ``params``) planned for ``target_tokens``, and what it achieves."""
    method = plan_method(name, target_tokens, num_layers, span, params)
    method.validate(num_layers, span)
    return BudgetPlan(target_tokens, method, planned_tokens_per_layer(method, num_layers, span))


def kept_indices_by_layer(record: PruningRecord) -> list[torch.Tensor | None]:
    """Per decoder layer, ``[B, R_l]`` prompt positions of the span tokens that layer processed (None: all of them),
    the record's tensors, on the prefill's device."""
    per_layer: list[torch.Tensor | None] = [None] * record.num_layers
    for stage in record.stages:
        for layer in range(stage.layer, record.num_layers):
            per_layer[layer] = stage.kept_index
    return per_layer
