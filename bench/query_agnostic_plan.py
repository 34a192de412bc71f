"""What the query-agnostic benchmark measures: the KV targets, the units (one row each) and their order.

A *target* is a count ``k`` of windowed KV groups cut from a ranked classification
(:func:`~kvcompress.analysis.calibration.with_cheapest_windows`), chosen so that the KV fraction

    f(k, T) = Σ_groups kept_g / (G · T)        (:func:`~kvcompress.methods.registry.kv_fraction`)

at the reference context ``T`` is nearest ``1 - reduction``. Every compressed method of a target holds
``f(k, T_task)`` of the full KV at each task's compressed context ``T_task`` (the passkey context, the
whole passkey prompt in the question-aware protocol, the perplexity context): our windowed heads by
construction, StreamingLLM / SnapKV through their budgets, kvpress presses through
``compression_ratio = 1 - f(k, T_task)``.

A *unit* is one (side, method, target, task, protocol) cell; it becomes one JSONL row.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from kvcompress.analysis.calibration import with_cheapest_windows
from kvcompress.classification import HeadClassification
from kvcompress.evaluation.benchmark import QUERY_AGNOSTIC, QUESTION_AWARE
from kvcompress.methods.registry import kv_fraction

OURS, KVPRESS = "ours", "kvpress"
FULL = "full"
OUR_METHODS = ("positional+dead", "snapkv", "streaming_llm")  # per target, after the full model
KVPRESS_NONE = "none"  # kvpress side without a press: its protocol check against our full row


def groups_for_reduction(base: HeadClassification, reduction: float, length: int, sinks: int, window: int) -> int:
    """The ``k`` whose KV reduction ``1 - f(k, length)`` is nearest ``reduction`` (the smaller ``k`` on a tie)."""
    best: tuple[float, int] | None = None
    k = 0
    while True:
        try:
            classification = with_cheapest_windows(base, k)
        except ValueError:
            break
        gap = abs(1 - kv_fraction(classification, length, sinks, window) - reduction)
        if best is None or gap < best[0] - 1e-12:
            best = (gap, k)
        k += 1
    if best is None:
        raise ValueError("the classification ranks no KV group")
    return best[1]


@dataclass(frozen=True)
class Unit:
    """One measured cell. ``groups`` is the target's ``k`` (None: the full model)."""

    side: str
    method: str
    groups: int | None
    task: str
    protocol: str

    def key(self, settings_digest: str) -> str:
        return hashlib.sha1(json.dumps([asdict(self), settings_digest]).encode()).hexdigest()[:16]


def plan_units(groups: list[int], passkey_tasks: list[str], perplexity_task: str | None, protocols: list[str],
               presses: list[str], kvpress: bool) -> tuple[list[Unit], list[Unit]]:
    """Our units and kvpress's, most telling first, so an interrupted run has the core of the table.

    Ours: the full model, then per target (in the order given) the query-agnostic rows of every method
    (perplexity, then passkey, longest prompts first), SnapKV's passkey in both protocols side by side
    (the method the protocol changes); last the question-aware rows of the methods whose kept keys do
    not depend on the question (full, static windows, StreamingLLM). kvpress: perplexity of the uncompressed
    model (a cheap protocol check), then per target every press, then its uncompressed passkey.
    """
    passkey_tasks = sorted(passkey_tasks, key=lambda task: -int(task.rsplit("_", 1)[1]))
    agnostic, aware = QUERY_AGNOSTIC in protocols, QUESTION_AWARE in protocols

    def agnostic_units(method: str, k: int | None) -> list[Unit]:
        tasks = ([perplexity_task] if perplexity_task else []) + (passkey_tasks if agnostic else [])
        return [Unit(OURS, method, k, task, QUERY_AGNOSTIC) for task in tasks]

    def aware_units(method: str, k: int | None) -> list[Unit]:
        return [Unit(OURS, method, k, task, QUESTION_AWARE) for task in passkey_tasks] if aware else []

    ours = agnostic_units(FULL, None)
    for k in groups:
        for method in OUR_METHODS:
            units = agnostic_units(method, k)
            if method == "snapkv":  # each passkey task in both protocols, side by side
                units = [unit for unit in units if unit.task == perplexity_task] + [
                    unit for task in passkey_tasks for unit in (units + aware_units(method, k)) if unit.task == task]
            ours += units
    ours += aware_units(FULL, None)
    ours += [unit for k in groups for method in OUR_METHODS if method != "snapkv" for unit in aware_units(method, k)]
    theirs: list[Unit] = []
    if kvpress:
        if perplexity_task:
            theirs.append(Unit(KVPRESS, KVPRESS_NONE, None, perplexity_task, QUERY_AGNOSTIC))
        for k in groups:
            for press in presses:
                tasks = ([perplexity_task] if perplexity_task else []) + passkey_tasks
                theirs += [Unit(KVPRESS, press, k, task, QUERY_AGNOSTIC) for task in tasks]
        theirs += [Unit(KVPRESS, KVPRESS_NONE, None, task, QUERY_AGNOSTIC) for task in passkey_tasks]
    return ours, theirs
