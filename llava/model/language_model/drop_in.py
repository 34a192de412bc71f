"""Drop-in class names that users of the FastV / fine-head / SparseVLM / PDrop forks expect.

Each is the one pruning decoder with a default method (used when the config names none).
"""

from __future__ import annotations

from llava.model.language_model.pruning_llama import PruningLlamaModel


class Fastv_LlamaModel(PruningLlamaModel):
    """The FastV fork's name: the pruning decoder with ``fastv`` as its default method."""

    default_pruning_method = "fastv"


class FastvAdvanced_LlamaModel(Fastv_LlamaModel):
    """FastV-Advanced's name: FastV plus run-time ``token_selection_method`` / ``weighted_alpha``
    switching and ``last_gen_attention_mask`` / ``last_gen_kept_indices`` / ``last_selection_metadata``."""


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
