"""Summary table and plots from hand-made result records."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from llava.eval import summarize


def _record(root: Path, name: str, benchmark: str, score: float, method=None, tokens=None, heads=None,
            strategy=None, flops=None, other_params=None) -> None:
    record = {
        "benchmark": benchmark,
        "score": score,
        "config": {"pruning_method": method, "visual_token_num": tokens, "H": heads, "head_strategy": strategy,
                   "dynamic_selection": False, "other_params": other_params},
        "cost": {"equivalent_tokens": tokens or 576, "flops": flops, "prefill_ms": None},
    }
    path = root / name / f"{benchmark}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


def test_table_relative_scores_and_plots(tmp_path: Path) -> None:
    results = tmp_path / "results"
    _record(results, "vanilla", "pope", 80.0, flops=100.0)
    _record(results, "vanilla", "gqa", 60.0, flops=300.0)
    _record(results, "fastv_64", "pope", 40.0, "fastv", 64, flops=10.0)
    _record(results, "fastv_64", "gqa", 30.0, "fastv", 64, flops=30.0)
    _record(results, "fastv_128", "pope", 60.0, "fastv", 128)
    for heads, strategy, score in [(8, "sparsity", 70.0), (16, "sparsity", 72.0), (8, "entropy", 65.0)]:
        _record(results, f"fh_{heads}_{strategy}", "pope", score, "fastv_fine_head", 128, heads, strategy)
    output = tmp_path / "summary"
    assert summarize.main(["--results-dir", str(results), "--output-dir", str(output)]) == 0

    with (output / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["method"] for row in rows[:3]] == ["vanilla", "fastv", "fastv"]
    assert float(rows[0]["relative_%"]) == pytest.approx(100.0)
    fastv_64 = next(row for row in rows if row["method"] == "fastv" and row["tokens"] == "64")
    assert float(fastv_64["relative_%"]) == pytest.approx(50.0)
    assert float(fastv_64["flops"]) == pytest.approx(20.0)
    assert rows[0]["flops"] and float(rows[0]["flops"]) == pytest.approx(200.0)
    assert len(rows) == 6
    assert (output / "results.md").read_text().startswith("| method | tokens |")
    for image in ("accuracy_vs_tokens.png", "heads_pope.png"):
        assert (output / image).stat().st_size > 1000


def test_runs_differing_only_in_other_params_are_rows_of_their_own(tmp_path: Path) -> None:
    """An ablation's checkpoint (--method-param pruner_checkpoint=...) names its row, as in the learned-pruner runs."""
    results = tmp_path / "results"
    _record(results, "learned_t64", "gqa", 70.0, "learned", 64)
    _record(results, "learned_t64_residual_off", "gqa", 60.0, "learned", 64, other_params={"pruner_checkpoint": "a/b.pt"})
    assert summarize.main(["--results-dir", str(results), "--output-dir", str(tmp_path / "summary")]) == 0
    with (tmp_path / "summary" / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["params"], row["gqa"]) for row in rows] == [("", "70.0"), ("pruner_checkpoint=a/b.pt", "60.0")]


def test_no_results_is_an_error(tmp_path: Path, capsys) -> None:
    assert summarize.main(["--results-dir", str(tmp_path), "--output-dir", str(tmp_path / "o")]) == 1
    assert "no result records" in capsys.readouterr().err


def test_whole_numbers_print_without_decimals_others_with_two() -> None:
    """The report reads the CSV back as floats: tokens 64.0 must print as 64, not 64.00 (issue 34)."""
    assert [summarize._format(value) for value in (64.0, 64, 0.5, 12.345, 2.5e9, None)] == ["64", "64", "0.50", "12.35",
                                                                                           "2.5e+09", ""]


def test_prefill_time_is_a_median_with_its_spread_and_other_costs_means() -> None:
    from llava.eval.results import answers_cost

    times = [10.0, 11.0, 12.0, 13.0, 10_699.0]  # one stall under load
    answers = [{"metadata": {"equivalent_tokens": 64, "flops": 2.0 * i, "prefill_ms": ms}} for i, ms in enumerate(times)]
    cost = answers_cost(answers)
    assert cost["prefill_ms"] == 12.0 and cost["prefill_ms_iqr"] == pytest.approx(2.0) and cost["flops"] == 4.0
    assert list(cost)[-1] == "prefill_ms" and answers_cost([])["prefill_ms_iqr"] is None
    row = summarize.SummaryRow(summarize.RunConfig("fastv", 64, None, None, False),
                               costs={"prefill_ms": [10.0, 12.0, 900.0], "flops": [1.0, 2.0, 6.0]})
    assert row.cost("prefill_ms") == 12.0 and row.cost("flops") == 3.0


def test_pareto_front_and_plot_keep_coinciding_methods_apart(tmp_path: Path) -> None:
    assert summarize.pareto_front([(1.0, 50.0), (2.0, 40.0), (2.0, 70.0), (3.0, 70.0), (4.0, 90.0)]) == [
        (1.0, 50.0), (2.0, 70.0), (4.0, 90.0)]
    results = tmp_path / "results"
    _record(results, "vanilla", "pope", 80.0, flops=100.0)
    for method in ("fastv", "random", "pdrop"):  # the same cost and score: three markers on one spot
        _record(results, f"{method}_64", "pope", 40.0, method, 64, flops=10.0)
    rows = summarize.build_rows(summarize.read_results(results))
    assert summarize.series_label(rows[1].config) == "fastv" and summarize.point_label(rows[1].config) == "t64"
    assert summarize.plot_pareto(rows, tmp_path / "pareto.png")
    assert (tmp_path / "pareto.png").stat().st_size > 1000
    assert summarize.point_label(summarize.RunConfig("fastv_fine_head", 64, 2, "sum", False)) == "t64 h2 sum"


def test_head_heatmap_with_one_head_count_has_values_in_its_cells(tmp_path: Path, monkeypatch) -> None:
    results = tmp_path / "results"
    for strategy, score in (("sum", 0.61), ("entropy", 0.57)):
        _record(results, f"fh_{strategy}", "pope", score, "fastv_fine_head", 64, 1, strategy)
    written = []
    import matplotlib.axes

    original = matplotlib.axes.Axes.text
    monkeypatch.setattr(matplotlib.axes.Axes, "text", lambda self, *a, **k: written.append(a[2]) or original(self, *a, **k))
    paths = summarize.plot_head_heatmaps(summarize.build_rows(summarize.read_results(results)), tmp_path)
    assert [path.name for path in paths] == ["heads_pope.png"] and sorted(written) == ["0.57", "0.61"]
