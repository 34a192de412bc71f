"""``load_pretrained_model`` as in LLaVA, returning ``(tokenizer, model, image_processor, context_len)``.

Loads a llava-hf ``LlavaForConditionalGeneration`` checkpoint (or a plain Llama LM) with the pruning
decoder swapped in, configured by a registry method name and its parameters. ``model_path`` may be
``tiny-random-llava`` / ``tiny-random-llama`` for in-process random models (tests, demos).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import torch
from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, LlamaConfig, LlavaConfig

from llava.model.language_model.pruning_config import PruningLlamaConfig
from llava.model.language_model.pruning_llama import PruningLlamaForCausalLM
from llava.model.llava_arch import PruningLlavaForConditionalGeneration, image_features_per_image
from llava.model.tiny import (
    build_tiny_image_processor,
    build_tiny_llama,
    build_tiny_llava,
    build_tiny_llava_config,
    build_tiny_tokenizer,
    tiny_llama_config,
)
from llava.pruning.registry import check_method_params, method_class

TINY_MODELS = ("tiny-random-llava", "tiny-random-llama")
_CONFIG_FIELDS = {f.name for f in fields(PruningLlamaConfig)} - {f.name for f in fields(LlamaConfig)}


def pruning_fields(
    pruning_method: str | None,
    text_config: LlamaConfig,
    span: int | None,
    visual_token_num: float | None = None,
    **params: Any,
) -> dict[str, Any]:
    """Config fields for a method name and its parameters.

    Parameters named like config fields (``fast_v_agg_layer``, ``fast_v_token_selection_method``,
    ``pruning_scoring``, ...) are set directly; the rest go to ``pruning_params``. ``visual_token_num``
    is an equivalent-token budget that the method maps to its own parameters.
    """
    if pruning_method is None:
        if visual_token_num is not None or params:
            raise ValueError("pruning parameters were given without pruning_method")
        return {}
    cls = method_class(pruning_method)
    values: dict[str, Any] = {"pruning_method": pruning_method, "use_fast_v": pruning_method == "fastv"}
    values.update({k: v for k, v in params.items() if k in _CONFIG_FIELDS})
    extra = {k: v for k, v in params.items() if k not in _CONFIG_FIELDS}
    check_method_params(cls, extra)
    if extra:
        values["pruning_params"] = extra
    if visual_token_num is not None:
        if span is None:
            raise ValueError("a visual_token_num budget needs the span length (fast_v_image_token_length)")
        draft = PruningLlamaConfig.from_llama_config(text_config, **values)
        values.update(cls.config_for_budget(visual_token_num, text_config.num_hidden_layers, span, draft))
    PruningLlamaConfig.from_llama_config(text_config, **values)  # validates the field values
    return values


def _configure(config: LlavaConfig | LlamaConfig, pruning_method: str | None, params: dict) -> None:
    """Swap in a ``PruningLlamaConfig`` (with the method's fields) as the LM config, in place for LLaVA."""
    if isinstance(config, LlavaConfig):
        span = image_features_per_image(config)
        config.text_config = PruningLlamaConfig.from_llama_config(
            config.text_config,
            image_token_id=config.image_token_id,
            fast_v_image_token_length=span,
            **pruning_fields(pruning_method, config.text_config, span, **params),
        )


def load_pretrained_model(
    model_path: str,
    model_base: str | None = None,
    model_name: str | None = None,
    pruning_method: str | None = None,
    device: str = "cpu",
    torch_dtype: torch.dtype | str | None = None,
    gguf_file: str | None = None,
    **pruning_params: Any,
) -> tuple[Any, torch.nn.Module, Any, int]:
    """Load a model with the pruning decoder; returns ``(tokenizer, model, image_processor, context_len)``.

    ``model_base`` (LoRA merging in LLaVA) is not supported: pass a merged checkpoint. ``model_name`` is
    accepted for LLaVA compatibility and ignored (the architecture comes from the checkpoint's config).
    """
    del model_name
    if model_base is not None:
        raise ValueError("model_base (LoRA weights) is not supported: merge the LoRA into a full checkpoint first")
    if pruning_method is not None:
        method_class(pruning_method)  # unknown names fail here, listing the valid ones
    if model_path in TINY_MODELS:
        model, image_processor = _build_tiny(model_path, pruning_method, pruning_params)
        tokenizer = build_tiny_tokenizer()
    else:
        config = (
            AutoConfig.from_pretrained(model_path, gguf_file=gguf_file)
            if gguf_file
            else AutoConfig.from_pretrained(model_path)
        )
        load_kwargs: dict[str, Any] = {"dtype": torch_dtype} if torch_dtype is not None else {}
        if gguf_file:
            load_kwargs["gguf_file"] = gguf_file
        if isinstance(config, LlavaConfig):
            _configure(config, pruning_method, pruning_params)
            model = PruningLlavaForConditionalGeneration.from_pretrained(model_path, config=config, **load_kwargs)
            image_processor = AutoImageProcessor.from_pretrained(model_path)
        elif isinstance(config, LlamaConfig):
            fields_ = pruning_fields(
                pruning_method, config, pruning_params.get("fast_v_image_token_length"), **pruning_params
            )
            pruned = PruningLlamaConfig.from_llama_config(config, **fields_)
            model = PruningLlamaForCausalLM.from_pretrained(model_path, config=pruned, **load_kwargs)
            image_processor = None
        else:
            raise ValueError(
                f"unsupported architecture {type(config).__name__}: expected a LlavaConfig (llava-hf checkpoint) or a LlamaConfig"
            )
        tokenizer = (
            AutoTokenizer.from_pretrained(model_path, gguf_file=gguf_file)
            if gguf_file
            else AutoTokenizer.from_pretrained(model_path)
        )
    model = model.to(device).eval()
    text_config = model.config.text_config if isinstance(model.config, LlavaConfig) else model.config
    return tokenizer, model, image_processor, text_config.max_position_embeddings


def _build_tiny(model_path: str, pruning_method: str | None, params: dict) -> tuple[torch.nn.Module, Any]:
    """Build the tiny random model with its pruning fields from the start (no config swap on a live model)."""
    seed = params.pop("seed", 0) if pruning_method != "random" else 0
    if model_path == "tiny-random-llava":
        config = build_tiny_llava_config()
        span, text = image_features_per_image(config), config.text_config
        model = build_tiny_llava(seed=seed, **pruning_fields(pruning_method, text, span, **params))
        return model, build_tiny_image_processor()
    text = tiny_llama_config()
    fields_ = pruning_fields(pruning_method, text, params.get("fast_v_image_token_length"), **params)
    return build_tiny_llama(seed=seed, **fields_), None
