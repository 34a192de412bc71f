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
