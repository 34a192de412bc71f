"""Bootstrap 95 % intervals over questions: the one place every interval of the tables comes from.

Percentile bootstrap with a fixed seed. For a statistic ``s`` of ``n`` per-question outcomes
``x_1 .. x_n`` (an accuracy, POPE's mean F1, an evidence recall):

    draw B = 1000 index vectors  i_b = (i_b1 .. i_bn),  i_bj uniform on {1 .. n} with replacement
        (within each stratum when the statistic is a mean over strata: POPE's three splits keep their sizes);
    s*_b = s(x_{i_b1} .. x_{i_bn})                           for b = 1 .. B;
    interval = [ q_2.5(s*_1 .. s*_B),  q_97.5(s*_1 .. s*_B) ]   (numpy percentiles, linear interpolation).

**Paired.** The index vectors depend only on the question set (its strata) and the seed, so two runs on the
same questions are resampled with the same ``i_b``: the interval of ``rel = 100 * s_method / s_vanilla``
is the percentile interval of ``100 * s*_method,b / s*_vanilla,b``, that of a difference ``s_a - s_b`` the
one of ``s*_a,b - s*_b,b``; a difference is *beyond the interval* when its interval excludes 0. A mean over
runs (``random`` over its keep-set seeds) is resampled the same way: ``mean_k s*_k,b``.

The point estimate is the statistic on the questions as they are (the identity index), so it equals the
scorer's number exactly (``per_question`` of the scorers' metrics: ``llava.eval.scorers``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 1000
SEED = 0
LEVEL = 0.95


@functools.lru_cache(maxsize=64)
def _indices(strata: tuple[str, ...], resamples: int, seed: int) -> np.ndarray:
    labels = np.asarray(strata, dtype=object)
    rng = np.random.default_rng(seed)
    index = np.empty((resamples, len(strata)), dtype=np.int64)
    for stratum in sorted(set(strata)):
        positions = np.flatnonzero(labels == stratum)
        index[:, positions] = positions[rng.integers(0, len(positions), size=(resamples, len(positions)))]
    index.setflags(write=False)
    return index


def resample_indices(strata: Sequence[str] | int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """``[resamples, n]`` question indices, each row one bootstrap resample drawn with replacement within
    each stratum (``strata``: one label per question, or ``n`` for a single stratum). The same question set
    and seed always give the same matrix (so two runs on it are paired)."""
    strata = ("",) * strata if isinstance(strata, int) else tuple(strata)
    return _indices(strata, resamples, seed)


def percentile_interval(replicates: Sequence[float] | np.ndarray, level: float = LEVEL) -> tuple[float, float] | None:
    """``(q_low, q_high)`` percentiles of the bootstrap replicates for a two-sided ``level`` interval
    (NaN replicates, e.g. a ratio over a zero, left out); None when none is finite."""
    values = np.asarray(replicates, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_mean(values: Sequence[float], resamples: int = RESAMPLES, seed: int = SEED,
                   level: float = LEVEL) -> tuple[float, float, float] | None:
    """``(mean, low, high)``: the mean of ``values`` and its percentile-bootstrap interval; None when empty."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return None
    interval = percentile_interval(data[resample_indices(len(data), resamples, seed)].mean(axis=1), level)
    return float(data.mean()), *interval


@dataclass(frozen=True)
class Outcomes:
    """Per-question outcomes of one run on one benchmark, in question-id order: ``columns`` of numbers
    (``correct``, ``first_letter``, ``image``, ``label_yes``, ``predicted_yes``; 0 / 1, or a mean over
    runs) and the stratum of each question (POPE's split, else "")."""

    ids: tuple[str, ...]
    strata: tuple[str, ...]
    columns: Mapping[str, np.ndarray]

    @classmethod
    def from_per_question(cls, per_question: Mapping[str, Mapping]) -> Outcomes:
        """From a scorer's ``per_question`` (``{question id: {"correct", ...}}``)."""
        ids = tuple(sorted(str(key) for key in per_question))
        entries = [per_question[key] for key in ids]
        columns: dict[str, np.ndarray] = {}
        for name in ("correct", "first_letter", "image"):
            if entries and all(name in entry for entry in entries):
                columns[name] = np.array([float(entry[name]) for entry in entries])
        if entries and all("label" in entry and "prediction" in entry for entry in entries):
            columns["label_yes"] = np.array([float(entry["label"] == "yes") for entry in entries])
            columns["predicted_yes"] = np.array([float(entry["prediction"] == "yes") for entry in entries])
        return cls(ids, tuple(str(entry.get("split", "")) for entry in entries), columns)

    def index(self, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
        """The bootstrap index matrix of this question set (shared by every run on it: paired)."""
        return resample_indices(self.strata, resamples, seed)

    @property
    def identity(self) -> np.ndarray:
        """``[1, n]``: the questions as they are (the point estimate)."""
        return np.arange(len(self.ids))[None, :]


def _masked_mean(values: np.ndarray, mask: np.ndarray | None, index: np.ndarray) -> np.ndarray:
    if mask is None:
        return 100 * values[index].mean(axis=1)
    weights = mask[index]
    total = weights.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 100 * (values[index] * weights).sum(axis=1) / np.where(total > 0, total, 1), 0.0)


def _per_stratum(outcomes: Outcomes, index: np.ndarray, score: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """Mean over strata of ``score(index, in_stratum)`` (``in_stratum``: ``[B, n]`` bool of the drawn questions)."""
    strata = np.asarray(outcomes.strata, dtype=object)
    names = sorted(set(outcomes.strata))
    return np.mean([score(index, (strata == name)[index]) for name in names], axis=0)


def _f1(outcomes: Outcomes, index: np.ndarray, member: np.ndarray) -> np.ndarray:
    """F1 (%) of "yes" on the drawn questions of one stratum: ``2 TP / (2 TP + FP + FN)`` (0 without a TP), as
    ``llava.eval.scorers.pope.binary_metrics`` computes it (an unanswered question is a predicted "no")."""
    label, predicted = outcomes.columns["label_yes"][index], outcomes.columns["predicted_yes"][index]
    true_pos = (member * label * predicted).sum(axis=1)
    false_pos = (member * (1 - label) * predicted).sum(axis=1)
    false_neg = (member * label * (1 - predicted)).sum(axis=1)
    denominator = 2 * true_pos + false_pos + false_neg
    return np.where(true_pos > 0, 100 * 2 * true_pos / np.where(denominator > 0, denominator, 1), 0.0)


def _stratum_accuracy(outcomes: Outcomes, index: np.ndarray, member: np.ndarray) -> np.ndarray:
    count = member.sum(axis=1)
    return np.where(count > 0, 100 * (member * outcomes.columns["correct"][index]).sum(axis=1) / np.where(count > 0, count, 1), 0.0)


MASKED_MEANS = {  # metric: (column, mask column or None)
    "accuracy": ("correct", None),
    "img_accuracy": ("correct", "image"),
    "first_letter_accuracy": ("first_letter", None),
    "first_letter_img_accuracy": ("first_letter", "image"),
}
STRATIFIED = {"f1_mean": _f1, "accuracy_mean": _stratum_accuracy}


def supports(outcomes: Outcomes, metric: str) -> bool:
    """Whether ``statistic`` can compute ``metric`` from these outcomes."""
    if metric in MASKED_MEANS:
        column, mask = MASKED_MEANS[metric]
        return column in outcomes.columns and (mask is None or mask in outcomes.columns)
    if metric == "f1_mean":
        return {"label_yes", "predicted_yes"} <= set(outcomes.columns)
    return metric == "accuracy_mean" and "correct" in outcomes.columns


def statistic(outcomes: Outcomes, metric: str, index: np.ndarray) -> np.ndarray:
    """``[B]``: a scorer metric (in %) on each row of question indices ``index`` (``[B, n]``): a (masked)
    mean for ``accuracy`` / ``img_accuracy`` / ``first_letter_*``, the mean over strata (POPE's splits) of
    the F1 for ``f1_mean`` and of the accuracy for ``accuracy_mean``."""
    if not supports(outcomes, metric):
        raise ValueError(f"no per-question outcomes for {metric!r} (have {', '.join(outcomes.columns) or 'none'})")
    if metric in MASKED_MEANS:
        column, mask = MASKED_MEANS[metric]
        return _masked_mean(outcomes.columns[column], None if mask is None else outcomes.columns[mask], index)
    return _per_stratum(outcomes, index, functools.partial(STRATIFIED[metric], outcomes))


def metric_replicates(outcomes: Outcomes, metric: str, resamples: int = RESAMPLES, seed: int = SEED) -> tuple[float, np.ndarray]:
    """``(point estimate, [resamples] bootstrap replicates)`` of ``metric``."""
    return float(statistic(outcomes, metric, outcomes.identity)[0]), statistic(outcomes, metric, outcomes.index(resamples, seed))


def ratio_replicates(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``100 * numerator / denominator`` per replicate (NaN where the denominator is 0)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator != 0, 100 * numerator / np.where(denominator != 0, denominator, 1), np.nan)


def beyond_interval(interval: tuple[float, float] | None) -> bool:
    """A difference whose interval excludes 0."""
    return interval is not None and (interval[0] > 0 or interval[1] < 0)


@dataclass(frozen=True)
class Ranked:
    """One entry of a ranking: its label, point estimate and interval, and the paired differences to the
    best entry and to the next one down (``None`` for the best / the last)."""

    label: str
    point: float
    interval: tuple[float, float] | None
    to_best: float | None = None
    to_best_interval: tuple[float, float] | None = None
    to_next: float | None = None
    to_next_interval: tuple[float, float] | None = None

    @property
    def below_best(self) -> bool:
        """Its paired difference to the best excludes 0 (worse beyond the interval)."""
        return beyond_interval(self.to_best_interval)

    @property
    def above_next(self) -> bool:
        """Its paired difference to the next entry down excludes 0."""
        return beyond_interval(self.to_next_interval)


def rank(entries: Sequence[tuple[str, float, np.ndarray]], level: float = LEVEL) -> list[Ranked]:
    """``entries`` (label, point estimate, bootstrap replicates on shared resamples) sorted by point
    estimate, best first, each with the paired-bootstrap interval of its difference to the best
    (``point - best``) and to the next one down (``point - next``)."""
    ordered = sorted(entries, key=lambda entry: -entry[1])
    ranked = []
    for position, (label, point, replicates) in enumerate(ordered):
        best_label, best_point, best_replicates = ordered[0]
        to_best = to_best_interval = to_next = to_next_interval = None
        if position > 0:
            to_best, to_best_interval = point - best_point, percentile_interval(replicates - best_replicates, level)
        if position + 1 < len(ordered):
            _, next_point, next_replicates = ordered[position + 1]
            to_next, to_next_interval = point - next_point, percentile_interval(replicates - next_replicates, level)
        ranked.append(Ranked(label, point, percentile_interval(replicates, level), to_best, to_best_interval, to_next,
                             to_next_interval))
    return ranked
