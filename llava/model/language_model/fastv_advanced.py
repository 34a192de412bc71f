"""What FastV-Advanced users read and switch on the decoder, as properties over the method and its state.

``token_selection_method`` / ``weighted_alpha`` switch the FastV strategy at run time (the method is
rebuilt once per change); ``last_gen_attention_mask`` / ``last_gen_kept_indices`` /
``last_selection_metadata`` / ``last_pruning_record`` read what the last pruned prefill did.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from llava.pruning.record import PruningRecord


class FastVAdvancedMixin:
    """Mixed into ``PruningLlamaModel`` (needs ``method``, ``set_pruning_method`` and ``pruning_state``)."""

    def _switch(self, **change) -> None:
        method = self.method
        if method is None or not all(hasattr(method, name) for name in change):
            name = "none" if method is None else method.name
            raise ValueError(f"{', '.join(change)} can only be switched on a FastV method; this model runs {name}")
        self.set_pruning_method(replace(method, **change))

    @property
    def token_selection_method(self) -> str | None:
        return getattr(self.method, "token_selection_method", None)

    @token_selection_method.setter
    def token_selection_method(self, value: str) -> None:
        self._switch(token_selection_method=value)

    @property
    def weighted_alpha(self) -> float | None:
        return getattr(self.method, "weighted_alpha", None)

    @weighted_alpha.setter
    def weighted_alpha(self, value: float) -> None:
        self._switch(weighted_alpha=value)

    @property
    def last_pruning_record(self) -> PruningRecord | None:
        """What the last pruned prefill kept (None after an unpruned one)."""
        state = self.pruning_state
        return None if state is None else state.record

    @property
    def last_gen_attention_mask(self) -> torch.Tensor | None:
        """``[B, N]`` bool over the unpruned prompt: False for the span tokens dropped."""
        state = self.pruning_state
        return None if state is None else state.record.kept_mask(state.prompt_length)

    @property
    def last_gen_kept_indices(self) -> torch.Tensor | None:
        """``[B, R]`` prompt positions of the span tokens kept by the last stage."""
        record = self.last_pruning_record
        return None if record is None or not record.stages else record.stages[-1].kept_index

    @property
    def last_selection_metadata(self) -> dict | None:
        record = self.last_pruning_record
        return None if record is None or not record.stages else record.stages[-1].metadata
