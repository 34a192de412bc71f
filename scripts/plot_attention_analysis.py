"""Re-draw the attention-analysis plots from the JSON files of ``scripts/analyze_attention.py``.

    python scripts/plot_attention_analysis.py results/attention_analysis_smollm2-135m

Plots: entropy heatmap (layers x heads), position preference (argmax sink / distance bins),
statistics vs sequence length, the classification scatter + label map for each
``head_classification*.json`` in the folder, and the trained gates for each ``gates_w<W>.pt`` checkpoint
next to its ``head_classification_gates_w<W>.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kvcompress.analysis.collector import HeadStatistics
from kvcompress.analysis.gates import checkpoint_history
from kvcompress.analysis.plots import (
    plot_classification,
    plot_entropy_heatmap,
    plot_gates,
    plot_position_preference,
    plot_statistics_vs_length,
)
from kvcompress.classification import HeadClassification


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    folder = parser.parse_args().folder
    statistics_path = folder / "statistics.json"
    if not statistics_path.is_file():
        raise SystemExit(f"{statistics_path} is absent: run scripts/analyze_attention.py first")
    statistics = HeadStatistics.load(statistics_path)
    plot_entropy_heatmap(statistics, folder / "entropy_heatmap.png")
    plot_position_preference(statistics, folder / "position_preference.png")
    by_length_path = folder / "statistics_by_length.json"
    if by_length_path.is_file():
        by_length = {int(length): HeadStatistics.from_dict(data)
                     for length, data in json.loads(by_length_path.read_text()).items()}
        plot_statistics_vs_length(by_length, folder / "statistics_vs_length.png")
    for path in sorted(folder.glob("head_classification*.json")):
        classification = HeadClassification.load(path)
        classification.check_shape(statistics.shape)
        suffix = path.stem.removeprefix("head_classification")
        plot_classification(statistics, classification, folder / f"classification{suffix}.png")
        checkpoint = folder / f"{suffix.removeprefix('_')}.pt"  # ..._gates_w<W>.json -> gates_w<W>.pt
        if suffix.startswith("_gates") and checkpoint.is_file():
            plot_gates(classification, checkpoint_history(checkpoint), folder / f"{checkpoint.stem}.png")
    print(f"plots written to {folder}")


if __name__ == "__main__":
    main()
