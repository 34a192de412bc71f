"""Collect the scorers' result records into one table (CSV + Markdown) and draw the ablation plots.

``python -m llava.eval.summarize --results-dir playground/data/eval/results --output-dir summary``
writes ``results.csv``, ``results.md``, ``accuracy_vs_tokens.png``, ``pareto.png`` (accuracy against
prefill FLOPs and against measured prefill ms, each method its own marker, the Pareto front dotted) and one
``heads_<benchmark>.png`` heatmap (head strategy x head count, one panel per token budget, values in the
cells) per benchmark that has fine-head runs. A row is one configuration (method, tokens, heads, strategy,
dynamic selection), keyed by the configuration each run recorded (``config`` of the result record);
a record without one is its own "unrecorded" row, never vanilla. Two records for the same configuration
and benchmark are an error naming both files (one cannot silently replace the other). ``relative`` is
the mean over its benchmarks of score / vanilla score, in %. ``coverage_%`` is the lowest answered /
asked over the row's benchmarks; ``incomplete`` names the benchmarks under 100 %, and summarize then
exits with ``INCOMPLETE_EXIT_CODE`` after writing the table. Costs: mean equivalent tokens and FLOPs over the
row's benchmarks; ``prefill_ms`` the median of the benchmarks' median prefill times (one per question, so a
stall under load moves it little), ``prefill_ms_iqr`` likewise of their interquartile ranges.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean, median
from typing import Any

from llava.eval.jsonl_io import exit_code_on_input_error
from llava.eval.results import COST_FIELDS, INCOMPLETE_EXIT_CODE, TIMING_FIELDS, read_results

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

    def cost(self, name: str) -> float | None:
        """A cost field over this row's benchmarks (None when no benchmark recorded it): the mean of a computed
        one, the median of a timing (``prefill_ms`` and its spread ``prefill_ms_iqr``)."""
        values = self.costs.get(name, [])
        if not values:
            return None
        return median(values) if name.removesuffix("_iqr") in TIMING_FIELDS else fmean(values)


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
            + [row.cost(name) for name in COST_FIELDS]
        )
    return header, cells


def incomplete(row: SummaryRow) -> list[str]:
    """Benchmarks of the row whose run left questions unanswered."""
    return sorted(name for name, fraction in row.coverage.items() if fraction < 1.0)


def _format(value: Any) -> str:
    """A table cell: integers (also a whole float read back from the CSV, e.g. tokens 64.0) without decimals,
    large numbers in 4 significant digits, others with 2 decimals."""
    if value is None:
        return ""
    if isinstance(value, float):
        if abs(value) >= 1e6:
            return f"{value:.4g}"
        return str(int(value)) if value.is_integer() else f"{value:.2f}"
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


def _pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy_vs_tokens(rows: Sequence[SummaryRow], path: Path) -> bool:
    """One panel per benchmark: score vs token budget, a line per method, vanilla dashed; False if empty."""
    plt = _pyplot()
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


def _annotate_cells(axis: Any, grid: list[list[float]], low: float, high: float) -> None:
    """Write each cell's value in it, dark on light cells and light on dark ones (blank for a missing run)."""
    middle = (low + high) / 2
    for y, values in enumerate(grid):
        for x, value in enumerate(values):
            if not math.isnan(value):
                axis.text(x, y, f"{value:.3g}", ha="center", va="center", fontsize=9,
                          color="black" if value >= middle else "white")


def plot_head_heatmaps(rows: Sequence[SummaryRow], output_dir: Path) -> list[Path]:
    """Per benchmark: strategy x heads heatmaps of the score, one panel per token budget, one colour scale
    for all panels, each cell's score written in it."""
    plt = _pyplot()
    head_rows = [row for row in rows if row.config.heads is not None and row.config.strategy is not None]
    written = []
    for benchmark in sorted({name for row in head_rows for name in row.scores}):
        scored = [row for row in head_rows if row.scores.get(benchmark) is not None]
        budgets = sorted({row.config.tokens for row in scored if row.config.tokens is not None})
        if not budgets:
            continue
        strategies = sorted({row.config.strategy for row in scored})
        heads = sorted({row.config.heads for row in scored})
        scores = [row.scores[benchmark] for row in scored]
        low, high = min(scores), max(scores)
        panel_width = max(3.0, 0.8 * len(heads) + 2.2)  # room for the strategy names even with one column
        figure, axes = plt.subplots(1, len(budgets), figsize=(panel_width * len(budgets) + 1.2, 0.45 * len(strategies) + 1.8),
                                    squeeze=False, sharey=True)
        for axis, budget in zip(axes[0], budgets, strict=True):
            grid = [[math.nan] * len(heads) for _ in strategies]
            for row in scored:
                if row.config.tokens == budget:
                    grid[strategies.index(row.config.strategy)][heads.index(row.config.heads)] = row.scores[benchmark]
            image = axis.imshow(grid, aspect="auto", cmap="viridis", vmin=low, vmax=high if high > low else low + 1e-9)
            _annotate_cells(axis, grid, low, high)
            axis.set_xticks(range(len(heads)), [str(h) for h in heads])
            axis.set_yticks(range(len(strategies)), strategies, fontsize=8)  # shown on the first panel only
            axis.set_xlabel("heads selected per layer")
            axis.set_title(f"{benchmark}, {budget} tokens", fontsize=10)
        figure.colorbar(image, ax=list(axes[0]), label=f"{benchmark} score")
        path = output_dir / f"heads_{benchmark}.png"
        figure.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(figure)
        written.append(path)
    return written


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")
PARETO_COSTS = (("flops", "prefill FLOPs per question (mean)", True), ("prefill_ms", "measured prefill, ms (median)", False))


def row_accuracy(row: SummaryRow, vanilla: SummaryRow | None) -> float | None:
    """A row's one accuracy number: its score relative to vanilla (%), or without vanilla its mean score."""
    if vanilla is not None:
        return relative_score(row, vanilla)
    scores = [score for score in row.scores.values() if score is not None]
    return fmean(scores) if scores else None


def series_label(config: RunConfig) -> str:
    """The series a row is drawn in: its method (and other parameters); budgets and heads label the points."""
    return config.method + (" (dynamic)" if config.dynamic else "") + (f" [{config.params}]" if config.params else "")


def point_label(config: RunConfig) -> str:
    """The text beside a point: its budget, head count and strategy (empty for vanilla)."""
    parts = [f"t{config.tokens}" if config.tokens is not None else "", f"h{config.heads}" if config.heads else "",
             config.strategy or ""]
    return " ".join(part for part in parts if part)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both cost (lower) and accuracy (higher), by cost."""
    front: list[tuple[float, float]] = []
    for cost, accuracy in sorted(points, key=lambda point: (point[0], -point[1])):
        if not front or accuracy > front[-1][1]:
            front.append((cost, accuracy))
    return front


def plot_pareto(rows: Sequence[SummaryRow], path: Path) -> bool:
    """Accuracy against prefill FLOPs and against measured prefill time, one panel each: a hollow marker of
    its own shape and size per method (coinciding points stay visible, nested), each point labelled with
    its budget / heads, the Pareto front dotted; False when no row has an accuracy and a cost."""
    plt = _pyplot()
    vanilla = next((row for row in rows if row.config.method == VANILLA), None)
    series: dict[str, list[tuple[SummaryRow, float]]] = {}
    for row in rows:
        accuracy = row_accuracy(row, vanilla)
        if accuracy is not None:
            series.setdefault(series_label(row.config), []).append((row, accuracy))
    if not any(row.cost(name) is not None for members in series.values() for row, _ in members for name, _, _ in PARETO_COSTS):
        return False
    figure, axes = plt.subplots(1, len(PARETO_COSTS), figsize=(7 * len(PARETO_COSTS), 5.5), squeeze=False)
    for axis, (cost_name, label, logarithmic) in zip(axes[0], PARETO_COSTS, strict=True):
        points = []
        for index, (name, members) in enumerate(sorted(series.items())):
            drawn = [(row.cost(cost_name), accuracy, row) for row, accuracy in members if row.cost(cost_name) is not None]
            if not drawn:
                continue
            axis.scatter([x for x, _, _ in drawn], [y for _, y, _ in drawn], marker=MARKERS[index % len(MARKERS)],
                         s=150 - 90 * index / max(1, len(series) - 1), facecolors="none", edgecolors=f"C{index % 10}",
                         linewidths=1.4, label=name)
            for x, y, row in drawn:
                axis.annotate(point_label(row.config), (x, y), xytext=(5, 3), textcoords="offset points", fontsize=6,
                              color=f"C{index % 10}")
            points += [(x, y) for x, y, _ in drawn]
        front = pareto_front(points)
        if len(front) > 1:
            axis.step([x for x, _ in front], [y for _, y in front], where="post", color="grey", linestyle=":",
                      label="Pareto front")
        if logarithmic:
            axis.set_xscale("log")
        axis.set_xlabel(label)
        axis.set_ylabel("score relative to vanilla (%)" if vanilla is not None else "mean score")
        axis.grid(alpha=0.3)
    handles = {text: handle for axis in axes[0] for handle, text in zip(*axis.get_legend_handles_labels(), strict=True)}
    figure.legend(list(handles.values()), list(handles), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return True


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
        plot_pareto(rows, output_dir / "pareto.png")
        plot_head_heatmaps(rows, output_dir)
    print(f"wrote {len(rows)} rows to {output_dir}")
    unfinished = [(row.config, name) for row in rows for name in incomplete(row)]
    if unfinished:
        print(f"error: {len(unfinished)} result(s) are incomplete (column 'incomplete'); re-run them", file=sys.stderr)
        return INCOMPLETE_EXIT_CODE
    return 0


if __name__ == "__main__":
    sys.exit(main())
