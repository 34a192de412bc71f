"""The cost report of a pruned LLaVA prefill: kept tokens, equivalent tokens, FLOPs, prefill time."""

from __future__ import annotations

from transformers import LlavaConfig

from llava.model.vision import image_features_per_image
from llava.pruning.budget import layer_flops, prefill_flops
from llava.pruning.record import PruningRecord


def prefill_cost(
    config: LlavaConfig, record: PruningRecord, prompt_length: int, prefill_ms: float | None, sample: int | None = None
) -> dict:
    """Summary of one prefill (one sample's when ``sample`` is given): the record's kept tokens per layer and
    equivalent tokens, decoder FLOPs pruned / unpruned (SwiGLU convention), vision-tower FLOPs, prefill ms."""
    text = config.text_config
    summary = record.summary(sample)
    other = prompt_length - record.span_length
    flops = prefill_flops(summary["kept_per_layer"], other, text.hidden_size, text.intermediate_size, "swiglu")
    full = prefill_flops(
        [record.span_length] * record.num_layers, other, text.hidden_size, text.intermediate_size, "swiglu"
    )
    vision = config.vision_config
    vision_flops = vision.num_hidden_layers * layer_flops(
        image_features_per_image(config) + 1, vision.hidden_size, vision.intermediate_size, "fastv"
    )
    return {
        **summary,
        "flops": round(flops),
        "flops_unpruned": full,
        "flops_ratio": round(flops / full, 4),
        "flops_convention": "swiglu",
        "vision_flops": vision_flops,
        "prefill_ms": None if prefill_ms is None else round(prefill_ms, 3),
    }
