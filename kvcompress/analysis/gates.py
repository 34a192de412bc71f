"""Gate-optimised classifier: learn which KV groups can be windowed (and heads removed) jointly.

DuoAttention (Xiao et al., 2024) gives every KV head a gate ``a`` in [0, 1] that mixes full and
streaming (sinks + window) attention, freezes the model and minimises, on calibration data,

    loss = D(full model, gated model) + λ_w · mean(a)     (then a is clipped to [0, 1] after each step)

so the gates of the heads that do not need the whole context are pushed to 0 *together*: unlike
the one-at-a-time costs of :mod:`kvcompress.analysis.calibration`, the optimisation sees how the
windowed heads interact. Here ``D`` is the calibration classifier's cost made differentiable:

    D = mean_texts KL(p_full || p_gated) + mean_prompts KL(p_full || p_gated) + answer_weight · mean_prompts (NLL_gated(answer) - NLL_full(answer))

(KL averaged over positions; the passkey answers follow their prompts). Optionally each query head
also gets an output gate ``g`` with its own penalty ``λ_h · mean(g)`` (0 = removed), so dead heads are
found in the same optimisation. After training, KV groups are ranked by ``a`` and heads by ``g``
(lowest first); those under ``threshold`` are windowed / removed up to the budgets, and the ranking
is kept in the classification's scores (``window_gate``, ``head_gate``) for KV-size vs quality curves
(:func:`kvcompress.analysis.calibration.with_cheapest_windows`).

Training is one calibration sequence per step (cycling), Adam on the gates only. A checkpoint (gates,
optimiser state, loss history) is written after every step, so an interrupted run resumes where it
stopped and a run with more ``steps`` continues it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from kvcompress.adapters import ModelShape, adapter_for
from kvcompress.analysis.calibration import (
    CalibrationSet,
    answer_nll,
    calibration_fingerprint,
    calibration_sequences,
    labels_from_selection,
    next_token_log_probs,
)
from kvcompress.attention import GATES_ATTRIBUTE, LayerGates, use_kvcompress_attention
from kvcompress.classification import HeadClassification
from kvcompress.layout import WindowKV
from toolkit_common.training import save_checkpoint


@dataclass(frozen=True)
class GateTrainingConfig:
    """Hyper-parameters of the gate optimisation and of the selection (saved with the result)."""

    sinks: int = 4
    window: int = 128
    steps: int = 48
    learning_rate: float = 0.05
    window_penalty: float = 0.05
    head_penalty: float = 0.0  # 0: head gates stay at 1 (no removal)
    answer_weight: float = 1.0
    threshold: float = 0.5
    window_budget: float = 0.5
    dead_budget: float = 0.1

    def __post_init__(self) -> None:
        if self.steps < 0 or self.learning_rate <= 0 or self.window_penalty < 0 or self.head_penalty < 0:
            raise ValueError("gate training needs steps >= 0, learning_rate > 0 and penalties >= 0")
        if not (0 <= self.window_budget <= 1 and 0 <= self.dead_budget <= 1 and 0 < self.threshold <= 1):
            raise ValueError("budgets must lie in [0, 1] and the threshold in (0, 1]")


@dataclass
class AttentionGates:
    """``window`` ``[L, H_kv]`` (1 = full KV, 0 = sinks + window) and ``heads`` ``[L, H_q]`` (output scale)."""

    window: torch.Tensor
    heads: torch.Tensor
    policy: WindowKV

    @classmethod
    def open(cls, shape: ModelShape, policy: WindowKV) -> AttentionGates:
        """All gates at 1: the gated model computes exactly what the model does."""
        return cls(torch.ones(shape.num_layers, shape.num_kv_heads), torch.ones(shape.num_layers, shape.num_query_heads),
                   policy)


@contextmanager
def gated_attention(model: nn.Module, gates: AttentionGates) -> Iterator[None]:
    """Inside the block every attention layer runs :func:`~kvcompress.attention_math.gated_window_attention`
    with its row of ``gates`` (forwards without cache only)."""
    attentions = adapter_for(model).attention_modules(model)
    if gates.window.shape[0] != len(attentions):
        raise ValueError(f"gates for {gates.window.shape[0]} layers, the model has {len(attentions)}")
    undo = use_kvcompress_attention(model)
    for layer, attention in enumerate(attentions):
        setattr(attention, GATES_ATTRIBUTE, LayerGates(gates.window, gates.heads, layer, gates.policy))
    try:
        yield
    finally:
        for attention in attentions:
            delattr(attention, GATES_ATTRIBUTE)
        undo()


def distillation_loss(log_probs: torch.Tensor, reference: torch.Tensor, answer_ids: torch.Tensor | None,
                      answer_weight: float) -> torch.Tensor:
    """``KL(p_full || p_gated)`` averaged over positions, plus ``answer_weight`` times the increase of the
    answer's NLL over the full model's when the sequence ends with an answer (``answer_ids`` ``[A]``);
    ``log_probs``/``reference`` ``[N, V]``. Zero when the gated model is the full model."""
    loss = F.kl_div(log_probs, reference, log_target=True, reduction="batchmean")
    if answer_ids is not None:
        loss = loss + answer_weight * (answer_nll(log_probs, answer_ids) - answer_nll(reference, answer_ids))
    return loss


@dataclass
class _Checkpoint:
    gates: AttentionGates
    optimizer: dict | None
    history: list[dict]


SELECTION_SETTINGS = ("steps", "threshold", "window_budget", "dead_budget")


def _training_settings(config: dict) -> dict:
    """The settings a checkpoint depends on (more steps continue it; the selection may change freely)."""
    return {name: value for name, value in config.items() if name not in SELECTION_SETTINGS}


def _load_checkpoint(path: Path | None, fingerprint: str, config: GateTrainingConfig) -> _Checkpoint | None:
    if path is None or not path.is_file():
        return None
    saved = torch.load(path, map_location="cpu", weights_only=True)  # the gates move to the model's device
    if saved["fingerprint"] != fingerprint or _training_settings(saved["config"]) != _training_settings(asdict(config)):
        return None  # other data or training settings: start again
    policy = WindowKV(config.sinks, config.window)
    return _Checkpoint(AttentionGates(saved["window"], saved["heads"], policy), saved["optimizer"], saved["history"])


def checkpoint_history(path: str | Path) -> list[dict]:
    """The per-step history stored in a gate checkpoint (``gates_w<W>.pt``)."""
    return torch.load(path, map_location="cpu", weights_only=True)["history"]


def train_gates(model: nn.Module, calibration: CalibrationSet, config: GateTrainingConfig | None = None,
                checkpoint: str | Path | None = None, progress: bool = True) -> tuple[AttentionGates, list[dict]]:
    """Optimise the gates on ``calibration`` (module docstring); returns them and the per-step history
    ``{"step", "sequence", "distillation", "mean_window_gate", "mean_head_gate"}``."""
    config = config or GateTrainingConfig()
    if not calibration.texts and not calibration.prompts:
        raise ValueError("the calibration set is empty: give at least one text window or passkey prompt")
    shape = adapter_for(model).model_shape(model)
    path = None if checkpoint is None else Path(checkpoint)
    fingerprint = calibration_fingerprint(calibration, next(model.parameters()).dtype)
    state = _load_checkpoint(path, fingerprint, config) or _Checkpoint(
        AttentionGates.open(shape, WindowKV(config.sinks, config.window)), None, [])
    device = next(model.parameters()).device
    gates = state.gates = AttentionGates(state.gates.window.to(device), state.gates.heads.to(device), state.gates.policy)
    trained = [gates.window] + ([gates.heads] if config.head_penalty > 0 else [])
    for tensor in trained:
        tensor.requires_grad_(True)
    optimizer = torch.optim.Adam(trained, lr=config.learning_rate)
    if state.optimizer is not None:
        optimizer.load_state_dict(state.optimizer)
    sequences = [sequence.to(device) for sequence in calibration_sequences(calibration)]
    answers = [None] * len(calibration.texts) + [prompt.answer_ids[0].to(device) for prompt in calibration.prompts]
    remaining = range(len(state.history), config.steps)
    if not remaining:
        return _frozen(gates), state.history
    with torch.no_grad():
        reference = [next_token_log_probs(model(input_ids=sequence, use_cache=False).logits)
                     for sequence in tqdm(sequences, desc="reference outputs", disable=not progress)]
    requires_grad = [parameter.requires_grad for parameter in model.parameters()]
    model.requires_grad_(False)
    try:
        bar = tqdm(remaining, desc="optimise gates", disable=not progress)
        for step in bar:
            index = step % len(sequences)
            with gated_attention(model, gates):
                log_probs = next_token_log_probs(model(input_ids=sequences[index], use_cache=False).logits)
            distillation = distillation_loss(log_probs, reference[index], answers[index], config.answer_weight)
            loss = distillation + config.window_penalty * gates.window.mean() + config.head_penalty * gates.heads.mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                for tensor in trained:
                    tensor.clamp_(0.0, 1.0)
            state.history.append({"step": step, "sequence": index, "distillation": distillation.item(),
                                  "mean_window_gate": gates.window.mean().item(),
                                  "mean_head_gate": gates.heads.mean().item()})
            bar.set_postfix(distillation=f"{distillation.item():.4f}", window=f"{gates.window.mean().item():.3f}")
            if path is not None:
                save_checkpoint(path, {"fingerprint": fingerprint, "config": asdict(config),
                                        "window": gates.window.detach(), "heads": gates.heads.detach(),
                                        "optimizer": optimizer.state_dict(), "history": state.history})
    finally:
        for parameter, flag in zip(model.parameters(), requires_grad, strict=True):
            parameter.requires_grad_(flag)
    return _frozen(gates), state.history


def _frozen(gates: AttentionGates) -> AttentionGates:
    return AttentionGates(gates.window.detach().clone(), gates.heads.detach().clone(), gates.policy)


def lowest_below(scores: torch.Tensor, threshold: float, budget: int) -> list[tuple[int, int]]:
    """``(row, column)`` of the entries of ``scores`` below ``threshold``, lowest first, at most ``budget``."""
    flat = scores.flatten()
    order = [int(i) for i in flat.argsort(stable=True) if flat[i] < threshold][:budget]
    return [divmod(i, scores.shape[1]) for i in order]


def last_pass_distillation(history: list[dict]) -> float:
    """Mean distillation loss of the last step on each calibration sequence (one pass over the set)."""
    last = {row["sequence"]: row["distillation"] for row in history}
    return sum(last.values()) / len(last)


def classify_by_gates(shape: ModelShape, gates: AttentionGates, config: GateTrainingConfig,
                      history: list[dict] | None = None) -> HeadClassification:
    """Window the KV groups and remove the heads whose gates end under ``config.threshold`` (lowest first,
    within the budgets); heads of windowed groups are positional, removed heads dead."""
    windowed = lowest_below(gates.window, config.threshold, int(config.window_budget * gates.window.numel()))
    dead = lowest_below(gates.heads, config.threshold, int(config.dead_budget * gates.heads.numel())) \
        if config.head_penalty > 0 else []
    parameters = {**asdict(config), "window_score": "window_gate",
                  "last_pass_distillation": last_pass_distillation(history) if history else None}
    return HeadClassification(shape, labels_from_selection(shape, windowed, dead), "gates", parameters,
                              {"window_gate": gates.window.tolist(), "head_gate": gates.heads.tolist()})
