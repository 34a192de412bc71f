"""Collect the scorers' result records into one table (CSV + Markdown) and draw the ablation plots.

``python -m llava.eval.summarize --results-dir playground/data/eval/results --output-dir summary``
writes ``results.csv``, ``results.md``, ``accuracy_vs_tokens.png`` and one
``heads_<benchmark>.png`` heatmap (head strategy x head count, one panel per token budget) per
benchmark that has fine-head runs. A row is one configuration (method, tokens, heads, strategy,
dynamic selection), keyed by the configuration each run recorded (``config`` of the result record);
a record without one is its own "unrecorded" row, never vanilla. Two records for the same configuration
and benchmark are an error naming both files (one cannot silently replace the other). ``relative`` is
the mean over its benchmarks of score / vanilla score, in %. ``coverage_%`` is the lowest answered /
asked over the row's benchmarks; ``incomplete`` names the benchmarks under 100 %, and summarize then
exits with ``INCOMPLETE_EXIT_CODE`` after writing the table.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean
from typing import Any

from llava.eval.jsonl_io import exit_code_on_input_error
from llava.eval.results import COST_FIELDS, INCOMPLETE_EXIT_CODE, read_results

VANILLA = "vanilla"


@dataclass(frozen=True, order=True)
class RunConfig:
    """The identity of one row of the table."""

    method: str
    tokens: int | None
    heads: int | None
    strategy: str | None
    dynamic: bool
    params: str | None = None  # other method parameters, ``key=value, ...`` (e.g. an ablation's checkpoint)

    @classmethod
    def from_result(cls, result: dict[str, Any]) -> RunConfig:
        """The configuration a result record's run recorded (vanilla when no method; "unrecorded (...)" when
        the run recorded no configuration)."""
        config = result.get("config")
        if config is None:
            return cls(f"unrecorded ({result.get('answers_file')})", None, None, None, False)
        method = config.get("pruning_method") or VANILLA
        return cls(
            method=method,
            tokens=None if method == VANILLA else config.get("visual_token_num"),
            heads=config.get("H"),
            strategy=config.get("head_strategy"),
            dynamic=bool(config.get("dynamic_selection")),
            params=", ".join(f"{k}={v}" for k, v in sorted((config.get("other_params") or {}).items())) or None,
        )


@dataclass
class SummaryRow:
    """Scores per benchmark and mean costs of one configuration."""

    config: RunConfig
    scores: dict[str, float | None] = field(default_factory=dict)
    coverage: dict[str, float] = field(default_factory=dict)  # answered / asked per benchmark
    sources: dict[str, str] = field(default_factory=dict)  # record file per benchmark
    costs: dict[str, list[float]] = field(default_factory=dict)

    def mean_cost(self, name: str) -> float | None:
        """Mean of a cost field over this row's benchmarks (None when no benchmark recorded it)."""
        values = self.costs.get(name, [])
        return fmean(values) if values else None


def build_rows(results: Sequence[dict[str, Any]]) -> list[SummaryRow]:
    """One row per configuration, sorted with vanilla first."""
    rows: dict[RunConfig, SummaryRow] = {}
    for result in results:
        config = RunConfig.from_result(result)
        row = rows.setdefault(config, SummaryRow(config))
        benchmark, source = result["benchmark"], result.get("record_file", "?")
        if benchmark in row.sources:
            raise ValueError(
                f"two {benchmark} results for one configuration ({config}): {row.sources[benchmark]} and {source}; "
                "remove the stale one"
            )
        row.sources[benchmark] = source
        row.scores[benchmark] = result.get("score")
        covered = result.get("coverage")
        row.coverage[benchmark] = covered.get("fraction", 1.0) if covered else 1.0
        for name in COST_FIELDS:
            value = (result.get("cost") or {}).get(name)
            if value is not None:
                row.costs.setdefault(name, []).append(value)
    return sorted(rows.values(), key=lambda row: (row.config.method != VANILLA, _sort_key(row.config)))


def _sort_key(config: RunConfig) -> tuple:
    return (config.method, config.tokens or 0, config.heads or 0, config.strategy or "", config.dynamic, config.params or "")


def relative_score(row: SummaryRow, vanilla: SummaryRow | None) -> float | None:
    """Mean over shared scored benchmarks of ``100 * score / vanilla score``."""
    if vanilla is None:
        return None
    ratios = [
        100 * score / vanilla.scores[name]
        for name, score in row.scores.items()
        if score is not None and vanilla.scores.get(name)
    ]
    return fmean(ratios) if ratios else None


def table(rows: Sequence[SummaryRow]) -> tuple[list[str], list[list[Any]]]:
    """Header and cells of the summary table."""
    benchmarks = sorted({name for row in rows for name in row.scores})
    header = ["method", "tokens", "heads", "strategy", "dynamic", "params", *benchmarks, "relative_%", "coverage_%",
              "incomplete", *COST_FIELDS]
    vanilla = next((row for row in rows if row.config.method == VANILLA), None)
    cells = []
    for row in rows:
        config = row.config
        cells.append(
            [config.method, config.tokens, config.heads, config.strategy, config.dynamic, config.params]
            + [row.scores.get(name) for name in benchmarks]
            + [relative_score(row, vanilla), 100 * min(row.coverage.values()), " ".join(incomplete(row)) or None]
            + [row.mean_cost(name) for name in COST_FIELDS]
        )
    return header, cells


def incomplete(row: SummaryRow) -> list[str]:
    """Benchmarks of the row whose run left questions unanswered."""
    return sorted(name for name, fraction in row.coverage.items() if fraction < 1.0)


def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) >= 1e6 else f"{value:.2f}"
    return str(value)


def write_csv(path: Path, header: list[str], cells: list[list[Any]]) -> None:
    """The table as CSV (numbers unrounded, missing values empty)."""
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows([["" if value is None else value for value in row] for row in cells])


def markdown(header: list[str], cells: list[list[Any]]) -> str:
    """The table as GitHub Markdown (numbers rounded)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_format(value) for value in row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def plot_accuracy_vs_tokens(rows: Sequence[SummaryRow], path: Path) -> bool:
    """One panel per benchmark: score vs token budget, a line per method, vanilla dashed; False if empty."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benchmarks = sorted({name for row in rows for name, score in row.scores.items() if score is not None})
    if not benchmarks:
        return False
    columns = min(3, len(benchmarks))
    figure, axes = plt.subplots(
        math.ceil(len(benchmarks) / columns), columns, figsize=(5 * columns, 3.6 * math.ceil(len(benchmarks) / columns)),
        squeeze=False,
    )
    for axis, benchmark in zip(axes.flat, benchmarks, strict=False):
        by_method: dict[str, list[tuple[int, float]]] = {}  # a line per method (and other params)
        for row in rows:
            score = row.scores.get(benchmark)
            if score is None:
                continue
            if row.config.method == VANILLA:
                axis.axhline(score, linestyle="--", color="gray", label=VANILLA)
            elif row.config.tokens is not None and row.config.heads is None and not row.config.dynamic:
                label = row.config.method + (f" [{row.config.params}]" if row.config.params else "")
                by_method.setdefault(label, []).append((row.config.tokens, score))
        for method, points in sorted(by_method.items()):
            points.sort()
            axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
        axis.set_title(benchmark)
        axis.set_xlabel("visual tokens (equivalent)")
        axis.set_ylabel("score")
        axis.legend(fontsize="small")
    for axis in list(axes.flat)[len(benchmarks) :]:
        axis.set_visible(False)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def plot_head_heatmaps(rows: Sequence[SummaryRow], output_dir: Path) -> list[Path]:
    """Per benchmark: strategy x heads heatmaps of the score, one panel per token budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    head_rows = [row for row in rows if row.config.heads is not None and row.config.strategy is not None]
    written = []
    for benchmark in sorted({name for row in head_rows for name in row.scores}):
        scored = [row for row in head_rows if row.scores.get(benchmark) is not None]
        budgets = sorted({row.config.tokens for row in scored if row.config.tokens is not None})
        if not budgets:
            continue
        strategies = sorted({row.config.strategy for row in scored})
        heads = sorted({row.config.heads for row in scored})
        figure, axes = plt.subplots(1, len(budgets), figsize=(1.2 * len(heads) * len(budgets) + 3, 0.45 * len(strategies) + 2),
                                    squeeze=False)
        for axis, budget in zip(axes[0], budgets, strict=True):
            grid = [[math.nan] * len(heads) for _ in strategies]
            for row in scored:
                if row.config.tokens == budget:
                    grid[strategies.index(row.config.strategy)][heads.index(row.config.heads)] = row.scores[benchmark]
            image = axis.imshow(grid, aspect="auto", cmap="viridis")
            axis.set_xticks(range(len(heads)), [str(h) for h in heads])
            axis.set_yticks(range(len(strategies)), strategies)
            axis.set_xlabel("heads")
            axis.set_title(f"{benchmark}, {budget} tokens")
            figure.colorbar(image, ax=axis)
        figure.tight_layout()
        path = output_dir / f"heads_{benchmark}.png"
        figure.savefig(path, dpi=120)
        plt.close(figure)
        written.append(path)
    return written


@exit_code_on_input_error
def main(argv: Sequence[str] | None = None) -> int:
    """Command line: summarise every result record under a folder."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", default="playground/data/eval/results")
    parser.add_argument("--output-dir", default="playground/data/eval/summary")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    results = read_results(args.results_dir)
    if not results:
        print(f"error: no result records under {args.results_dir}", file=sys.stderr)
        return 1
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    try:
        rows = build_rows(results)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    header, cells = table(rows)
    write_csv(output_dir / "results.csv", header, cells)
    (output_dir / "results.md").write_text(markdown(header, cells), encoding="utf-8")
    print(markdown(header, cells))
    if not args.no_plots:
        plot_accuracy_vs_tokens(rows, output_dir / "accuracy_vs_tokens.png")
        plot_head_heatmaps(rows, output_dir)
    print(f"wrote {len(rows)} rows to {output_dir}")
    unfinished = [(row.config, name) for row in rows for name in incomplete(row)]
    if unfinished:
        print(f"error: {len(unfinished)} result(s) are incomplete (column 'incomplete'); re-run them", file=sys.stderr)
        return INCOMPLETE_EXIT_CODE
    return 0


if __name__ == "__main__":
    sys.exit(main())
