"""Calibration-based classifier: greedy selection under budgets, GQA groups windowed as a unit."""

import torch

from kvcompress.adapters import adapter_for
from kvcompress.analysis.calibration import (
    CalibrationConfig,
    CalibrationSet,
    classify_by_calibration,
    greedy_select,
    shrink_to_joint_cost,
)
from kvcompress.evaluation.passkey import PasskeyPrompt

from .conftest import tiny_llama


def test_greedy_select_takes_cheapest_within_budget_and_threshold():
    costs = {"a": 0.3, "b": 0.01, "c": 0.02, "d": 0.0, "e": 0.5}
    assert greedy_select(costs, budget=2, max_cost=1.0) == ["d", "b"]
    assert greedy_select(costs, budget=10, max_cost=0.25) == ["d", "b", "c"]


def test_shrink_drops_most_expensive_until_joint_cost_fits():
    selection = list(range(20))
    shrunk = shrink_to_joint_cost(selection, lambda chosen: len(chosen) * 0.1, max_joint_cost=1.0)
    assert shrunk == list(range(10))


def test_calibration_classifier_on_tiny_llama():
    model = tiny_llama(layers=2, heads=4, kv_heads=2)
    torch.manual_seed(0)
    prompt = PasskeyPrompt(torch.randint(0, 90, (1, 40)), torch.tensor([[5, 6]]), "56", 0.0)
    calibration = CalibrationSet([torch.randint(0, 90, (1, 32))], [prompt])
    config = CalibrationConfig(window_budget=0.5, dead_budget=0.25, max_cost=10.0, max_joint_cost=10.0,
                               sinks=1, window=4)
    classification = classify_by_calibration(model, calibration, config, progress=False)
    shape = adapter_for(model).model_shape(model)
    windowed = classification.windowable_kv_groups()
    assert len(windowed) <= 2  # 50 % of 4 KV groups
    assert len(classification.heads_labelled("dead")) == 2  # 25 % of 8 heads (all costs below max_cost)
    costs = classification.scores["window_cost"]
    cheapest = sorted((costs[layer][kv], (layer, kv)) for layer in range(2) for kv in range(2))[:2]
    labels = classification.labels
    for _, (layer, kv) in cheapest:  # the cheapest groups have all their query heads positional (or dead)
        assert {labels[layer][h] for h in shape.query_heads_of(kv)} <= {"positional", "dead"}
    assert all(cost is not None for row in classification.scores["removal_cost"] for cost in row)
