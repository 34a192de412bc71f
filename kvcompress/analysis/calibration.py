"""Calibration-based classifier: measure what windowing each KV group / removing each head costs.

On a small calibration set (text windows and passkey prompts with their answers), for an intervention
``m`` (window one KV group, or zero one query head):

    cost(m) = KL_text(m) + KL_prompts(m) + answer_weight · mean_prompts max(0, NLL_m(answer) - NLL_full(answer))

    KL_set(m) = mean over the set's sequences of  mean_t KL( p_full(· | x_<t) || p_m(· | x_<t) )

(text windows and passkey prompts followed by their answers are averaged separately, so the
repetitive prompts do not dilute what an intervention does to ordinary text; an intervention that
happens to make an answer more likely earns no credit for it). To bound the run,
only some candidates may be measured (e.g. the KV groups with the largest sink + window mass); the
others are never selected. Selection, dead heads first:

1. heads sorted by removal cost, cheapest first, up to ``dead_budget`` (fraction of query heads) with
   each cost ``<= max_cost``; the longest prefix of that list whose *joint* removal costs
   ``<= max_dead_joint_cost`` is found by bisection (joint cost taken as growing with the prefix);
2. KV groups sorted by windowing cost, up to ``window_budget`` (fraction of KV groups), each ``<=
   max_cost``; the longest prefix whose joint cost *together with the removed heads* is ``<=
   max_joint_cost``, again by bisection.

Each intervention re-runs only the layers from its lowest changed layer on, fed with the full model's
stream entering that layer (``kvcompress.layer_resume``), about half the work of a full forward.
Every measured effect (the three terms) is appended to a JSONL log (``cost_log``) keyed by a fingerprint
of the calibration tokens, the intervention and (for windows) the window geometry, so an interrupted
calibration resumes where it stopped, a different ``answer_weight`` re-uses the measurements and a
run with another window size re-uses the head-removal ones. Labels: heads of
windowed groups are positional, removed heads dead, the rest gathering. On GQA models the unit of
windowing is the KV group, so all query heads sharing it are windowed together.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from kvcompress.adapters import ModelShape, adapter_for
from kvcompress.classification import HeadClassification
from kvcompress.evaluation.passkey import PasskeyPrompt
from kvcompress.layer_resume import layer_inputs, starting_at_layer
from kvcompress.methods.base import ComposedMethod, CompressionMethod
from kvcompress.methods.dead_heads import DeadHeadPruner
from kvcompress.methods.kv_policy import all_kv_heads
from kvcompress.methods.positional import PositionalHeadOptimizer
from toolkit_common.jsonl import JsonlAppender, read_jsonl


@dataclass(frozen=True)
class CalibrationConfig:
    """Budgets and thresholds of the calibration classifier (saved with the result)."""

    window_budget: float = 0.5
    dead_budget: float = 0.1
    max_cost: float = 0.05
    max_joint_cost: float = 0.05
    max_dead_joint_cost: float = 0.01
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
    layer_inputs: list[list[torch.Tensor]]  # per sequence, the stream entering each layer, [1, N, d]


def calibration_sequences(calibration: CalibrationSet) -> list[torch.Tensor]:
    """Every calibration sequence ``[1, N]``: the texts, then each prompt followed by its answer."""
    return [*calibration.texts, *(torch.cat([p.input_ids, p.answer_ids], 1) for p in calibration.prompts)]


def next_token_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """``[N, V]`` fp32 log-probabilities of the first sequence of ``logits`` ``[1, N, V]``."""
    return logits[0].float().log_softmax(-1)


def answer_nll(log_probs: torch.Tensor, answer_ids: torch.Tensor) -> torch.Tensor:
    """Mean NLL of ``answer_ids`` ``[A]``, the last ``A`` tokens of a sequence with ``log_probs`` ``[N, V]``."""
    predicted = log_probs[-answer_ids.numel() - 1 : -1]
    return -predicted.gather(-1, answer_ids.to(log_probs.device)[:, None]).mean()


def _answer_nlls(log_probs: list[torch.Tensor], calibration: CalibrationSet) -> list[float]:
    return [answer_nll(sequence, prompt.answer_ids[0]).item()
            for prompt, sequence in zip(calibration.prompts, log_probs[len(calibration.texts):], strict=True)]


def reference_outputs(model: nn.Module, calibration: CalibrationSet) -> Reference:
    """Full-model next-token log-probabilities and layer inputs on every sequence, answer NLLs on the prompts."""
    device = next(model.parameters()).device
    with torch.no_grad():
        runs = [layer_inputs(model, sequence.to(device)) for sequence in calibration_sequences(calibration)]
    log_probs = [next_token_log_probs(logits) for logits, _ in runs]
    return Reference(log_probs, _answer_nlls(log_probs, calibration), [inputs for _, inputs in runs])


@dataclass(frozen=True)
class InterventionEffect:
    """What one intervention does on the calibration set (the terms of ``cost`` in the module docstring)."""

    text_kl: float
    prompt_kl: float
    answer_nll_increase: float

    def cost(self, answer_weight: float) -> float:
        return self.text_kl + self.prompt_kl + answer_weight * self.answer_nll_increase


def measure_intervention(model: nn.Module, method: CompressionMethod, calibration: CalibrationSet,
                         reference: Reference, first_layer: int = 0) -> InterventionEffect:
    """The effect of one method applied to ``model`` (undone afterwards) on the calibration set.

    ``first_layer``: the lowest layer the method changes; the layers below it are not run again (their
    output is the reference's stream entering ``first_layer``).
    """
    log_probs = []
    device = next(model.parameters()).device
    with torch.no_grad(), method.apply(model):
        for sequence, inputs in zip(calibration_sequences(calibration), reference.layer_inputs, strict=True):
            with starting_at_layer(model, first_layer, inputs[first_layer]):
                log_probs.append(next_token_log_probs(model(input_ids=sequence.to(device), use_cache=False).logits))
    kl = [F.kl_div(modified, full, log_target=True, reduction="batchmean").item()
          for modified, full in zip(log_probs, reference.log_probs, strict=True)]
    texts = len(calibration.texts)
    nll = [max(0.0, modified - full) for modified, full in
           zip(_answer_nlls(log_probs, calibration), reference.answer_nll, strict=True)]
    mean = lambda values: sum(values) / len(values) if values else 0.0
    return InterventionEffect(mean(kl[:texts]), mean(kl[texts:]), mean(nll))


def calibration_fingerprint(calibration: CalibrationSet, dtype: torch.dtype = torch.float32) -> str:
    """Hash of the calibration tokens (texts, then prompts with their answers) and of the model's dtype when it
    is not float32 (effects measured in another precision are not reused; float32 keeps its old hashes)."""
    digest = hashlib.sha1()
    if dtype != torch.float32:
        digest.update(f"{dtype}|".encode())
    for sequence in calibration_sequences(calibration):
        digest.update(sequence.to(torch.int64).cpu().numpy().tobytes())
        digest.update(b"|")
    return digest.hexdigest()[:16]


class CostLog:
    """Append-only JSONL of measured effects, one line per intervention:
    ``{"fingerprint", "dead", "windowed", "geometry", <effect terms>}`` (``geometry`` = ``[sinks, window]``
    of the windowed groups, ``null`` without any).

    Lines of another fingerprint (other calibration data) are ignored, so one file may serve several
    runs; the effect of a known intervention is returned instead of measured again.
    """

    def __init__(self, path: str | Path | None, fingerprint: str):
        self.path = None if path is None else Path(path)
        self.fingerprint = fingerprint
        self.known: dict[tuple, InterventionEffect] = {}
        terms = InterventionEffect.__dataclass_fields__
        if self.path is not None and self.path.is_file():
            for row in read_jsonl(self.path)[0]:
                if row["fingerprint"] == fingerprint:
                    effect = InterventionEffect(**{name: row[name] for name in terms})
                    self.known[self._key(row["dead"], row["windowed"], row["geometry"])] = effect

    @staticmethod
    def _key(dead: Sequence, windowed: Sequence, geometry: Sequence[int] | None) -> tuple:
        windowed = tuple(sorted(map(tuple, windowed)))
        return tuple(sorted(map(tuple, dead))), windowed, tuple(geometry) if windowed else None

    def effect(self, dead: Sequence[tuple[int, int]], windowed: Sequence[tuple[int, int]],
               geometry: tuple[int, int], measure: Callable[[], InterventionEffect]) -> InterventionEffect:
        """The logged effect of removing ``dead`` and windowing ``windowed`` with ``geometry`` =
        ``(sinks, window)``, or ``measure()`` it and log it."""
        key = self._key(dead, windowed, geometry)
        if key not in self.known:
            self.known[key] = measure()
            if self.path is not None:
                with JsonlAppender(self.path) as appender:
                    appender.write({"fingerprint": self.fingerprint, "dead": [list(u) for u in key[0]],
                                    "windowed": [list(u) for u in key[1]],
                                    "geometry": None if key[2] is None else list(key[2]),
                                    **asdict(self.known[key])})
        return self.known[key]


def greedy_select(costs: dict, budget: int, max_cost: float) -> list:
    """Cheapest-first selection of at most ``budget`` items whose individual cost is ``<= max_cost``."""
    ranked = sorted(costs, key=costs.get)
    return [item for item in ranked if costs[item] <= max_cost][:budget]


def longest_affordable_prefix(selection: list, joint_cost: Callable[[list], float], max_joint_cost: float) -> list:
    """Longest prefix of a cost-sorted ``selection`` with ``joint_cost(prefix) <= max_joint_cost``, by bisection.

    Assumes the joint cost grows with the prefix (``log2(len)`` measurements instead of ``len``).
    """
    low, high = 0, len(selection)  # prefix of length ``low`` fits; longer than ``high`` is not tried
    while low < high:
        middle = (low + high + 1) // 2
        if joint_cost(selection[:middle]) <= max_joint_cost:
            low = middle
        else:
            high = middle - 1
    return selection[:low]


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
                            removal_candidates: list[tuple[int, int]] | None = None,
                            cost_log: str | Path | None = None) -> HeadClassification:
    """Measure the windowing cost of every KV group and the removal cost of every head (or only of the
    given candidates, to bound the run), then select as in the module docstring."""
    config = config or CalibrationConfig()
    shape = adapter_for(model).model_shape(model)
    reference = reference_outputs(model, calibration)
    log = CostLog(cost_log, calibration_fingerprint(calibration, next(model.parameters()).dtype))

    def method(dead: list[tuple[int, int]], windowed: list[tuple[int, int]]) -> CompressionMethod:
        parts = [DeadHeadPruner(dead, mode="zero")] if dead else []
        parts += [PositionalHeadOptimizer(windowed, config.sinks, config.window)] if windowed else []
        return ComposedMethod(parts)

    def cost(dead: list[tuple[int, int]], windowed: list[tuple[int, int]]) -> float:
        first_layer = min(layer for layer, _ in [*dead, *windowed])
        effect = log.effect(dead, windowed, (config.sinks, config.window),
                            lambda: measure_intervention(model, method(dead, windowed), calibration, reference,
                                                         first_layer))
        return effect.cost(config.answer_weight)

    all_heads = [(layer, head) for layer in range(shape.num_layers) for head in range(shape.num_query_heads)]
    heads = all_heads if removal_candidates is None else removal_candidates
    dead_costs = {head: cost([head], []) for head in tqdm(heads, desc="calibrate removals", disable=not progress)} \
        if config.dead_budget > 0 else {}
    groups = all_kv_heads(shape) if window_candidates is None else window_candidates
    window_costs = {group: cost([], [group]) for group in
                    tqdm(groups, desc="calibrate windows", disable=not progress)} if config.window_budget > 0 else {}
    dead = greedy_select(dead_costs, int(config.dead_budget * len(all_heads)), config.max_cost)
    dead = longest_affordable_prefix(dead, lambda chosen: cost(chosen, []), config.max_dead_joint_cost)
    windowed = greedy_select(window_costs, int(config.window_budget * shape.num_layers * shape.num_kv_heads),
                             config.max_cost)
    windowed = longest_affordable_prefix(windowed, lambda chosen: cost(dead, chosen), config.max_joint_cost)
    return HeadClassification(
        shape, labels_from_selection(shape, windowed, dead), "calibration",
        parameters={**asdict(config), "texts": len(calibration.texts), "prompts": len(calibration.prompts),
                    "dead_joint_cost": cost(dead, []) if dead else 0.0,
                    "joint_cost": cost(dead, windowed) if dead or windowed else 0.0},
        scores={"window_cost": [[window_costs.get((layer, kv)) for kv in range(shape.num_kv_heads)]
                                for layer in range(shape.num_layers)],
                "removal_cost": [[dead_costs.get((layer, head)) for head in range(shape.num_query_heads)]
                                 for layer in range(shape.num_layers)]},
    )


def with_cheapest_windows(classification: HeadClassification, count: int) -> HeadClassification:
    """A calibration (or gate) classification re-cut to window exactly the ``count`` KV groups of lowest
    score (measured windowing cost, or trained window gate; its dead heads kept): one point of a
    KV-size vs quality curve."""
    score = classification.parameters.get("window_score", "window_cost")
    costs = classification.scores.get(score)
    if not costs:
        raise ValueError(f"the classification has no {score} scores: use one made by the calibration or gate "
                         "classifier")
    measured = sorted((cost, (layer, kv)) for layer, row in enumerate(costs) for kv, cost in enumerate(row)
                      if cost is not None)
    if not 0 <= count <= len(measured):
        raise ValueError(f"cannot window {count} KV groups: valid counts are 0..{len(measured)} (the measured groups)")
    windowed = [group for _, group in measured[:count]]
    labels = labels_from_selection(classification.shape, windowed, classification.heads_labelled("dead"))
    return HeadClassification(classification.shape, labels, "calibration-ranked",
                              {**classification.parameters, "windowed_groups": count}, classification.scores)
