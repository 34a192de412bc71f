"""Random baseline: a uniformly random, seeded keep set of R span tokens at layer K.

Every sample draws from a generator seeded with ``seed``, so a sample's keep set does not depend on
its position in the batch (batch size N == batch size 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llava.pruning.methods.base import PruneStep, SinglePruneMethod, register_method
from llava.pruning.selection import TokenSelection, select_tokens_random


@register_method
@dataclass
class RandomKeep(SinglePruneMethod):
    seed: int = 0

    name = "random"

    def select(self, step: PruneStep, keep: int) -> TokenSelection:
        span = step.span_index.shape[1]
        rows = [select_tokens_random(1, span, keep, torch.Generator().manual_seed(self.seed)) for _ in step.span_index]
        indices = torch.cat(rows).to(step.span_index.device)
        return TokenSelection(indices=indices, scores=torch.zeros(0), metadata={"method": "random", "seed": self.seed})
