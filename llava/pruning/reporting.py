"""The one budget API's report (chosen parameters, achieved equivalent tokens) and per-layer kept indices."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from llava.pruning.budget import equivalent_tokens, span_tokens_per_layer
from llava.pruning.methods.pre_llm import PreLLMMethod
from llava.pruning.record import PruningRecord
from llava.pruning.registry import method_class


@dataclass
class BudgetPlan:
    """What a budget of ``target_tokens`` equivalent tokens became for one method."""

    method: str
    target_tokens: float
    fields: dict[str, Any]
    span_per_layer: list[int]

    @property
    def equivalent_tokens(self) -> float:
        return equivalent_tokens(self.span_per_layer)

    def summary(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "target_tokens": self.target_tokens,
            "fields": self.fields,
            "kept_per_layer": self.span_per_layer,
            "equivalent_tokens": round(self.equivalent_tokens, 2),
        }


def plan_budget(name: str, target_tokens: float, num_layers: int, span: int, config: Any) -> BudgetPlan:
    """Map ``target_tokens`` to ``name``'s parameters (``config_for_budget``) and report what they achieve.

    ``config``: a ``PruningLlamaConfig`` holding the method's other parameters (e.g. K, heads).
    """
    cls = method_class(name)
    fields = cls.config_for_budget(target_tokens, num_layers, span, config)
    planned = config.__class__.from_dict({**config.to_dict(), **fields, "pruning_method": name})
    method = cls.from_config(planned)
    method.validate(num_layers, span)
    if isinstance(method, PreLLMMethod):
        per_layer = [method.visual_tokens] * num_layers
    else:
        per_layer = span_tokens_per_layer(num_layers, span, method.schedule(span))
    return BudgetPlan(name, target_tokens, fields, per_layer)


def kept_indices_by_layer(record: PruningRecord) -> list[torch.Tensor | None]:
    """Per decoder layer, ``[B, R_l]`` prompt positions of the span tokens that layer processed (None: all of them)."""
    per_layer: list[torch.Tensor | None] = [None] * record.num_layers
    for stage in record.stages:
        for layer in range(stage.layer, record.num_layers):
            per_layer[layer] = stage.kept_index
    return per_layer
