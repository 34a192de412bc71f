"""Bootstrap intervals (llava.eval.intervals) on samples with known answers, and their use in the summary."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from llava.eval import intervals, summarize
from llava.eval.scorers.pope import score_pope
from llava.eval.scorers.scienceqa import first_option_letter, score_scienceqa


def test_interval_of_a_mean_matches_the_normal_approximation():
    """60 of 100 correct: the bootstrap interval of the accuracy is about 60 +- 1.96 sqrt(.6 .4 / 100) = +-9.6."""
    values = [1.0] * 60 + [0.0] * 40
    mean, low, high = intervals.bootstrap_mean(values)
    assert mean == pytest.approx(0.6)
    assert low == pytest.approx(0.6 - 0.096, abs=0.02) and high == pytest.approx(0.6 + 0.096, abs=0.02)
    assert intervals.bootstrap_mean(values) == (mean, low, high)  # fixed seed: the same interval every time
    assert intervals.bootstrap_mean([1.0] * 30) == (1.0, 1.0, 1.0)  # no spread, no interval
    assert intervals.bootstrap_mean([]) is None


def test_percentiles_leave_out_nan_and_resamples_stay_in_their_stratum():
    assert intervals.percentile_interval(np.r_[np.arange(101.0), np.nan]) == pytest.approx((2.5, 97.5))
    assert intervals.percentile_interval([np.nan]) is None
    strata = ["a"] * 3 + ["b"] * 5
    index = intervals.resample_indices(strata, resamples=50)
    assert index.shape == (50, 8) and set(index[:, :3].ravel()) <= {0, 1, 2} and set(index[:, 3:].ravel()) <= {3, 4, 5, 6, 7}
    assert intervals.resample_indices(strata, resamples=50) is index  # the same question set: the same resamples (paired)


def test_point_estimates_are_the_scorers_numbers():
    labels = {f"q{i}": (split, label) for i, (split, label) in enumerate(
        [("random", "yes"), ("random", "no"), ("random", "yes"), ("popular", "no"), ("popular", "yes"), ("popular", "no")])}
    answers = [{"question_id": "q0", "text": "yes"}, {"question_id": "q1", "text": "yes"}, {"question_id": "q2", "text": "no"},
               {"question_id": "q3", "text": "no"}, {"question_id": "q4", "text": "yes"}]  # q5 unanswered
    metrics = score_pope(answers, labels)
    outcomes = intervals.Outcomes.from_per_question(metrics["per_question"])
    for metric in ("f1_mean", "accuracy_mean"):
        point, replicates = intervals.metric_replicates(outcomes, metric)
        assert point == pytest.approx(metrics[metric]) and replicates.shape == (intervals.RESAMPLES,)

    problems = {"a": {"choices": ["x", "y"], "answer": 0, "image": "i.png"}, "b": {"choices": ["x", "y"], "answer": 1, "image": "i.png"}}
    metrics = score_scienceqa(problems, ["a", "b"], [{"question_id": "a", "text": "A cat"}, {"question_id": "b", "text": "B"}])
    assert (metrics["img_accuracy"], metrics["first_letter_img_accuracy"]) == (50.0, 100.0)  # "A cat": strict no, first letter yes
    outcomes = intervals.Outcomes.from_per_question(metrics["per_question"])
    assert intervals.metric_replicates(outcomes, "first_letter_img_accuracy")[0] == 100.0
    assert first_option_letter("The answer is (C).", "ABCD") == "C" and first_option_letter("none", "ABCD") is None


def test_ranking_marks_only_differences_beyond_the_interval():
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 1, 1000)
    entries = [("close", 80.0, 80 + noise + rng.normal(0, 2, 1000)), ("best", 81.0, 81 + noise),
               ("far", 60.0, 60 + noise)]
    ranked = intervals.rank(entries)
    assert [r.label for r in ranked] == ["best", "close", "far"]
    assert not ranked[1].below_best and ranked[1].above_next and ranked[2].below_best
    assert ranked[0].to_best is None and ranked[2].to_next is None


def _result(root: Path, name: str, benchmark: str, correct: list[int], method=None, tokens=None, seed=None) -> None:
    per_question = {f"q{i}": {"correct": c} for i, c in enumerate(correct)}
    record = {"benchmark": benchmark, "primary_metric": "accuracy", "score": 100 * sum(correct) / len(correct),
              "metrics": {"accuracy": 100 * sum(correct) / len(correct), "per_question": per_question},
              "config": {"pruning_method": method, "visual_token_num": tokens, "H": None, "head_strategy": None,
                         "dynamic_selection": False, "other_params": None if seed is None else {"seed": seed}},
              "cost": {}}
    (root / name).mkdir(parents=True, exist_ok=True)
    (root / name / f"{benchmark}.json").write_text(json.dumps(record))


def test_summary_intervals_seed_means_and_ranks(tmp_path: Path):
    results = tmp_path / "results"
    _result(results, "vanilla", "gqa", [1] * 40)
    _result(results, "fastv_t64", "gqa", [1] * 20 + [0] * 20, "fastv", 64)
    for seed, hits in ((None, 10), (1, 14), (2, 12)):
        _result(results, f"random_t64_{seed}", "gqa", [1] * hits + [0] * (40 - hits), "random", 64, seed)
    assert summarize.main(["--results-dir", str(results), "--output-dir", str(tmp_path / "s"), "--no-plots"]) == 0
    with (tmp_path / "s" / "results.csv").open() as handle:
        rows = {(row["method"], row["params"]): row for row in csv.DictReader(handle)}
    fastv = rows["fastv", ""]
    assert float(fastv["gqa"]) == 50.0 and float(fastv["gqa_lo"]) < 50.0 < float(fastv["gqa_hi"])
    assert float(fastv["relative_lo"]) == pytest.approx(float(fastv["gqa_lo"]))  # vanilla scores 100 on every resample
    mean = rows["random", "mean over 3 seeds"]
    assert float(mean["gqa"]) == pytest.approx(100 * 12 / 40) and mean["seeds"] == "3"
    assert (float(mean["relative_seed_min"]), float(mean["relative_seed_max"])) == (25.0, 35.0)
    ranks = (tmp_path / "s" / "ranks.md").read_text()
    assert "fastv" in ranks and "random (seed mean)" in ranks and "[seed=1]" not in ranks  # the mean stands for its seeds
    shown = (tmp_path / "s" / "results.md").read_text()
    assert "| 50 [" in shown and "gqa_lo" not in shown
