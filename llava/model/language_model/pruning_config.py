"""``LlamaConfig`` extended with the fields that drive pruning (FastV's names kept)."""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import LlamaConfig

SCORING_MODES = ("qk", "full_matrix")


@strict
class PruningLlamaConfig(LlamaConfig):
    """Llama config + pruning fields.

    FastV fields (names as in the FastV code base; unset = the method's default, and a field the method
    does not take is an error). They map onto method parameters through
    ``llava.pruning.registry.PARAMETER_ALIASES`` (``fast_v_attention_rank`` -> ``keep``, ...):
        use_fast_v: turn FastV on (same as ``pruning_method="fastv"``).
        fast_v_sys_length: optional override of the span start (tokens after left padding); by default
            the span is derived from ``image_token_id`` in ``input_ids`` (or given as ``prune_span``).
        fast_v_image_token_length: span length (576 for LLaVA-1.5); needed with ``fast_v_sys_length``.
        fast_v_attention_rank: R, span tokens kept.
        fast_v_agg_layer: K, the first layer that runs on the pruned sequence (default 2).
        fast_v_token_selection_method: ``avg_all_heads`` | ``max_head`` | ``weighted_combination``.
        fast_v_weighted_alpha: alpha of ``weighted_combination``, in [0, 1].
    Generic fields:
        pruning_method: registry name (``llava.pruning.registry.available_methods()``); None = off.
        pruning_params: the method's parameters (its dataclass fields; ``method.params()``).
        pruning_scoring: ``qk`` (attention rows from q.k; SDPA stays on) or ``full_matrix`` (materialise
            the N x N map of the scoring layer, as ``output_attentions`` does; reference path).
        image_token_id: token id marking the span in ``input_ids``.
    """

    model_type = "llama_pruning"

    use_fast_v: bool = False
    fast_v_sys_length: int | None = None
    fast_v_image_token_length: int | None = None
    fast_v_attention_rank: int | None = None
    fast_v_agg_layer: int | None = None
    fast_v_token_selection_method: str | None = None
    fast_v_weighted_alpha: float | None = None
    pruning_method: str | None = None
    pruning_params: dict | None = None
    pruning_scoring: str = "qk"
    image_token_id: int | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        if self.pruning_scoring not in SCORING_MODES:
            raise ValueError(f"unknown pruning_scoring {self.pruning_scoring!r}; valid: {', '.join(SCORING_MODES)}")
        if self.fast_v_sys_length is not None and self.fast_v_image_token_length is None:
            raise ValueError("fast_v_sys_length needs fast_v_image_token_length (the span length)")

    @classmethod
    def from_llama_config(cls, config: LlamaConfig, **pruning_fields: Any) -> PruningLlamaConfig:
        """Same architecture as ``config`` with pruning fields set."""
        values = {k: v for k, v in config.to_dict().items() if k not in ("model_type", "architectures")}
        values.update(pruning_fields)
        pruned = cls(**values)
        pruned._attn_implementation = config._attn_implementation  # not part of to_dict()
        return pruned
