"""``load_pretrained_model`` as in LLaVA, returning ``(tokenizer, model, image_processor, context_len)``.

Loads a llava-hf ``LlavaForConditionalGeneration`` checkpoint, an original-format LLaVA one (converted
on load), or a plain Llama LM, with the pruning
decoder swapped in, running a registry method built once from its name, its parameters and an optional
``visual_token_num`` budget (planned before any weight is read, so bad settings fail fast).
``model_path`` may be ``tiny-random-llava`` / ``tiny-random-llama`` for in-process random models.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoConfig, AutoImageProcessor, AutoProcessor, AutoTokenizer, LlamaConfig, PretrainedConfig

from llava.model.families import VlmFamily, family_of, supported_configs
from llava.model.language_model.pruning_config import PruningLlamaConfig
from llava.model.language_model.pruning_llama import PruningLlamaForCausalLM
from llava.model.llava_arch import PruningLlavaForConditionalGeneration, PruningVlmMixin
from llava.model.original_llava import converted_config, load_converted_weights, original_config
from llava.model.placement import Placement, plan_placement
from llava.model.text_models import llama_text_config
from llava.model.tiny import (
    build_tiny_image_processor,
    build_tiny_llama,
    build_tiny_llava,
    build_tiny_llava_next,
    build_tiny_llava_next_processor,
    build_tiny_tokenizer,
)
from llava.pruning.budget import budget_tokens
from llava.pruning.methods.base import PruningMethod
from llava.pruning.registry import method_class, plan_method

TINY_MODELS = ("tiny-random-llava", "tiny-random-llava-next", "tiny-random-llama")
ENGINE_FIELDS = ("pruning_scoring", "fast_v_sys_length", "fast_v_image_token_length")
"""Config fields of the engine itself (not of a method): how to score and where the span is."""


def split_engine_fields(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(engine config fields, method parameters)`` of the keyword arguments."""
    engine = {k: v for k, v in params.items() if k in ENGINE_FIELDS}
    return engine, {k: v for k, v in params.items() if k not in ENGINE_FIELDS}


def planned_method(
    pruning_method: str | None,
    text_config: LlamaConfig,
    span: int | None,
    visual_token_num: float | None,
    params: dict[str, Any],
    model_path: str | None = None,
    retain_ratio: float | None = None,
) -> PruningMethod | None:
    """The method to run (None without ``pruning_method``), validated against this model; the method's
    ``params_for_model`` completes ``params`` from ``model_path`` (``learned``: the pruner it ships). The budget
    is ``visual_token_num`` equivalent tokens or ``retain_ratio`` of the ``span`` image tokens."""
    if pruning_method is None:
        given = sorted(params) + [name for name, value in (("visual_token_num", visual_token_num), ("retain_ratio", retain_ratio)) if value is not None]
        if given:
            raise ValueError(f"pruning parameters {given} were given without pruning_method")
        return None
    visual_token_num = budget_tokens(visual_token_num, retain_ratio, span)
    params = method_class(pruning_method).params_for_model(params, model_path, visual_token_num)
    method = plan_method(pruning_method, visual_token_num, text_config.num_hidden_layers, span, params)
    method.validate(text_config.num_hidden_layers, span, text_config.num_attention_heads, text_config.hidden_size)
    return method


def method_takes(pruning_method: str | None, parameter: str) -> bool:
    """Whether method ``pruning_method`` has a parameter named ``parameter`` (a tiny model's ``seed`` keyword
    seeds its weights unless the method takes a ``seed`` of its own, as ``random`` does)."""
    return pruning_method is not None and parameter in method_class(pruning_method).parameter_names()


def pruning_decoder(model: torch.nn.Module) -> torch.nn.Module:
    """The ``PruningLlamaModel`` of a loaded model (a VLM's language model, or the causal LM's decoder)."""
    return model.language_model if isinstance(model, PruningVlmMixin) else model.model


def load_pretrained_model(
    model_path: str,
    model_base: str | None = None,
    model_name: str | None = None,
    load_8bit: bool = False,
    load_4bit: bool = False,
    device_map: str | dict[str, Any] | None = None,
    device: str | torch.device | None = None,
    use_flash_attn: bool = False,
    *,
    pruning_method: str | None = None,
    torch_dtype: torch.dtype | str | None = None,
    attn_implementation: str | None = None,
    gguf_file: str | None = None,
    visual_token_num: float | None = None,
    retain_ratio: float | None = None,
    vision_tower: str | None = None,
    **pruning_params: Any,
) -> tuple[Any, torch.nn.Module, Any, int]:
    """Load a model with the pruning decoder; returns ``(tokenizer, model, image_processor, context_len)``.

    LLaVA's loading arguments, in LLaVA's order (``llava.model.placement``): ``device`` (default: CUDA, else
    MPS, else CPU), ``torch_dtype`` (default float16 on CUDA / MPS, float32 on CPU), ``device_map``
    (``"auto"`` or a dict: the model spread over devices by accelerate; the engine moves the few tensors a
    pruning stage needs), ``attn_implementation`` (``sdpa`` by default; ``use_flash_attn=True`` is
    ``flash_attention_2``), ``load_8bit`` / ``load_4bit`` (bitsandbytes, the ``quant`` extra).

    Budget: ``visual_token_num`` (equivalent tokens) or ``retain_ratio`` (share of the image's tokens; for a family
    whose count varies with the image, LLaVA-NeXT, the method is planned for each prompt's image span).
    ``pruning_params``: the method's parameters (legacy FastV names accepted, e.g. ``fast_v_agg_layer``)
    and the engine fields ``pruning_scoring``, ``fast_v_sys_length``, ``fast_v_image_token_length``.
    ``model_path``: a llava-hf checkpoint (``llava-hf/llava-1.5-7b-hf``), an original-format LLaVA one
    (``liuhaotian/llava-v1.5-7b``: converted on load, ``llava.model.original_llava``; ``vision_tower``
    overrides its ``mm_vision_tower``, e.g. a local copy of ``openai/clip-vit-large-patch14-336``), a
    Llama LM, or a tiny random model.
    ``model_base`` (LoRA merging in LLaVA) is not supported: pass a merged checkpoint. ``model_name`` is
    accepted for LLaVA compatibility and ignored (the architecture comes from the checkpoint's config).
    """
    del model_name
    if model_base is not None:
        raise ValueError("model_base (LoRA weights) is not supported: merge the LoRA into a full checkpoint first")
    placement = plan_placement(device, torch_dtype, device_map, attn_implementation, use_flash_attn, load_8bit, load_4bit)
    engine, params = split_engine_fields(pruning_params)
    seed = params.pop("seed", 0) if model_path in TINY_MODELS and not method_takes(pruning_method, "seed") else 0
    source = _read_config(model_path, gguf_file, vision_tower, placement, seed, engine)
    family = family_of(source.config)
    text_config = source.config if family is None else source.config.text_config
    span = engine.get("fast_v_image_token_length") if family is None else family.image_tokens(source.config)
    planning_span = span if family is None or span is not None else family.max_image_tokens(source.config)
    method = planned_method(pruning_method, text_config, planning_span, visual_token_num, params, model_path, retain_ratio)
    model, tokenizer, image_processor = _loaded(source, family, placement, engine, gguf_file)
    if isinstance(model, PruningVlmMixin):
        model.set_pruning_method(method)
        if span is None and method is not None and (visual_token_num is not None or retain_ratio is not None):
            model.span_planner = functools.lru_cache(maxsize=8)(functools.partial(
                planned_method, pruning_method, text_config, visual_token_num=visual_token_num, params=params,
                model_path=model_path, retain_ratio=retain_ratio,
            ))
    else:
        pruning_decoder(model).set_pruning_method(method)
    return tokenizer, model.eval(), image_processor, text_config.max_position_embeddings


@dataclass
class _Source:
    """A checkpoint's config before its weights are read (with the tiny model, built in memory, or the original
    LLaVA checkpoint's tokenizer and image processor)."""

    path: str
    config: PretrainedConfig
    model: torch.nn.Module | None = None
    tokenizer: Any = None
    image_processor: Any = None
    original: dict | None = None
    vision_tower: str | None = None


def _read_config(model_path: str, gguf_file: str | None, vision_tower: str | None, placement: Placement, seed: int,
                 engine: dict[str, Any]) -> _Source:
    """The config (and, for a tiny model, the model itself) with its text model checked (one line if unsupported)."""
    if model_path in TINY_MODELS:
        if placement.quantization is not None:
            raise ValueError(f"load_{placement.quantization} needs a checkpoint to quantise; {model_path} is built in memory")
        model, image_processor = _build_tiny(model_path, seed, engine)
        source = _Source(model_path, model.config, model, build_tiny_tokenizer(), image_processor)
    elif (original := original_config(model_path)) is not None:
        config, tokenizer, image_processor = converted_config(model_path, original, vision_tower)
        source = _Source(model_path, config, None, tokenizer, image_processor, original, vision_tower)
    else:
        config = AutoConfig.from_pretrained(model_path, **({"gguf_file": gguf_file} if gguf_file else {}))
        if family_of(config) is None and not isinstance(config, LlamaConfig):
            raise ValueError(f"unsupported architecture {type(config).__name__}: expected one of {supported_configs()}")
        source = _Source(model_path, config)
    if family_of(source.config) is not None:
        source.config.text_config = llama_text_config(source.config.text_config)
    return source


def _loaded(source: _Source, family: VlmFamily | None, placement: Placement, engine: dict[str, Any],
            gguf_file: str | None) -> tuple[torch.nn.Module, Any, Any]:
    """``(model, tokenizer, image_processor)`` with the pruning decoder, placed as ``placement`` says."""
    config = source.config
    if family is not None and source.model is None:
        config.text_config = PruningLlamaConfig.from_llama_config(config.text_config, **engine)
    if source.model is not None or source.original is not None:
        model = source.model
        if source.original is not None:
            model = PruningLlavaForConditionalGeneration(config)
            load_converted_weights(model, source.path, source.original, source.vision_tower)
        if placement.attn_implementation is not None:
            model.set_attn_implementation(placement.attn_implementation)
        return placed(model.to(placement.dtype), placement), source.tokenizer, source.image_processor
    gguf = {"gguf_file": gguf_file} if gguf_file else {}
    load_kwargs = {**placement.from_pretrained_kwargs(), **gguf}
    if family is not None:
        model = family.model_class.from_pretrained(source.path, config=config, **load_kwargs)
        # PIL backend: LLaVA's pixels (the torchvision backend resizes slightly differently)
        processor_class = AutoProcessor if family.processor_expands_images else AutoImageProcessor
        image_processor = processor_class.from_pretrained(source.path, backend="pil")
    else:
        pruned = PruningLlamaConfig.from_llama_config(config, **engine)
        model = PruningLlamaForCausalLM.from_pretrained(source.path, config=pruned, **load_kwargs)
        image_processor = None
    tokenizer = AutoTokenizer.from_pretrained(source.path, **gguf)
    return (model if placement.dispatched else model.to(placement.device)), tokenizer, image_processor


def placed(model: torch.nn.Module, placement: Placement) -> torch.nn.Module:
    """A model built in memory moved to its device, or spread over ``placement.device_map`` by accelerate."""
    if placement.device_map is None:
        return model.to(placement.device)
    from accelerate import dispatch_model, infer_auto_device_map

    device_map = placement.device_map
    if isinstance(device_map, str):
        device_map = infer_auto_device_map(model, no_split_module_classes=model._no_split_modules, dtype=placement.dtype)
    return dispatch_model(model, device_map=device_map, offload_dir=_offload_folder(device_map))


def _offload_folder(device_map: dict[str, Any]) -> str | None:
    """A temporary folder for the weights a device map puts on ``"disk"`` (None when it puts none there)."""
    if "disk" not in device_map.values():
        return None
    import tempfile

    return tempfile.mkdtemp(prefix="llava_offload_")


def _build_tiny(model_path: str, seed: int, engine: dict[str, Any]) -> tuple[torch.nn.Module, Any]:
    """The tiny random model (seeded) with the engine fields in its config."""
    if model_path == "tiny-random-llava":
        return build_tiny_llava(seed=seed, **engine), build_tiny_image_processor()
    if model_path == "tiny-random-llava-next":
        return build_tiny_llava_next(seed=seed, **engine), build_tiny_llava_next_processor()
    return build_tiny_llama(seed=seed, **engine), None
