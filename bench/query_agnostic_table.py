"""Merge our rows and kvpress's into one table (Markdown + JSON) and one plot.

Input rows (one per unit, see :mod:`bench.query_agnostic_plan`) carry ``side``, ``method``, ``groups``,
``task``, ``protocol``, the nominal ``kv_fraction`` at the task's compressed context, the measured
``context_kv_bytes`` (K/V bytes after the context prefill; None where not measured) and
``passkey_accuracy`` or ``perplexity``. A merged line is one (side, method, groups): its cells per task
and protocol. The measured KV reduction of a line is ``1 - bytes / bytes(full)``, with the same side's
uncompressed row as reference (ours where that side has none).
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bench.query_agnostic_plan import FULL, KVPRESS_NONE, OURS  # noqa: E402
from kvcompress.evaluation.benchmark import QUERY_AGNOSTIC, QUESTION_AWARE  # noqa: E402

PROTOCOL_SHORT = {QUERY_AGNOSTIC: "QA", QUESTION_AWARE: "QW"}


def is_full(row: dict) -> bool:
    return row["method"] in (FULL, KVPRESS_NONE)


def line_label(side: str, method: str) -> str:
    if side == OURS:
        return {"positional+dead": "ours: windowed+dead (gates)", FULL: "ours: full"}.get(method, f"ours: {method}")
    return "kvpress: " + ("no press" if method == KVPRESS_NONE else method)


def merge_rows(rows: list[dict]) -> list[dict]:
    """One merged line per (side, method, groups), in first-seen order of the full lines then by ``groups``.

    A line holds, per task: ``kv_reduction`` (nominal, ``1 - kv_fraction``) and ``measured_kv_reduction``;
    per task and protocol: ``passkey_accuracy`` or ``perplexity``; and ``ppl_vs_full`` against the
    same side's uncompressed perplexity (ours where that side has none)."""
    lines: dict[tuple, dict] = {}
    full_bytes: dict[tuple[str, str], float] = {}
    full_ppl: dict[str, float] = {}
    for row in rows:
        if is_full(row) and row.get("context_kv_bytes"):
            full_bytes[(row["side"], row["task"])] = row["context_kv_bytes"]
        if is_full(row) and row.get("perplexity") is not None:
            full_ppl[row["side"]] = row["perplexity"]
    for row in rows:
        key = (row["side"], row["method"], row.get("groups"))
        line = lines.setdefault(key, {"side": row["side"], "method": row["method"], "groups": row.get("groups"),
                                      "label": line_label(row["side"], row["method"]), "tasks": {}})
        task = line["tasks"].setdefault(row["task"], {})
        if row["protocol"] == QUERY_AGNOSTIC or "kv_reduction" not in task:
            task["kv_reduction"] = 1 - row["kv_fraction"]
            task["context_tokens"] = row.get("context_tokens")
        reference = full_bytes.get((row["side"], row["task"]), full_bytes.get((OURS, row["task"])))
        if row.get("context_kv_bytes") and reference:
            task["measured_kv_reduction"] = 1 - row["context_kv_bytes"] / reference
            task["context_kv_bytes"] = row["context_kv_bytes"]
        cell = task.setdefault(row["protocol"], {})
        for name in ("passkey_accuracy", "perplexity"):
            if row.get(name) is not None:
                cell[name] = row[name]
        if row.get("perplexity") is not None:
            reference_ppl = full_ppl.get(row["side"], full_ppl.get(OURS))
            if reference_ppl:
                cell["ppl_vs_full"] = row["perplexity"] / reference_ppl - 1
    return sorted(lines.values(), key=lambda line: (line["groups"] is not None, line["groups"] or 0,
                                                    line["side"] != OURS))


def _percent(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:+.1f}%" if signed else f"{100 * value:.0f}%"


def markdown_table(lines: list[dict], passkey_tasks: list[str], perplexity_task: str | None) -> str:
    """Columns: the line, KV reduction per task as ``nominal / measured``, passkey accuracy per task and
    protocol (QA = query-agnostic, QW = question-aware), perplexity and its change vs full."""
    tasks = passkey_tasks + ([perplexity_task] if perplexity_task else [])
    header = ["method", "KV groups windowed"]
    header += [f"KV -% {task} (nominal / measured)" for task in tasks]
    header += [f"{task} {PROTOCOL_SHORT[p]}" for task in passkey_tasks for p in (QUERY_AGNOSTIC, QUESTION_AWARE)]
    if perplexity_task:
        header += ["PPL", "PPL vs full"]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for line in lines:
        cells = [line["label"], "-" if line["groups"] is None else str(line["groups"])]
        for task in tasks:
            info = line["tasks"].get(task, {})
            nominal = f"{100 * info['kv_reduction']:.1f}" if "kv_reduction" in info else "-"
            measured = f"{100 * info['measured_kv_reduction']:.1f}" if "measured_kv_reduction" in info else "-"
            cells.append(f"{nominal} / {measured}")
        for task in passkey_tasks:
            for protocol in (QUERY_AGNOSTIC, QUESTION_AWARE):
                cells.append(_percent(line["tasks"].get(task, {}).get(protocol, {}).get("passkey_accuracy")))
        if perplexity_task:
            cell = line["tasks"].get(perplexity_task, {}).get(QUERY_AGNOSTIC, {})
            cells.append(f"{cell['perplexity']:.3f}" if "perplexity" in cell else "-")
            cells.append(_percent(cell.get("ppl_vs_full"), signed=True))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def plot(lines: list[dict], passkey_tasks: list[str], perplexity_task: str | None, path: Path) -> None:
    """Passkey accuracy per task and perplexity against the nominal KV reduction, one line per method
    (query-agnostic solid, question-aware dashed; ours filled circles, kvpress hollow squares, so equal
    points stay visible); the uncompressed model as a grey horizontal line."""
    panels = [(task, "passkey_accuracy") for task in passkey_tasks]
    if perplexity_task:
        panels.append((perplexity_task, "perplexity"))
    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5), squeeze=False)
    series: dict[tuple[str, str], list[dict]] = {}
    for line in lines:
        series.setdefault((line["side"], line["method"]), []).append(line)
    colors = {name: f"C{i % 10}" for i, name in enumerate(series)}
    for axis, (task, metric) in zip(axes[0], panels, strict=True):
        scale = 100 if metric == "passkey_accuracy" else 1
        for (side, method), members in series.items():
            for protocol, style in ((QUERY_AGNOSTIC, "-"), (QUESTION_AWARE, "--")):
                points = sorted((m["tasks"][task]["kv_reduction"] * 100, m["tasks"][task][protocol][metric] * scale)
                                for m in members if metric in m["tasks"].get(task, {}).get(protocol, {}))
                if not points:
                    continue
                label = f"{line_label(side, method)} ({PROTOCOL_SHORT[protocol]})"
                if method in (FULL, KVPRESS_NONE):
                    if side == OURS:
                        axis.axhline(points[0][1], color="grey", linestyle=style, label=label)
                    continue
                marker = ("o" if side == OURS else "s") if style == "-" else "x"
                axis.plot(*zip(*points, strict=True), marker=marker, markersize=9 if side == OURS else 6,
                          fillstyle="full" if side == OURS else "none", linestyle=style,
                          color=colors[(side, method)], label=label)
        axis.set_xlabel(f"KV reduction vs full at the {task} context (%)")
        axis.set_ylabel("passkey accuracy (%)" if metric == "passkey_accuracy" else "WikiText-2 perplexity")
        axis.set_title(task)
        axis.grid(alpha=0.3)
    legend = {}
    for axis in axes[0]:
        legend.update(zip(*reversed(axis.get_legend_handles_labels()), strict=True))
    figure.legend(list(legend.values()), list(legend), loc="lower center", ncol=4, fontsize=7)
    figure.tight_layout(rect=(0, 0.14, 1, 1))
    figure.savefig(path, dpi=120)
    plt.close(figure)


def save_merged(rows: list[dict], passkey_tasks: list[str], perplexity_task: str | None, metadata: dict,
                out: Path) -> str | None:
    """Write ``results.json``, ``results.md`` and ``results.png``; returns the Markdown table. Without rows
    nothing is written (an empty table never replaces results) and the answer is None."""
    if not rows:
        return None
    lines = merge_rows(rows)
    table = markdown_table(lines, passkey_tasks, perplexity_task)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"metadata": metadata, "lines": lines}, indent=1))
    (out / "results.md").write_text(table)
    plot(lines, passkey_tasks, perplexity_task, out / "results.png")
    return table
