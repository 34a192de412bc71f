"""Gate-optimised classifier: gated attention limits, training, resume, selection."""

import pytest
import torch

from kvcompress.adapters import adapter_for
from kvcompress.analysis.calibration import CalibrationSet, with_cheapest_windows
from kvcompress.analysis.gates import (
    AttentionGates,
    GateTrainingConfig,
    classify_by_gates,
    distillation_loss,
    gated_attention,
    last_pass_distillation,
    lowest_below,
    train_gates,
)
from kvcompress.evaluation.passkey import PasskeyPrompt
from kvcompress.layout import WindowKV
from kvcompress.methods.dead_heads import DeadHeadPruner
from kvcompress.methods.kv_policy import all_kv_heads
from kvcompress.methods.positional import PositionalHeadOptimizer

from .conftest import tiny_llama


def _logits(model, input_ids):
    with torch.no_grad():
        return model(input_ids=input_ids, use_cache=False).logits


def test_open_gates_are_the_model_and_closed_gates_are_the_methods(tiny_model, input_ids):
    shape = adapter_for(tiny_model).model_shape(tiny_model)
    policy = WindowKV(2, 5)
    full = _logits(tiny_model, input_ids)
    gates = AttentionGates.open(shape, policy)
    with gated_attention(tiny_model, gates):
        assert torch.allclose(_logits(tiny_model, input_ids), full, atol=1e-5)
    gates.window[1:3] = 0.0
    gates.heads[0, 1] = 0.0
    with gated_attention(tiny_model, gates):
        gated = _logits(tiny_model, input_ids)
    windowed = [(layer, kv) for layer, kv in all_kv_heads(shape) if layer in (1, 2)]
    with DeadHeadPruner([(0, 1)], mode="zero").apply(tiny_model), \
            PositionalHeadOptimizer(windowed, policy.sinks, policy.window).apply(tiny_model):
        reference = _logits(tiny_model, input_ids)
    assert torch.allclose(gated, reference, atol=1e-5)
    assert not torch.allclose(gated, full, atol=1e-3)
    assert torch.allclose(_logits(tiny_model, input_ids), full)  # gates detached on exit


def test_half_gate_mixes_the_two_attentions(input_ids):
    model = tiny_llama(layers=1)
    shape = adapter_for(model).model_shape(model)
    captured = []
    attention = adapter_for(model).attention_modules(model)[0]
    hook = attention.register_forward_hook(lambda module, args, output: captured.append(output[0]))
    for value in (0.0, 0.5, 1.0):
        gates = AttentionGates.open(shape, WindowKV(1, 4))
        gates.window.fill_(value)
        with gated_attention(model, gates), torch.no_grad():
            model(input_ids=input_ids, use_cache=False)
    hook.remove()
    outputs = dict(zip((0.0, 0.5, 1.0), captured, strict=True))
    assert torch.allclose(outputs[0.5], (outputs[0.0] + outputs[1.0]) / 2, atol=1e-6)


def test_distillation_loss_is_zero_on_the_reference_and_counts_the_answer():
    torch.manual_seed(0)
    reference = torch.randn(6, 11).log_softmax(-1)
    assert distillation_loss(reference, reference, None, 1.0).abs() < 1e-7
    answer = torch.tensor([3, 4])
    assert distillation_loss(reference, reference, answer, 2.0).abs() < 1e-7
    shifted = reference.clone()
    shifted[3] = torch.randn(11).log_softmax(-1)
    kl = (reference[3].exp() * (reference[3] - shifted[3])).sum() / 6
    increase = (reference[3, 3] - shifted[3, 3]) / 2  # answer rows 3 and 4; only row 3 changed
    assert torch.isclose(distillation_loss(shifted, reference, answer, 2.0), kl + 2 * increase, atol=1e-6)


def _calibration() -> CalibrationSet:
    torch.manual_seed(0)
    prompt = PasskeyPrompt(torch.randint(0, 90, (1, 40)), torch.tensor([[5, 6]]), "56", 0.0)
    return CalibrationSet([torch.randint(0, 90, (1, 32))], [prompt])


def test_training_pushes_gates_down_under_a_penalty_and_resumes(tmp_path):
    model = tiny_llama(layers=2, heads=4, kv_heads=2)
    calibration = _calibration()
    config = GateTrainingConfig(sinks=1, window=4, steps=6, learning_rate=0.2, window_penalty=1.0,
                                head_penalty=1.0)
    checkpoint = tmp_path / "gates.pt"
    gates, history = train_gates(model, calibration, config, checkpoint=checkpoint, progress=False)
    assert [path.name for path in tmp_path.iterdir()] == ["gates.pt"]  # no temporary file left
    assert [row["step"] for row in history] == list(range(6))
    assert [row["sequence"] for row in history] == [0, 1, 0, 1, 0, 1]  # one text, one prompt: cycled
    assert gates.window.max() < 1.0 and gates.heads.max() < 1.0  # the penalty moved every gate
    assert gates.window.min() >= 0.0 and gates.heads.min() >= 0.0  # clipped to [0, 1]
    assert all(parameter.requires_grad for parameter in model.parameters())  # model flags restored
    again, history_again = train_gates(model, calibration, config, checkpoint=checkpoint,
                                       progress=False)  # finished: nothing is run again
    assert torch.equal(again.window, gates.window) and history_again == history
    longer = GateTrainingConfig(**{**config.__dict__, "steps": 8})
    _, history_longer = train_gates(model, calibration, longer, checkpoint=checkpoint, progress=False)
    assert history_longer[:6] == history and len(history_longer) == 8  # more steps continue the run
    other = GateTrainingConfig(**{**config.__dict__, "window_penalty": 0.5})
    _, history_other = train_gates(model, calibration, other, checkpoint=checkpoint, progress=False)
    assert len(history_other) == 6  # another penalty starts again (a resumed run would hold 8 steps)


def test_without_penalty_the_gates_stay_open():
    model = tiny_llama(layers=2, heads=4, kv_heads=2)
    config = GateTrainingConfig(sinks=1, window=4, steps=3, window_penalty=0.0)
    gates, history = train_gates(model, _calibration(), config, progress=False)
    assert torch.all(gates.window > 0.9)  # at 1 the distillation loss is at its minimum 0
    assert torch.equal(gates.heads, torch.ones_like(gates.heads))
    assert history[0]["distillation"] < 1e-5


def test_last_pass_distillation_averages_the_last_step_of_each_sequence():
    history = [{"sequence": 0, "distillation": 9.0}, {"sequence": 1, "distillation": 1.0},
               {"sequence": 0, "distillation": 3.0}]
    assert last_pass_distillation(history) == 2.0


def test_lowest_below_respects_threshold_and_budget():
    scores = torch.tensor([[0.9, 0.1], [0.3, 0.0]])
    assert lowest_below(scores, 0.5, 10) == [(1, 1), (0, 1), (1, 0)]
    assert lowest_below(scores, 0.5, 2) == [(1, 1), (0, 1)]
    assert lowest_below(scores, 0.05, 10) == [(1, 1)]


def test_classify_by_gates_labels_and_ranks():
    model = tiny_llama(layers=2, heads=4, kv_heads=2)
    shape = adapter_for(model).model_shape(model)
    gates = AttentionGates.open(shape, WindowKV(1, 4))
    gates.window[0, 1] = 0.0
    gates.window[1, 0] = 0.2
    gates.heads[1, 3] = 0.1
    config = GateTrainingConfig(window_budget=0.25, dead_budget=0.125, head_penalty=0.1)
    classification = classify_by_gates(shape, gates, config)
    assert classification.windowable_kv_groups() == [(0, 1)]  # budget: 1 of 4 groups
    assert classification.heads_labelled("dead") == [(1, 3)]
    assert classification.labels[0][2:] == ["positional", "positional"]
    ranked = with_cheapest_windows(classification, 2)  # ranked by the gates
    assert sorted(ranked.windowable_kv_groups()) == [(0, 1), (1, 0)]
    no_heads = classify_by_gates(shape, gates, GateTrainingConfig(head_penalty=0.0))
    assert no_heads.heads_labelled("dead") == []  # head gates not trained: nothing removed


def test_bad_gate_settings():
    with pytest.raises(ValueError, match="penalties"):
        GateTrainingConfig(window_penalty=-1.0)
    with pytest.raises(ValueError, match="budgets"):
        GateTrainingConfig(window_budget=1.5)
    model = tiny_llama(layers=2)
    wrong = AttentionGates.open(adapter_for(tiny_llama(layers=3)).model_shape(tiny_llama(layers=3)), WindowKV(1, 4))
    with pytest.raises(ValueError, match="layers"), gated_attention(model, wrong):
        pass
    with pytest.raises(ValueError, match="calibration set is empty"):
        train_gates(model, CalibrationSet([], []), GateTrainingConfig(steps=1), progress=False)


def test_gate_plot_is_written(tmp_path):
    from kvcompress.analysis.plots import plot_gates

    model = tiny_llama(layers=2, heads=4, kv_heads=2)
    config = GateTrainingConfig(sinks=1, window=4, steps=4, window_penalty=1.0)
    gates, history = train_gates(model, _calibration(), config, progress=False)
    classification = classify_by_gates(adapter_for(model).model_shape(model), gates, config, history)
    plot_gates(classification, history, tmp_path / "gates.png")
    assert (tmp_path / "gates.png").stat().st_size > 10_000
