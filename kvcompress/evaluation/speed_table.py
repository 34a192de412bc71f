"""The benchmark report per prompt length, with speed and memory as ratios to reference rows.

For each prompt length: the benchmark table (:func:`kvcompress.evaluation.benchmark.markdown_table`), then
one ratio table whose cells are ``value / reference`` for TTFT, TPOT, peak RSS and KV bytes (the sum of the
cache tensors' ``nbytes`` after the speed run), once per reference row present: ``full`` (stock
transformers, ``DynamicCache``) and ``full_kvcompress`` (the same model on our attention and cache), so
that ``full / full_kvcompress`` is the cache layout's share of a speed-up and
``method / full_kvcompress`` head specialization's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from kvcompress.evaluation.benchmark import markdown_table

REFERENCES = ("full", "full_kvcompress")
RATIO_COLUMNS = (("ttft_s", "TTFT"), ("tpot_s", "TPOT"), ("peak_memory_bytes", "peak RSS"), ("kv_bytes", "KV"))


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
                value, base = row.get(key), reference.get(key)
                cells.append("-" if value is None or not base else f"{value / base:.2f}x")
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


def save_report(rows: list[dict], metadata: dict, out: Path) -> None:
    """Write ``results.json`` (metadata and every row) and ``results.md`` (:func:`report`)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"metadata": metadata, "results": rows}, indent=1))
    (out / "results.md").write_text(report(rows))
