"""Random baseline: a uniformly random, seeded keep set of R span tokens at layer K.

Every sample scores the span with draws from a generator seeded with ``seed``, so a sample's keep set
does not depend on its position in the batch (batch size N == batch size 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from llava.pruning.methods.base import PruneStep, register_method
from llava.pruning.methods.scorer import ScorerMethod
from llava.pruning.selection import seeded_random_scores


@register_method
@dataclass
class RandomKeep(ScorerMethod):
    seed: int = 0

    name = "random"

    def score(self, step: PruneStep) -> torch.Tensor:
        """The same seeded draw for every sample: drawn on the CPU (the same numbers on every device), then
        copied to the span's device without waiting for it (``non_blocking``), where the top-R runs. The keep
        set is the same on every device unless two draws tie at the top-R boundary (24-bit draws: rare), where
        devices may break the tie differently."""
        batch, span = step.span_index.shape
        scores = seeded_random_scores(span, self.seed).to(step.span_valid.device, non_blocking=True)
        return scores.expand(batch, -1)

    def score_metadata(self, step: PruneStep) -> dict[str, Any]:
        return {"method": self.name, "seed": self.seed}
