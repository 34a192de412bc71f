"""Drop-in class names that users of the FastV / fine-head / SparseVLM / PDrop forks expect.

Each is the one pruning decoder with a default method (used when the config names none).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from llava.model.language_model.pruning_llama import PruningLlamaModel


class Fastv_LlamaModel(PruningLlamaModel):
    """The FastV fork's name: the pruning decoder with ``fastv`` as its default method."""

    default_pruning_method = "fastv"


class FastvAdvanced_LlamaModel(Fastv_LlamaModel):
    """FastV-Advanced's name: FastV whose ``token_selection_method`` / ``weighted_alpha`` switch at run time
    (the method is rebuilt once per change and recorded in the config); ``last_gen_attention_mask`` /
    ``last_gen_kept_indices`` / ``last_selection_metadata`` read what the last pruned prefill did
    (``llava.model.language_model.readouts``)."""

    def _switch(self, **change: Any) -> None:
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


class FastvFineHead_LlamaModel(PruningLlamaModel):
    """The fine-head fork's name: ``fastv_fine_head`` by default (parameters ``heads``, ``head_strategy``)."""

    default_pruning_method = "fastv_fine_head"


class SparseVLM_LlamaModel(PruningLlamaModel):
    """SparseVLM: the pruning decoder with ``sparsevlm`` as its default method."""

    default_pruning_method = "sparsevlm"


class PDrop_LlamaModel(PruningLlamaModel):
    """PyramidDrop: the pruning decoder with ``pdrop`` as its default method."""

    default_pruning_method = "pdrop"


class VisPruner_LlamaModel(PruningLlamaModel):
    """VisPruner, a pre-LLM method: the decoder itself runs unpruned and
    :class:`~llava.model.llava_arch.PruningLlavaForConditionalGeneration` selects the visual tokens."""

    default_pruning_method = "vispruner"


class CDPruner_LlamaModel(PruningLlamaModel):
    """CDPruner, a pre-LLM method (see :class:`VisPruner_LlamaModel`)."""

    default_pruning_method = "cdpruner"
