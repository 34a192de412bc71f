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

**Intervals** (``llava.eval.intervals``: percentile bootstrap over questions, 1000 resamples, seed 0), where
the scorers recorded per-question outcomes (``metrics.per_question``): ``<benchmark>_lo`` / ``_hi`` beside each
score, the same for the secondary metrics ``SECONDARY_METRICS`` shown beside the primary one (POPE-style
accuracy beside F1: ``pope_acc``; ScienceQA first-letter accuracy beside the strict one: ``sqa_first_letter``),
and ``relative_lo`` / ``_hi`` (paired: each resample scores the row and vanilla on the same questions).
**Seeds**: rows that differ only in a ``seed`` parameter (``random``'s keep sets) get a row of their own,
``mean over N seeds``: scores, relative and intervals are the means over the seeds (resampled together),
``seeds`` their number and ``relative_seed_min`` / ``_max`` the spread. **Evidence recall** (result records
with ``evidence``, ``llava.eval.evidence``): ``evidence_recall_%`` of the first pruning stage (at
``evidence_layer``) with its interval, ``evidence_chance_%`` (kept / total: a random keep set's expectation)
and every stage in ``evidence_stages`` (``L<layer> recall/chance``). ``ranks.csv`` / ``ranks.md``: per
budget, the rows by relative score with the paired-bootstrap difference to the best and to the next one
(``*``: the difference's interval excludes 0).
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

import numpy as np

from llava.eval import intervals
from llava.eval.evidence import recall_by_stage
from llava.eval.jsonl_io import exit_code_on_input_error
from llava.eval.results import COST_FIELDS, INCOMPLETE_EXIT_CODE, TIMING_FIELDS, read_results

VANILLA = "vanilla"
SECONDARY_METRICS = {"pope": (("acc", "accuracy_mean"),), "sqa": (("first_letter", "first_letter_img_accuracy"),)}
"""Per benchmark, ``(column suffix, metric)`` shown beside the primary score (from the result's ``metrics``)."""
SEED_MEAN = "mean over"  # the params of a seed-mean row: "mean over 5 seeds"


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
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # the scorer's metrics per benchmark
    primary: dict[str, str | None] = field(default_factory=dict)  # the score's metric per benchmark
    outcomes: dict[str, intervals.Outcomes] = field(default_factory=dict)  # per-question outcomes per benchmark
    evidence: dict[str, list] = field(default_factory=dict)  # "<benchmark>/<question id>": evidence per stage
    seeds: list[SummaryRow] = field(default_factory=list)  # a seed-mean row's rows, one per seed
    seed_member: bool = False  # one seed of a seed-mean row (which stands for it in the ranks and plots)

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
        metrics = dict(result.get("metrics") or {})
        per_question = metrics.pop("per_question", None)
        row.metrics[benchmark], row.primary[benchmark] = metrics, result.get("primary_metric")
        if per_question:
            row.outcomes[benchmark] = intervals.Outcomes.from_per_question(per_question)
        for qid, stages in ((result.get("evidence") or {}).get("questions") or {}).items():
            row.evidence[f"{benchmark}/{qid}"] = stages
    ordered = sorted(rows.values(), key=lambda row: (row.config.method != VANILLA, _sort_key(row.config)))
    return with_seed_means(ordered)


def _sort_key(config: RunConfig) -> tuple:
    return (config.method, config.tokens or 0, config.heads or 0, config.strategy or "", config.dynamic, config.params or "")


def split_seed(params: str | None) -> tuple[str | None, str | None]:
    """``(params without the seed, the seed)`` of a row's params string (``"a=1, seed=3"`` -> ``("a=1", "3")``)."""
    parts = [part for part in (params or "").split(", ") if part]
    seeds = [part.removeprefix("seed=") for part in parts if part.startswith("seed=")]
    rest = ", ".join(part for part in parts if not part.startswith("seed="))
    return rest or None, seeds[0] if seeds else None


def with_seed_means(rows: Sequence[SummaryRow]) -> list[SummaryRow]:
    """``rows`` with, after each group of two or more rows that differ only in their ``seed`` parameter (one
    may leave it at the method's default), a seed-mean row: mean scores and metrics over the seeds, pooled
    costs and evidence, the lowest coverage; its ``seeds`` are the group's rows (marked ``seed_member``)."""
    groups: dict[tuple, list[SummaryRow]] = {}
    for row in rows:
        config = row.config
        rest, _ = split_seed(config.params)
        groups.setdefault((config.method, config.tokens, config.heads, config.strategy, config.dynamic, rest), []).append(row)
    means = {}
    for (method, tokens, heads, strategy, dynamic, rest), members in groups.items():
        if len(members) < 2 or not any(split_seed(m.config.params)[1] is not None for m in members) or method == VANILLA:
            continue
        label = f"{SEED_MEAN} {len(members)} seeds" + (f", {rest}" if rest else "")
        mean = SummaryRow(RunConfig(method, tokens, heads, strategy, dynamic, label), seeds=members)
        for benchmark in sorted({name for m in members for name in m.scores}):
            scores = [m.scores.get(benchmark) for m in members]
            mean.scores[benchmark] = fmean(scores) if None not in scores else None
            mean.coverage[benchmark] = min(m.coverage.get(benchmark, 0.0) for m in members)
            mean.primary[benchmark] = members[0].primary.get(benchmark)
            shared = set.intersection(*(set(m.metrics.get(benchmark, {})) for m in members))
            mean.metrics[benchmark] = {name: fmean(m.metrics[benchmark][name] for m in members) for name in shared
                                       if all(_is_number(m.metrics[benchmark][name]) for m in members)}
        for member in members:
            member.seed_member = True
            for name, values in member.costs.items():
                mean.costs.setdefault(name, []).extend(values)
            seed = split_seed(member.config.params)[1] or "default"
            mean.evidence.update({f"seed {seed}/{key}": stages for key, stages in member.evidence.items()})
        means[id(members[-1])] = mean
    ordered = []
    for row in rows:
        ordered.append(row)
        if id(row) in means:
            ordered.append(means[id(row)])
    return ordered


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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


Replicates = tuple[float, np.ndarray]  # (point estimate, bootstrap replicates on the question set's resamples)


class Bootstrap:
    """Bootstrap replicates of the rows' scores, metrics and relative scores (``llava.eval.intervals``), each
    computed once; every row on the same questions is resampled alike, so differences and ratios are paired."""

    def __init__(self, rows: Sequence[SummaryRow]) -> None:
        self.vanilla = next((row for row in rows if row.config.method == VANILLA), None)
        self._cache: dict[tuple, Replicates | None] = {}

    def metric(self, row: SummaryRow, benchmark: str, metric: str | None) -> Replicates | None:
        """A metric of a row on a benchmark (a seed-mean row: the mean over its seeds), or None without
        per-question outcomes for it."""
        key = (id(row), benchmark, metric)
        if key not in self._cache:
            self._cache[key] = self._metric(row, benchmark, metric)
        return self._cache[key]

    def _metric(self, row: SummaryRow, benchmark: str, metric: str | None) -> Replicates | None:
        if metric is None:
            return None
        if row.seeds:
            found = [self.metric(member, benchmark, metric) for member in row.seeds]
            ids = {member.outcomes[benchmark].ids if benchmark in member.outcomes else None for member in row.seeds}
            if None in found or len(ids) != 1:
                return None
            return fmean(point for point, _ in found), np.mean([replicates for _, replicates in found], axis=0)
        outcomes = row.outcomes.get(benchmark)
        if outcomes is None or not intervals.supports(outcomes, metric):
            return None
        return intervals.metric_replicates(outcomes, metric)

    def score(self, row: SummaryRow, benchmark: str) -> Replicates | None:
        return self.metric(row, benchmark, row.primary.get(benchmark) or (row.seeds[0].primary.get(benchmark) if row.seeds else None))

    def relative(self, row: SummaryRow) -> np.ndarray | None:
        """Replicates of ``relative_score``: per resample the mean over benchmarks of ``100 * score / vanilla
        score`` on the same questions; None when a benchmark lacks outcomes or has other questions."""
        key = (id(row), "relative")
        if key in self._cache:
            return self._cache[key]
        vanilla, ratios = self.vanilla, []
        names = [name for name, score in row.scores.items() if score is not None and vanilla and vanilla.scores.get(name)]
        for name in names:
            own, base = self.score(row, name), self.score(vanilla, name)
            if own is None or base is None or _question_ids(row, name) != _question_ids(vanilla, name):
                ratios = []
                break
            ratios.append(intervals.ratio_replicates(own[1], base[1]))
        self._cache[key] = np.mean(ratios, axis=0) if ratios else None
        return self._cache[key]


def _question_ids(row: SummaryRow, benchmark: str) -> tuple[str, ...] | None:
    source = row.seeds[0] if row.seeds else row
    outcomes = source.outcomes.get(benchmark)
    return None if outcomes is None else outcomes.ids


def _interval(replicates: Replicates | np.ndarray | None) -> tuple[float | None, float | None]:
    if replicates is None:
        return None, None
    found = intervals.percentile_interval(replicates[1] if isinstance(replicates, tuple) else replicates)
    return found if found is not None else (None, None)


def evidence_cells(row: SummaryRow) -> list[Any]:
    """``evidence_layer``, ``evidence_recall_%`` with ``_lo`` / ``_hi``, ``evidence_chance_%`` (first pruning
    stage) and ``evidence_stages`` (``L<layer> recall/chance`` per stage) of a row; blanks without evidence."""
    stages = recall_by_stage(row.evidence) if row.evidence else []
    if not stages:
        return [None] * len(EVIDENCE_COLUMNS)
    first = stages[0]
    listing = "; ".join(f"L{stage['layer']} {stage['recall']:.1f}/{stage['chance']:.1f}" for stage in stages)
    return [first["layer"], first["recall"], first["recall_low"], first["recall_high"], first["chance"], listing]


EVIDENCE_COLUMNS = ("evidence_layer", "evidence_recall_%", "evidence_recall_lo", "evidence_recall_hi", "evidence_chance_%",
                    "evidence_stages")


def table(rows: Sequence[SummaryRow]) -> tuple[list[str], list[list[Any]]]:
    """Header and cells of the summary table (interval, secondary-metric, seed and evidence columns only
    where some row has what they show)."""
    benchmarks = sorted({name for row in rows for name in row.scores})
    boot = Bootstrap(rows)
    vanilla = boot.vanilla
    with_intervals = {name for name in benchmarks if any(boot.score(row, name) is not None for row in rows)}
    secondary = {name: [(suffix, metric) for suffix, metric in SECONDARY_METRICS.get(name, ())
                        if any(metric in row.metrics.get(name, {}) for row in rows)] for name in benchmarks}
    relative_intervals = any(boot.relative(row) is not None for row in rows)
    seeded = any(row.seeds for row in rows)
    with_evidence = any(row.evidence for row in rows)

    header = ["method", "tokens", "heads", "strategy", "dynamic", "params"]
    for name in benchmarks:
        header += [name] + ([f"{name}_lo", f"{name}_hi"] if name in with_intervals else [])
        for suffix, _ in secondary[name]:
            header += [f"{name}_{suffix}"] + ([f"{name}_{suffix}_lo", f"{name}_{suffix}_hi"] if name in with_intervals else [])
    header += ["relative_%"] + (["relative_lo", "relative_hi"] if relative_intervals else [])
    header += ["seeds", "relative_seed_min", "relative_seed_max"] if seeded else []
    header += list(EVIDENCE_COLUMNS) if with_evidence else []
    header += ["coverage_%", "incomplete", *COST_FIELDS]

    cells = []
    for row in rows:
        config = row.config
        line = [config.method, config.tokens, config.heads, config.strategy, config.dynamic, config.params]
        for name in benchmarks:
            line.append(row.scores.get(name))
            if name in with_intervals:
                line += _interval(boot.score(row, name))
            for _, metric in secondary[name]:
                line.append(row.metrics.get(name, {}).get(metric))
                if name in with_intervals:
                    line += _interval(boot.metric(row, name, metric))
        line.append(relative_score(row, vanilla))
        if relative_intervals:
            line += _interval(boot.relative(row))
        if seeded:
            spread = [relative_score(member, vanilla) for member in row.seeds]
            spread = [value for value in spread if value is not None]
            line += [len(row.seeds) or None, min(spread, default=None), max(spread, default=None)]
        if with_evidence:
            line += evidence_cells(row)
        line += [100 * min(row.coverage.values()), " ".join(incomplete(row)) or None]
        line += [row.cost(name) for name in COST_FIELDS]
        cells.append(line)
    return header, cells


def with_intervals_shown(header: Sequence[str], cells: Sequence[Sequence[Any]]) -> tuple[list[str], list[list[Any]]]:
    """The table for reading: each ``X`` with ``X_lo`` / ``X_hi`` columns becomes one ``X [95% CI]`` column
    (``"90.8 [85.0, 95.8]"``); ``relative_%`` keeps its name. Cells read back from the CSV (``""``) count as
    missing."""
    names = list(header)
    pairs = {}
    for index, name in enumerate(names):
        base = name.removesuffix("_%")
        if f"{base}_lo" in names and f"{base}_hi" in names:
            pairs[index] = (names.index(f"{base}_lo"), names.index(f"{base}_hi"))
    dropped = {position for pair in pairs.values() for position in pair}
    shown_header = [name for index, name in enumerate(names) if index not in dropped]
    shown = []
    for row in cells:
        line = []
        for index, value in enumerate(row):
            if index in dropped:
                continue
            value = None if value == "" else value
            if index in pairs and value is not None:
                low, high = (None if row[i] == "" else row[i] for i in pairs[index])
                if low is not None and high is not None:
                    value = f"{_format(value)} [{_format(low)}, {_format(high)}]"
            line.append(value)
        shown.append(line)
    return shown_header, shown


def row_label(config: RunConfig) -> str:
    """A row's name in the rank table: its series and its heads / strategy (the budget is the table's group)."""
    parts = [series_label(config), f"h{config.heads}" if config.heads else "", config.strategy or ""]
    return " ".join(part for part in parts if part)


RANK_HEADER = ["tokens", "rank", "configuration", "relative_%", "relative_lo", "relative_hi", "to_best", "to_best_lo",
               "to_best_hi", "below_best", "to_next", "to_next_lo", "to_next_hi", "above_next"]


def rank_table(rows: Sequence[SummaryRow]) -> tuple[list[str], list[list[Any]]]:
    """Per token budget, the rows by relative score, best first (a seed-mean row stands for its seeds), with
    the paired-bootstrap difference to the best and to the next one down and whether its 95 % interval
    excludes 0 (``below_best`` / ``above_next``). Rows without relative replicates are left out."""
    boot = Bootstrap(rows)
    cells = []
    for tokens in sorted({row.config.tokens for row in rows if row.config.tokens is not None}, reverse=True):
        entries = []
        for row in rows:
            if row.config.tokens != tokens or row.seed_member:
                continue
            replicates, point = boot.relative(row), relative_score(row, boot.vanilla)
            if replicates is not None and point is not None:
                entries.append((row_label(row.config), point, replicates))
        for position, ranked in enumerate(intervals.rank(entries), 1):
            cells.append([tokens, position, ranked.label, ranked.point, *(ranked.interval or (None, None)),
                          ranked.to_best, *(ranked.to_best_interval or (None, None)), ranked.below_best if position > 1 else None,
                          ranked.to_next, *(ranked.to_next_interval or (None, None)),
                          ranked.above_next if ranked.to_next is not None else None])
    return list(RANK_HEADER), cells


def rank_display(header: Sequence[str], cells: Sequence[Sequence[Any]]) -> tuple[list[str], list[list[Any]]]:
    """The rank table for reading (from ``rank_table`` or read back from ``ranks.csv``): intervals in
    brackets, `` *`` on a difference beyond its interval."""
    def number(value: Any) -> float | None:
        return None if value in (None, "") else float(value)

    def difference(point: Any, low: Any, high: Any, beyond: Any) -> str:
        if number(point) is None:
            return ""
        bounds = f" [{number(low):+.1f}, {number(high):+.1f}]" if number(low) is not None else ""
        return f"{number(point):+.1f}{bounds}{' *' if beyond in (True, 'True') else ''}"

    shown = []
    for line in cells:
        values = dict(zip(header, line, strict=True))
        low, high = number(values["relative_lo"]), number(values["relative_hi"])
        relative = f"{number(values['relative_%']):.1f}" + (f" [{low:.1f}, {high:.1f}]" if low is not None else "")
        shown.append([values["tokens"], values["rank"], values["configuration"], relative,
                      difference(values["to_best"], values["to_best_lo"], values["to_best_hi"], values["below_best"]),
                      difference(values["to_next"], values["to_next_lo"], values["to_next_hi"], values["above_next"])])
    return ["tokens", "rank", "configuration", "relative_% [95% CI]", "vs best (paired)", "vs next (paired)"], shown



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
    """The series a row is drawn in: its method (and other parameters; a seed-mean row's "mean over N
    seeds" as "(seed mean)"); budgets and heads label the points."""
    params = config.params
    suffix = ""
    if params and params.startswith(SEED_MEAN):
        suffix, params = " (seed mean)", ", ".join(params.split(", ")[1:]) or None
    return config.method + (" (dynamic)" if config.dynamic else "") + suffix + (f" [{params}]" if params else "")


def plotted_rows(rows: Sequence[SummaryRow]) -> list[SummaryRow]:
    """The rows the plots draw: a seed-mean row stands for its seeds."""
    return [row for row in rows if not row.seed_member]


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
    (output_dir / "results.md").write_text(markdown(*with_intervals_shown(header, cells)), encoding="utf-8")
    print(markdown(*with_intervals_shown(header, cells)))
    ranks = rank_table(rows)
    if ranks[1]:
        write_csv(output_dir / "ranks.csv", *ranks)
        (output_dir / "ranks.md").write_text(markdown(*rank_display(*ranks)), encoding="utf-8")
    if not args.no_plots:
        plotted = plotted_rows(rows)
        plot_accuracy_vs_tokens(plotted, output_dir / "accuracy_vs_tokens.png")
        plot_pareto(plotted, output_dir / "pareto.png")
        plot_head_heatmaps(plotted, output_dir)
    print(f"wrote {len(rows)} rows to {output_dir}")
    unfinished = [(row.config, name) for row in rows for name in incomplete(row)]
    if unfinished:
        print(f"error: {len(unfinished)} result(s) are incomplete (column 'incomplete'); re-run them", file=sys.stderr)
        return INCOMPLETE_EXIT_CODE
    return 0


if __name__ == "__main__":
    sys.exit(main())
