"""What the last pruned prefill did, read off the decoder: its record and the views FastV-Advanced users know.

They are views of ``PruningState.record`` and hold for every method (a pre-LLM method's selection is
recorded too): ``last_pruning_record``, ``last_gen_attention_mask``, ``last_gen_kept_indices``,
``last_selection_metadata``. The record keeps tensors on the prefill's device; a view that gives Python values
(the metadata) converts them when read, after the prefill (``llava.pruning.record``). Switching FastV's strategy at run time is FastV-Advanced's own
(``llava.model.language_model.drop_in.FastvAdvanced_LlamaModel``).
"""

from __future__ import annotations

import torch

from llava.pruning.record import PruningRecord


class PruningReadouts:
    """Mixed into ``PruningLlamaModel`` (needs its ``pruning_state``)."""

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
        """``[B, R]`` prompt positions of the span tokens kept by the last stage (on the prefill's device)."""
        record = self.last_pruning_record
        return None if record is None or not record.stages else record.stages[-1].kept_index

    @property
    def last_selection_metadata(self) -> dict | None:
        """The last stage's selection metadata as Python values (FastV: ``method``, ``max_head_idx``,
        ``head_importance``), converted from the recorded tensors on each read."""
        record = self.last_pruning_record
        return None if record is None or not record.stages else record.stages[-1].metadata
