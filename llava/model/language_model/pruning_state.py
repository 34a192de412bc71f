"""The state a pruned prefill leaves for what follows it, owned by the model (one typed object).

After a pruned prefill the model holds a ``PruningState``: the record (kept tokens per stage and
sample), the prompt it was chosen from, each stage's selection, the padding masks of the kept tokens
per stage (decode steps rebuild their masks from them), the cache it filled, and for pre-LLM methods
which prompt tokens the LLM saw.

* Decode steps with that cache use ``stage_valid`` / ``pre_llm_keep`` (never re-pruning).
* A forward without cache over the same prompt followed by new tokens (``generate(use_cache=False)``)
  replays ``selections`` instead of choosing again with the newest token as the query, so generation
  with and without a KV cache gives the same tokens.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import torch

from llava.pruning.record import PruningRecord
from llava.pruning.selection import SoftSelection, TokenSelection


@dataclass
class PruningState:
    """What the last pruned prefill did and what later steps of the same generation need.

    ``prompt_ids`` / ``prompt_mask``: ``[B, P]`` ids and padding mask of the prompt (ids None when it
    came as embeddings only: such prompts are never replayed). ``selections``: the hard selection of
    each stage; ``soft_stages``: ``(layer, selection, cumulative span weights [B, S])`` in soft mode.
    ``stage_valid[layer]``: ``[B, N_layer]`` padding mask of the kept prompt tokens cached from ``layer``
    to the next stage. ``position_shift[layer]``: ``[B]`` prompt tokens removed at ``layer`` by a stage that
    renumbers positions (a decode step's position drops by this from that layer on). ``pre_llm_keep``: ``[B, P]`` prompt tokens a pre-LLM method let into the LLM;
    ``pre_llm_features``: ``[B, S, d]`` the image features it gave them (merged tokens in place).
    """

    record: PruningRecord
    prompt_ids: torch.Tensor | None
    prompt_mask: torch.Tensor
    selections: list[TokenSelection] = field(default_factory=list)
    soft_stages: list[tuple[int, SoftSelection, torch.Tensor]] = field(default_factory=list)
    stage_valid: dict[int, torch.Tensor] = field(default_factory=dict)
    position_shift: dict[int, torch.Tensor] = field(default_factory=dict)
    pre_llm_keep: torch.Tensor | None = None
    pre_llm_features: torch.Tensor | None = None
    prefill_ms: float | None = None
    _cache: Any = None  # weak reference to the cache the prefill filled

    @property
    def prompt_length(self) -> int:
        return self.prompt_mask.shape[1]

    def attach_cache(self, cache: Any) -> None:
        self._cache = weakref.ref(cache) if cache is not None else None

    def owns(self, cache: Any) -> bool:
        """Whether ``cache`` is the one this prefill filled."""
        return cache is not None and self._cache is not None and self._cache() is cache

    def continued_by(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None) -> bool:
        """Whether a no-cache forward over ``input_ids`` is this prompt followed by new tokens."""
        if input_ids is None or self.prompt_ids is None:
            return False
        batch, length = input_ids.shape
        if batch != self.prompt_ids.shape[0] or length <= self.prompt_length:
            return False
        if not torch.equal(input_ids[:, : self.prompt_length].to(self.prompt_ids.device), self.prompt_ids):
            return False
        if attention_mask is None:
            return bool(self.prompt_mask.all())
        return torch.equal(attention_mask[:, : self.prompt_length].to(self.prompt_mask.device).bool(), self.prompt_mask)
