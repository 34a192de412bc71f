"""``ablation_a``: FastV with a dynamic, per-sample choice of head strategy and head count.

The three steps of docs/methods.md, "Dynamic selection" (``llava.pruning.head_selection.select_tokens_dynamic``):
resource-aware candidate strategies and head range from R, a head count per candidate (median of three
estimates), and a quality score that picks the best (strategy, heads). With ``debug_mode`` every sample's
choice is logged (logger ``llava.pruning.methods.ablation_a``, level INFO); it is always in the
selection metadata (``last_selection_metadata``).

Choice: the candidate head ranges are capped at the layer's head count (tiny models have fewer heads).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from llava.pruning.head_selection import select_tokens_dynamic
from llava.pruning.methods.base import PruneStep, SinglePruneMethod, register_method
from llava.pruning.selection import TokenSelection

logger = logging.getLogger(__name__)


@register_method
@dataclass
class DynamicHeadFastV(SinglePruneMethod):
    """``agg_layer`` = K, ``keep`` = R; ``debug_mode`` logs the choice per sample."""

    debug_mode: bool = False

    name = "ablation_a"

    def select(self, step: PruneStep, keep: int) -> TokenSelection:
        attn = step.query_attention_over_span(step.layer - 1)
        selection = select_tokens_dynamic(attn, keep)
        if self.debug_mode:
            meta = selection.metadata
            for sample, (strategy, heads, quality) in enumerate(
                zip(meta["head_strategy"], meta["heads"], meta["quality"], strict=True)
            ):
                logger.info(
                    "ablation_a sample %d: R=%d strategy=%s heads=%d quality=%.6f candidates=%s",
                    sample,
                    keep,
                    strategy,
                    heads,
                    quality,
                    meta["candidates"],
                )
        return selection
