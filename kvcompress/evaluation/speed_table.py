"""The benchmark report per prompt length, with speed and memory as ratios to reference rows.

For each prompt length: the benchmark table (:func:`kvcompress.evaluation.benchmark.markdown_table`), then
one ratio table whose cells are ``value / reference`` for TTFT, TPOT, peak RSS and KV bytes (the sum of the
cache tensors' ``nbytes`` after the speed run), once per reference row present: ``full`` (stock
transformers, ``DynamicCache``) and ``full_kvcompress`` (the same model on our attention and cache), so
that ``full / full_kvcompress`` is the cache layout's share of a speed-up and
``method / full_kvcompress`` head specialization's. ``results.png`` draws the ratios to ``full`` against the
prompt length, one line per method.

    python -m kvcompress.evaluation.speed_table A/results.json B/results.json --out DIR   # merge runs (e.g. 2k, then 4k + 8k)
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from kvcompress.evaluation.benchmark import markdown_table
from toolkit_common.script_args import out_flag

REFERENCES = ("full", "full_kvcompress")
RATIO_COLUMNS = (("ttft_s", "TTFT"), ("tpot_s", "TPOT"), ("peak_memory_bytes", "peak RSS"), ("kv_bytes", "KV"))


def ratio(row: dict, reference: dict, key: str) -> float | None:
    """``row[key] / reference[key]``; ``None`` where the row lacks the value or the reference has none (or 0)."""
    value, base = row.get(key), reference.get(key)
    return None if value is None or not base else value / base


def ratio_table(rows: list[dict], references: Sequence[str] = REFERENCES) -> str:
    """Markdown table ``method | TTFT / ref | TPOT / ref | peak RSS / ref | KV / ref | ...`` (``0.85x``: 85 % of
    the reference), one group of columns per reference row present in ``rows`` (matched on ``method``)."""
    by_method = {row["method"]: row for row in rows}
    present = [name for name in references if name in by_method]
    header = ["method"] + [f"{label} / {name}" for name in present for _, label in RATIO_COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["method"]]
        for name in present:
            reference = by_method[name]
            for key, _ in RATIO_COLUMNS:
                value = ratio(row, reference, key)
                cells.append("-" if value is None else f"{value:.2f}x")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def report(rows: list[dict], references: Sequence[str] = REFERENCES) -> str:
    """One section per prompt length (``prompt_tokens`` of the rows, in order of appearance)."""
    lengths = list(dict.fromkeys(row["prompt_tokens"] for row in rows))
    sections = []
    for length in lengths:
        at_length = [row for row in rows if row["prompt_tokens"] == length]
        new_tokens = at_length[0].get("new_tokens")
        sections.append(f"## prompt {length} tokens, {new_tokens} new tokens\n\n{markdown_table(at_length)}\n"
                        f"{ratio_table(at_length, references)}")
    return "\n".join(sections)


def ratios_by_length(rows: list[dict], reference: str = "full") -> dict[str, dict[str, list[tuple[int, float]]]]:
    """``{column label: {method: [(prompt tokens, value / reference's value at that length), ...]}}`` for the
    lengths where both the row and the reference have the value."""
    references = {row["prompt_tokens"]: row for row in rows if row["method"] == reference}
    ratios: dict[str, dict[str, list[tuple[int, float]]]] = {label: {} for _, label in RATIO_COLUMNS}
    for row in rows:
        base = references.get(row["prompt_tokens"])
        for key, label in RATIO_COLUMNS:
            value = None if base is None else ratio(row, base, key)
            if value is not None:
                ratios[label].setdefault(row["method"], []).append((row["prompt_tokens"], value))
    return ratios


def plot_ratios(rows: list[dict], path: Path, reference: str = "full") -> None:
    """One panel per ratio column (TTFT, TPOT, peak RSS, KV over ``reference``) against the prompt length."""
    ratios = ratios_by_length(rows, reference)
    figure, axes = plt.subplots(1, len(ratios), figsize=(4.2 * len(ratios), 3.6), squeeze=False)
    for axis, (label, by_method) in zip(axes[0], ratios.items(), strict=True):
        for method, points in by_method.items():
            lengths, values = zip(*sorted(points), strict=True)
            axis.plot(lengths, values, marker="o", label=method)
        axis.axhline(1.0, color="grey", linestyle="--", linewidth=0.8)
        axis.set_xscale("log", base=2)
        axis.set_xlabel("prompt tokens")
        axis.set_title(f"{label} / {reference}")
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def save_report(rows: list[dict], metadata: dict, out: Path) -> None:
    """Write ``results.json`` (metadata and every row), ``results.md`` (:func:`report`) and ``results.png``
    (:func:`plot_ratios`, when a ``full`` row is there)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"metadata": metadata, "results": rows}, indent=1))
    (out / "results.md").write_text(report(rows))
    if any(row["method"] == "full" for row in rows):
        plot_ratios(rows, out / "results.png")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Merge benchmark runs into one report (rows in file order).",
                                     parents=[out_flag(type=Path, required=True)])
    parser.add_argument("results", type=Path, nargs="+", help="results.json files of scripts/benchmark.py")
    args = parser.parse_args(argv)
    missing = [str(path) for path in args.results if not path.is_file()]
    if missing:
        parser.error(f"no such results file: {', '.join(missing)}")
    runs = [json.loads(path.read_text()) for path in args.results]
    rows = [row for run in runs for row in run["results"]]
    save_report(rows, {"merged_from": [str(path) for path in args.results],
                       "runs": [run["metadata"] for run in runs]}, args.out)
    print(f"{len(rows)} rows -> {args.out}/results.md, results.png")


if __name__ == "__main__":
    main()
