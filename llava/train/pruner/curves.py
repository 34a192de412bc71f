"""Training curves of the learned pruner, drawn from its ``train_log.jsonl`` (one PNG, six panels).

Panels: task loss; adversarial losses (generator and discriminator); discriminator accuracy; cumulative
keep ratio per pruning layer (soft, from the Gumbel masks, and what the ``> 0.5`` threshold would keep)
against its target; Gumbel temperature; loss weights. Losses and accuracy are moving means over 25 steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def moving_mean(values: Sequence[float | None], window: int = 25) -> list[float | None]:
    """Mean of the last ``window`` non-missing values at each step (None until one exists)."""
    out, recent = [], []
    for value in values:
        if value is not None:
            recent = [*recent, value][-window:]
        out.append(sum(recent) / len(recent) if recent else None)
    return out


def plot_pruner_training(rows: Sequence[dict], target: Path, target_ratios: Sequence[float] | None = None, title: str = "") -> Path:
    """Write the six-panel PNG of a training log to ``target``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [row["step"] for row in rows]
    figure, axes = plt.subplots(2, 3, figsize=(15, 7.5))
    axes = axes.ravel()
    axes[0].plot(steps, moving_mean([r["loss_task"] for r in rows]), label="task CE (soft masks)")
    axes[0].set(title="task loss", xlabel="step")
    axes[1].plot(steps, moving_mean([r["loss_adversarial"] for r in rows]), label="generator  -log D(fake)")
    axes[1].plot(steps, moving_mean([r.get("loss_discriminator") for r in rows]), label="discriminator")
    axes[1].set(title="adversarial losses", xlabel="step")
    axes[2].plot(steps, moving_mean([r.get("discriminator_accuracy") for r in rows]), label="accuracy")
    axes[2].axhline(0.5, color="grey", linestyle=":", label="chance")
    axes[2].set(title="discriminator accuracy", xlabel="step", ylim=(0, 1.02))
    layers = list(rows[0]["keep_ratio"]) if rows else []
    for index, layer in enumerate(layers):
        line = axes[3].plot(steps, [r["keep_ratio"][layer] for r in rows], label=f"layer {layer} soft")[0]
        axes[3].plot(steps, [r["hard_keep_ratio"][layer] for r in rows], color=line.get_color(), linestyle="--", alpha=0.6)
        if target_ratios is not None:
            axes[3].axhline(target_ratios[index], color=line.get_color(), linestyle=":")
    axes[3].set(title="cumulative keep ratio (-- threshold, : target)", xlabel="step", yscale="log")
    axes[4].plot(steps, [r["temperature"] for r in rows], label="tau")
    axes[4].set(title="Gumbel temperature", xlabel="step")
    for name in sorted(key.removeprefix("weight_") for key in (rows[0] if rows else {}) if key.startswith("weight_")):
        axes[5].plot(steps, [r[f"weight_{name}"] for r in rows], label=name)
    axes[5].set(title="loss weights", xlabel="step")
    for axis in axes:
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=80)
    plt.close(figure)
    return target
