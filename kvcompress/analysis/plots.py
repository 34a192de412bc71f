"""Plots of the attention analysis (matplotlib, Agg backend; each function writes one PNG)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from kvcompress.analysis.collector import HeadStatistics  # noqa: E402
from kvcompress.classification import LABELS, HeadClassification  # noqa: E402

LABEL_COLOURS = {"positional": "tab:blue", "gathering": "tab:green", "dead": "tab:red"}


def plot_entropy_heatmap(statistics: HeadStatistics, path: Path) -> None:
    """Normalised entropy per (layer, head): 0 = one key, 1 = uniform."""
    figure, axis = plt.subplots(figsize=(1.0 + 0.45 * statistics.shape.num_query_heads,
                                         1.0 + 0.25 * statistics.shape.num_layers))
    image = axis.imshow(statistics.means["normalized_entropy"], aspect="auto", cmap="viridis", vmin=0, vmax=1)
    axis.set_xlabel("head")
    axis.set_ylabel("layer")
    axis.set_title(f"normalised attention entropy (N={statistics.sequence_length})")
    figure.colorbar(image, ax=axis)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_position_preference(statistics: HeadStatistics, path: Path) -> None:
    """Where each head's argmax falls: sink or relative distance bins (rows = layer.head)."""
    layers, heads, bins = statistics.argmax_histogram.shape
    figure, axis = plt.subplots(figsize=(8, 1.0 + 0.06 * layers * heads))
    image = axis.imshow(statistics.argmax_histogram.reshape(layers * heads, bins), aspect="auto", cmap="magma")
    axis.set_xticks(range(bins), statistics.config.bin_labels(), rotation=60)
    ticks = range(0, layers * heads, heads)
    axis.set_yticks(list(ticks), [f"L{layer}" for layer in range(layers)], fontsize=6)
    axis.set_xlabel("argmax key: sink or distance i - j")
    axis.set_title("position preference (fraction of rows)")
    figure.colorbar(image, ax=axis)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_statistics_vs_length(by_length: dict[int, HeadStatistics], path: Path) -> None:
    """Head-averaged statistics as the sequence grows (bands: 10th-90th percentile over heads)."""
    names = ("normalized_entropy", "sink_mass", "local_mass", "max_attention")
    lengths = sorted(by_length)
    figure, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2))
    for axis, name in zip(axes, names, strict=True):
        values = np.stack([by_length[length].means[name].ravel() for length in lengths])
        axis.plot(lengths, values.mean(1), marker="o")
        axis.fill_between(lengths, np.percentile(values, 10, 1), np.percentile(values, 90, 1), alpha=0.25)
        axis.set_xscale("log", base=2)
        axis.set_xlabel("sequence length")
        axis.set_title(name)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_classification(statistics: HeadStatistics, classification: HeadClassification, path: Path) -> None:
    """Heads in (window mass, normalised entropy) space, coloured by label; right: label map."""
    window_mass = (statistics.means["sink_mass"] + statistics.means["local_mass"]).ravel()
    entropy = statistics.means["normalized_entropy"].ravel()
    labels = np.asarray(classification.labels).ravel()
    figure, (scatter, grid) = plt.subplots(1, 2, figsize=(11, 4.5))
    for label in LABELS:
        chosen = labels == label
        scatter.scatter(window_mass[chosen], entropy[chosen], s=14, c=LABEL_COLOURS[label],
                        label=f"{label} ({int(chosen.sum())})")
    thresholds = classification.parameters.get("thresholds", {})
    if "positional_min_window_mass" in thresholds:
        scatter.axvline(thresholds["positional_min_window_mass"], color="grey", ls="--", lw=0.8)
        scatter.axhline(thresholds["positional_max_entropy"], color="grey", ls="--", lw=0.8)
    scatter.set_xlabel("sink + local-window mass")
    scatter.set_ylabel("normalised entropy")
    scatter.legend()
    scatter.set_title(f"head classes ({classification.classifier})")
    codes = np.vectorize(LABELS.index)(np.asarray(classification.labels))
    cmap = matplotlib.colors.ListedColormap([LABEL_COLOURS[label] for label in LABELS])
    grid.imshow(codes, aspect="auto", cmap=cmap, vmin=0, vmax=len(LABELS) - 1)
    grid.set_xlabel("head")
    grid.set_ylabel("layer")
    grid.set_title("label per (layer, head)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_gates(classification: HeadClassification, history: list[dict], path: Path) -> None:
    """Trained gates (window gate per KV group, output gate per head; 0 = windowed / removed) and, over the
    optimisation steps, the distillation loss (thin: each calibration sequence, bold: mean of each pass
    over the set) and the mean window gate."""
    figure, axes = plt.subplots(1, 3, figsize=(13, 1.5 + 0.2 * classification.shape.num_layers),
                                gridspec_kw={"width_ratios": [1, 2, 3]})
    for axis, name, label in ((axes[0], "window_gate", "KV head"), (axes[1], "head_gate", "query head")):
        image = axis.imshow(np.array(classification.scores[name]), aspect="auto", cmap="viridis", vmin=0, vmax=1)
        axis.set_xlabel(label)
        axis.set_ylabel("layer")
        axis.set_title(name.replace("_", " "))
        figure.colorbar(image, ax=axis)
    sequences = sorted({row["sequence"] for row in history})
    for sequence in sequences:
        rows = [row for row in history if row["sequence"] == sequence]
        axes[2].plot([row["step"] for row in rows], [row["distillation"] for row in rows], color="tab:red",
                     alpha=0.25, linewidth=0.8)
    passes = [history[i : i + len(sequences)] for i in range(0, len(history) - len(sequences) + 1, len(sequences))]
    axes[2].plot([rows[-1]["step"] for rows in passes],
                 [sum(row["distillation"] for row in rows) / len(rows) for rows in passes], color="tab:red",
                 linewidth=2)
    axes[2].set_xlabel("step")
    axes[2].set_ylabel("distillation loss (nats): per sequence, mean per pass", color="tab:red")
    twin = axes[2].twinx()
    twin.plot([row["step"] for row in history], [row["mean_window_gate"] for row in history], color="tab:blue")
    twin.set_ylabel("mean window gate", color="tab:blue")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
