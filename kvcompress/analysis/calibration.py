"""Calibration-based classifier: measure what windowing each KV group / removing each head costs.

On a small calibration set (text windows and passkey prompts with their answers), for an intervention
``m`` (window one KV group, or zero one query head):

    cost(m) = mean_t KL( p_full(· | x_<t) || p_m(· | x_<t) )  over the positions of every sequence
              (text windows, and passkey prompts followed by their answers)
            + answer_weight · ( NLL_m(answer | prompt) - NLL_full(answer | prompt) )  averaged over prompts

To bound the run, only some candidates may be measured (e.g. the KV groups with the largest
sink + window mass); the others are never selected. Interventions are sorted by cost and accepted greedily (cheapest first) up to a budget (fraction of KV
groups / query heads) while each cost stays below ``max_cost``; the accepted set is then measured as a
whole and shrunk by 10 % steps until its joint cost is below ``max_joint_cost``. Labels: heads of
windowed groups are positional, removed heads dead, the rest gathering. On GQA models the unit of
windowing is the KV group, so all query heads sharing it are windowed together.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from kvcompress.adapters import ModelShape, adapter_for
from kvcompress.classification import HeadClassification
from kvcompress.evaluation.passkey import PasskeyPrompt
from kvcompress.methods.base import ComposedMethod, CompressionMethod
from kvcompress.methods.dead_heads import DeadHeadPruner
from kvcompress.methods.kv_policy import all_kv_heads
from kvcompress.methods.positional import PositionalHeadOptimizer


@dataclass(frozen=True)
class CalibrationConfig:
    """Budgets and thresholds of the calibration classifier (saved with the result)."""

    window_budget: float = 0.5
    dead_budget: float = 0.1
    max_cost: float = 0.05
    max_joint_cost: float = 0.2
    answer_weight: float = 1.0
    sinks: int = 4
    window: int = 64


@dataclass
class CalibrationSet:
    texts: list[torch.Tensor]  # [1, N] token windows
    prompts: list[PasskeyPrompt]


@dataclass
class Reference:
    log_probs: list[torch.Tensor]  # per sequence (texts, then prompt + answer), [N, vocab]
    answer_nll: list[float]


def _sequences(calibration: CalibrationSet) -> list[torch.Tensor]:
    return [*calibration.texts, *(torch.cat([p.input_ids, p.answer_ids], 1) for p in calibration.prompts)]


def _log_probs(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=input_ids, use_cache=False).logits[0].float().log_softmax(-1)


def _answer_nlls(log_probs: list[torch.Tensor], calibration: CalibrationSet) -> list[float]:
    nlls = []
    for prompt, sequence in zip(calibration.prompts, log_probs[len(calibration.texts):], strict=True):
        answer = prompt.answer_ids[0]
        predicted = sequence[-answer.numel() - 1 : -1]
        nlls.append(-predicted.gather(-1, answer[:, None]).mean().item())
    return nlls


def reference_outputs(model: nn.Module, calibration: CalibrationSet) -> Reference:
    """Full-model next-token log-probabilities on every sequence and answer NLLs on the prompts."""
    with torch.no_grad():
        log_probs = [_log_probs(model, sequence) for sequence in _sequences(calibration)]
    return Reference(log_probs, _answer_nlls(log_probs, calibration))


def intervention_cost(model: nn.Module, method: CompressionMethod, calibration: CalibrationSet,
                      reference: Reference, answer_weight: float) -> float:
    """``cost(m)`` of the module docstring for one method applied to ``model`` (undone afterwards)."""
    with torch.no_grad(), method.apply(model):
        log_probs = [_log_probs(model, sequence) for sequence in _sequences(calibration)]
    kl = [F.kl_div(modified, full, log_target=True, reduction="batchmean").item()
          for modified, full in zip(log_probs, reference.log_probs, strict=True)]
    nll = [modified - full for modified, full in
           zip(_answer_nlls(log_probs, calibration), reference.answer_nll, strict=True)]
    return sum(kl) / len(kl) + answer_weight * (sum(nll) / max(len(nll), 1))


def greedy_select(costs: dict, budget: int, max_cost: float) -> list:
    """Cheapest-first selection of at most ``budget`` items whose individual cost is ``<= max_cost``."""
    ranked = sorted(costs, key=costs.get)
    return [item for item in ranked if costs[item] <= max_cost][:budget]


def shrink_to_joint_cost(selection: list, joint_cost: Callable[[list], float], max_joint_cost: float) -> list:
    """Drop the most expensive 10 % (at least one) of a cost-sorted selection until ``joint_cost`` fits."""
    while selection and joint_cost(selection) > max_joint_cost:
        selection = selection[: len(selection) - max(1, len(selection) // 10)]
    return selection


def labels_from_selection(shape: ModelShape, windowed: list[tuple[int, int]],
                          dead: list[tuple[int, int]]) -> list[list[str]]:
    """Positional for the query heads of windowed KV groups, dead for removed heads, else gathering."""
    labels = [["gathering"] * shape.num_query_heads for _ in range(shape.num_layers)]
    for layer, kv in windowed:
        for head in shape.query_heads_of(kv):
            labels[layer][head] = "positional"
    for layer, head in dead:
        labels[layer][head] = "dead"
    return labels


def classify_by_calibration(model: nn.Module, calibration: CalibrationSet,
                            config: CalibrationConfig | None = None, progress: bool = True,
                            window_candidates: list[tuple[int, int]] | None = None,
                            removal_candidates: list[tuple[int, int]] | None = None) -> HeadClassification:
    """Measure the windowing cost of every KV group and the removal cost of every head (or only of the
    given candidates, to bound the run), then select greedily."""
    config = config or CalibrationConfig()
    shape = adapter_for(model).model_shape(model)
    reference = reference_outputs(model, calibration)

    def window(groups: list[tuple[int, int]]) -> CompressionMethod:
        return PositionalHeadOptimizer(groups, config.sinks, config.window)

    def cost(method: CompressionMethod) -> float:
        return intervention_cost(model, method, calibration, reference, config.answer_weight)

    groups = all_kv_heads(shape)
    window_costs = {group: cost(window([group])) for group in
                    tqdm(groups if window_candidates is None else window_candidates, desc="calibrate windows",
                         disable=not progress)}
    all_heads = [(layer, head) for layer in range(shape.num_layers) for head in range(shape.num_query_heads)]
    heads = all_heads if removal_candidates is None else removal_candidates
    dead_costs = {head: cost(DeadHeadPruner([head], mode="zero"))
                  for head in tqdm(heads, desc="calibrate removals", disable=not progress)} \
        if config.dead_budget > 0 else {}
    windowed = greedy_select(window_costs, int(config.window_budget * len(groups)), config.max_cost)
    windowed = shrink_to_joint_cost(windowed, lambda chosen: cost(window(chosen)), config.max_joint_cost)
    dead = greedy_select(dead_costs, int(config.dead_budget * len(all_heads)), config.max_cost)
    dead = shrink_to_joint_cost(
        dead, lambda chosen: cost(ComposedMethod([DeadHeadPruner(chosen, mode="zero"), window(windowed)])),
        config.max_joint_cost)
    joint = cost(ComposedMethod([DeadHeadPruner(dead, mode="zero"), window(windowed)])) if dead or windowed else 0.0
    return HeadClassification(
        shape, labels_from_selection(shape, windowed, dead), "calibration",
        parameters={**asdict(config), "texts": len(calibration.texts), "prompts": len(calibration.prompts),
                    "joint_cost": joint},
        scores={"window_cost": [[window_costs.get((layer, kv)) for kv in range(shape.num_kv_heads)]
                                for layer in range(shape.num_layers)],
                "removal_cost": [[dead_costs.get((layer, head)) for head in range(shape.num_query_heads)]
                                 for layer in range(shape.num_layers)]},
    )
