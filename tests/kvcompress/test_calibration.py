"""Calibration-based classifier: greedy selection under budgets, GQA groups windowed as a unit."""

import pytest
import torch

from kvcompress.adapters import adapter_for
from kvcompress.analysis.calibration import (
    CalibrationConfig,
    CalibrationSet,
    CostLog,
    InterventionEffect,
    classify_by_calibration,
    greedy_select,
    longest_affordable_prefix,
    with_cheapest_windows,
)
from kvcompress.evaluation.passkey import PasskeyPrompt

from .conftest import tiny_llama


def test_greedy_select_takes_cheapest_within_budget_and_threshold():
    costs = {"a": 0.3, "b": 0.01, "c": 0.02, "d": 0.0, "e": 0.5}
    assert greedy_select(costs, budget=2, max_cost=1.0) == ["d", "b"]
    assert greedy_select(costs, budget=10, max_cost=0.25) == ["d", "b", "c"]


def test_longest_affordable_prefix_by_bisection():
    selection = list(range(20))
    shrunk = longest_affordable_prefix(selection, lambda chosen: len(chosen) * 0.1, max_joint_cost=1.0)
    assert shrunk == list(range(10))
    calls = []

    def joint(chosen):
        calls.append(len(chosen))
        return len(chosen) * 0.1

    assert longest_affordable_prefix(list(range(100)), joint, max_joint_cost=3.05) == list(range(30))
    assert len(calls) <= 7  # bisection, not one measurement per prefix
    assert longest_affordable_prefix(list(range(5)), lambda chosen: 1.0, max_joint_cost=0.5) == []


def test_cost_log_resumes_and_separates_fingerprints(tmp_path):
    path = tmp_path / "costs.jsonl"
    effect = InterventionEffect(0.25, 0.125, 0.5)
    assert effect.cost(answer_weight=2.0) == 0.25 + 0.125 + 1.0
    assert CostLog(path, "fp").effect([(0, 1)], [], (4, 64), lambda: effect) == effect
    again = CostLog(path, "fp")
    assert again.effect([(0, 1)], [], (4, 64), lambda: pytest.fail("measured twice")) == effect
    assert again.effect([(0, 1)], [], (4, 128), lambda: pytest.fail("removals do not depend on the window")) == effect
    other = InterventionEffect(0.0, 0.9, 0.0)
    assert again.effect([], [(0, 1)], (4, 64), lambda: other) == other  # windowing (0, 1) is not removing (0, 1)
    wider = InterventionEffect(0.0, 0.1, 0.0)
    assert again.effect([], [(0, 1)], (4, 128), lambda: wider) == wider  # another window is another measurement
    assert CostLog(path, "fp").effect([], [(0, 1)], (4, 64), lambda: pytest.fail("logged")) == other
    assert CostLog(path, "other data").effect([(0, 1)], [], (4, 64), lambda: other) == other
    assert len(path.read_text().splitlines()) == 4


def test_calibration_classifier_on_tiny_llama(tmp_path):
    model = tiny_llama(layers=2, heads=4, kv_heads=2)
    torch.manual_seed(0)
    prompt = PasskeyPrompt(torch.randint(0, 90, (1, 40)), torch.tensor([[5, 6]]), "56", 0.0)
    calibration = CalibrationSet([torch.randint(0, 90, (1, 32))], [prompt])
    config = CalibrationConfig(window_budget=0.5, dead_budget=0.25, max_cost=10.0, max_joint_cost=10.0,
                               max_dead_joint_cost=10.0, sinks=1, window=4)
    log = tmp_path / "costs.jsonl"
    classification = classify_by_calibration(model, calibration, config, progress=False, cost_log=log)
    lines = log.read_text().splitlines()
    assert len(lines) >= 8 + 4  # every head removal and every KV group windowing was measured
    resumed = classify_by_calibration(model, calibration, config, progress=False, cost_log=log)
    assert resumed.labels == classification.labels and log.read_text().splitlines() == lines
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

    recut = with_cheapest_windows(classification, 1)
    assert recut.windowable_kv_groups() == [cheapest[0][1]]
    assert recut.heads_labelled("dead") == classification.heads_labelled("dead")
    with pytest.raises(ValueError, match=r"valid counts are 0..4"):
        with_cheapest_windows(classification, 5)
