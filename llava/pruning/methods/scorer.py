"""A method that is a score (kvpress's ``ScorerPress``): prune once, keep the best-scored span tokens.

A subclass writes ``score(step) -> [B, S]`` (higher = keep) over the live span tokens ``step.span_index``;
the base's ``select`` does the rest for every such method alike:

* slots with ``step.span_valid`` False (padding that keeps a batch rectangular after a stage that kept
  fewer tokens for some samples) are never chosen before a valid one;
* the ``keep`` best slots are kept in original (ascending) order, ties broken as ``top_r_sorted``
  (``torch.topk``, as FastV's code), so a method's keep set is exactly that of its pure scoring function;
* the ``TokenSelection`` carries the scores and ``score_metadata(step)`` (default ``{"method": name}``),
  which the engine stores in the record (``last_selection_metadata``); tensors in it stay on the device and
  are read as lists (``llava.pruning.selection.host_values``), so ``score_metadata`` never waits for the device.

What ``score`` and ``score_metadata`` share (attention rows, a head choice) is computed once per step:
``step.query_attention_over_span`` is cached, and ``step.cached(key, compute)`` caches anything else.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any

import torch

from llava.pruning.methods.base import PruneStep, SinglePruneMethod
from llava.pruning.selection import TokenSelection, top_valid_sorted


@dataclass
class ScorerMethod(SinglePruneMethod):
    """Prunes once before ``agg_layer`` (K) to the ``keep`` (R) span tokens with the highest ``score``."""

    @abstractmethod
    def score(self, step: PruneStep) -> torch.Tensor:
        """``[B, S]`` score of every live span token (columns of ``step.span_index``); higher = keep.

        A sample's scores must depend on its own row only (batch size N == batch size 1)."""

    def score_metadata(self, step: PruneStep) -> dict[str, Any]:
        """What the record stores beside the scores: JSON-friendly values or tensors (e.g. ``[B]`` per sample),
        which readers get as lists; never read a tensor's values here (``.tolist()``, ``int()``: a device sync)."""
        return {"method": self.name}

    def select(self, step: PruneStep, keep: int) -> TokenSelection:
        scores = self.score(step)
        indices = top_valid_sorted(scores, step.span_valid.to(scores.device), keep)
        return TokenSelection(indices=indices, scores=scores, device_metadata=self.score_metadata(step))
