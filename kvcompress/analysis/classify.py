"""Statistics-based head classifier (pure function over :class:`HeadStatistics`).

With normalised entropy ``Ĥ``, window mass ``m = sink_mass + local_mass`` and the output ratio
``r = output_norm / mean(output_norm of the layer)``, in this order:

* dead if ``Ĥ >= dead_min_entropy`` (near-uniform) or ``r < dead_max_output_ratio`` (negligible output);
* positional if ``m >= positional_min_window_mass`` and ``Ĥ <= positional_max_entropy``;
* gathering otherwise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from kvcompress.analysis.collector import HeadStatistics
from kvcompress.classification import HeadClassification


@dataclass(frozen=True)
class StatisticsThresholds:
    """Thresholds of the statistics-based classifier (saved in ``head_classification.json``)."""

    positional_min_window_mass: float = 0.8
    positional_max_entropy: float = 0.6
    dead_min_entropy: float = 0.9
    dead_max_output_ratio: float = 0.1


def classify_by_statistics(statistics: HeadStatistics,
                           thresholds: StatisticsThresholds | None = None) -> HeadClassification:
    """Label every (layer, head) from its mean statistics."""
    thresholds = thresholds or StatisticsThresholds()
    entropy = statistics.means["normalized_entropy"]
    window_mass = statistics.means["sink_mass"] + statistics.means["local_mass"]
    norms = statistics.means["output_norm"]
    output_ratio = norms / np.maximum(norms.mean(axis=1, keepdims=True), 1e-12)
    dead = (entropy >= thresholds.dead_min_entropy) | (output_ratio < thresholds.dead_max_output_ratio)
    positional = ~dead & (window_mass >= thresholds.positional_min_window_mass) & (
        entropy <= thresholds.positional_max_entropy)
    labels = np.where(dead, "dead", np.where(positional, "positional", "gathering")).tolist()
    return HeadClassification(
        statistics.shape, labels, "statistics",
        parameters={"thresholds": asdict(thresholds), "statistics": statistics.config.as_dict(),
                    "sequence_length": statistics.sequence_length},
        scores={"window_mass": window_mass.tolist(), "normalized_entropy": entropy.tolist(),
                "output_ratio": output_ratio.tolist()},
    )
