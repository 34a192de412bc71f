"""Loading a (pruned) LLaVA for evaluation and answering one batch of questions with it."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from transformers import ProcessorMixin

from llava.conversation import build_question_prompt, uses_im_start_end
from llava.eval.cli_args import placement_args, pruning_method, pruning_params
from llava.mm_utils import process_images, to_rgb, tokenizer_image_token
from llava.model.builder import TINY_MODELS, load_pretrained_model, planned_method, pruning_decoder, split_engine_fields
from llava.model.families import family_of
from llava.model.placement import plan_placement
from llava.model.vision import image_features_per_image
from llava.pruning.budget import prefill_flops

RECORD_FIELDS = ("method", "kept_per_layer", "equivalent_tokens", "flops", "prefill_ms")
KEPT_FIELD = "kept_stages"
"""Answers' metadata with ``record_kept_patches``: ``[{"layer", "kept": [span offsets]}, ...]`` per pruning stage."""


class PromptTooLongError(ValueError):
    """A prompt that, with ``max_new_tokens``, does not fit the model's context."""


@dataclass
class ModelBundle:
    """Everything needed to answer questions: model, tokenizer, image processor and image-token layout."""

    tokenizer: Any
    model: Any
    image_processor: Any
    device: torch.device
    dtype: torch.dtype

    @property
    def image_token_id(self) -> int:
        """Id that marks the image span in ``input_ids``."""
        return self.model.config.image_token_id

    @property
    def num_image_tokens(self) -> int:
        """Image tokens per ``<image>`` placeholder (576 for LLaVA-1.5 at 336 px; for a family whose count varies
        with the image, LLaVA-NeXT, the most one image can give: what the context check assumes)."""
        family = family_of(self.model.config)
        return image_features_per_image(self.model.config) if family is None else family.max_image_tokens(self.model.config)

    @property
    def varying_image_tokens(self) -> bool:
        """Whether the model's family gives each image a token count of its own (LLaVA-NeXT)."""
        family = family_of(self.model.config)
        return family is not None and family.fixed_image_tokens is None

    @property
    def expands_images_itself(self) -> bool:
        """Whether the family's processor turns ``<image>`` into its per-image token count (LLaVA-NeXT's anyres)
        and returns the pixel values with it, instead of LLaVA-1.5's ``tokenizer_image_token`` + ``process_images``."""
        return isinstance(self.image_processor, ProcessorMixin)


@dataclass(frozen=True)
class GenerationSettings:
    """Prompt template, image preprocessing and decoding options (greedy when temperature is 0)."""

    conv_mode: str = "vicuna_v1"
    image_aspect_ratio: str = "pad"
    temperature: float = 0.0
    top_p: float | None = None
    num_beams: int = 1
    max_new_tokens: int = 128
    truncate_long_prompts: bool = False
    record_kept_patches: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> GenerationSettings:
        """Settings from the shared command-line flags."""
        return cls(
            conv_mode=args.conv_mode,
            image_aspect_ratio=args.image_aspect_ratio,
            temperature=args.temperature,
            top_p=args.top_p,
            num_beams=args.num_beams,
            max_new_tokens=args.max_new_tokens,
            truncate_long_prompts=args.truncate_long_prompts,
            record_kept_patches=getattr(args, "record_kept_patches", False),
        )

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``model.generate``."""
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "num_beams": self.num_beams,
            "do_sample": self.temperature > 0,
        }
        if self.temperature > 0:
            kwargs["temperature"] = self.temperature
            if self.top_p is not None:
                kwargs["top_p"] = self.top_p
        return kwargs


_reused_bundles: dict[tuple, ModelBundle] | None = None


@contextmanager
def reusing_loaded_models() -> Iterator[None]:
    """Inside the block, a checkpoint loaded once is kept: loading it again (same path, device, dtype and
    engine fields) swaps in the newly planned pruning method instead of reading the weights again. For
    one process that runs many configurations (the demo's ablation); each CLI run loads once anyway."""
    global _reused_bundles
    outer, _reused_bundles = _reused_bundles, {}
    try:
        yield
    finally:
        _reused_bundles = outer


def _replanned(bundle: ModelBundle, model_path: str, pruning_method: str | None, params: dict[str, Any]) -> ModelBundle:
    """``bundle`` with the method planned for its own model (same validation as a fresh load)."""
    params = dict(params)
    visual_token_num = params.pop("visual_token_num", None)
    retain_ratio = params.pop("retain_ratio", None)
    config = bundle.model.config
    text_config = getattr(config, "text_config", config)
    span = bundle.num_image_tokens if text_config is not config else text_config.fast_v_image_token_length
    method = planned_method(pruning_method, text_config, span, visual_token_num, params, model_path, retain_ratio)
    pruning_decoder(bundle.model).set_pruning_method(method)
    return bundle


def load_model_bundle(
    model_path: str,
    pruning_method: str | None = None,
    method_params: dict[str, Any] | None = None,
    device: str | None = None,
    dtype: str | None = None,
    model_base: str | None = None,
    **placement: Any,
) -> ModelBundle:
    """Load a model with the pruning method and its parameters (``visual_token_num``, ``heads``, ...);
    ``placement``: ``device_map``, ``attn_implementation``, ``use_flash_attn``, ``load_8bit``, ``load_4bit``."""
    plan = plan_placement(device, dtype, **placement)
    engine, params = split_engine_fields(method_params or {})
    key = (model_path, str(plan), model_base, tuple(sorted(engine.items())))
    reusable = _reused_bundles is not None and model_path not in TINY_MODELS  # tiny models: built per seed
    if reusable and key in _reused_bundles:
        return _replanned(_reused_bundles[key], model_path, pruning_method, params)
    tokenizer, model, image_processor, _ = load_pretrained_model(
        model_path,
        model_base=model_base,
        pruning_method=pruning_method,
        device=plan.device,
        torch_dtype=plan.dtype,
        **placement,
        **(method_params or {}),
    )
    # a dispatched model takes its inputs on the device of its embeddings (accelerate moves them on)
    input_device = model.device if plan.dispatched else plan.device
    bundle = ModelBundle(tokenizer, model, image_processor, input_device, plan.dtype)
    if reusable and not bundle.varying_image_tokens:  # such a family plans its method per prompt: not replanned here
        _reused_bundles[key] = bundle
    return bundle


def bundle_from_args(args: argparse.Namespace) -> ModelBundle:
    """Load the model named by the shared command-line flags."""
    placement = placement_args(args)
    device, dtype = placement.pop("device"), placement.pop("torch_dtype")
    return load_model_bundle(
        args.model_path, pruning_method(args), pruning_params(args), device, dtype, args.model_base, **placement
    )


def left_pad(token_lists: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists into ``input_ids`` and ``attention_mask`` (``[B, T]`` each)."""
    length = max(len(tokens) for tokens in token_lists)
    input_ids = torch.full((len(token_lists), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(token_lists), length), dtype=torch.long)
    for row, tokens in enumerate(token_lists):
        input_ids[row, length - len(tokens) :] = torch.tensor(tokens, dtype=torch.long)
        attention_mask[row, length - len(tokens) :] = 1
    return input_ids, attention_mask


def unpruned_cost(bundle: ModelBundle, tokens: list[int]) -> dict[str, Any]:
    """Cost fields of an unpruned prefill of prompt ``tokens`` (its image tokens in every layer; SwiGLU FLOPs)."""
    text_config = bundle.model.config.text_config
    span, prompt_length = tokens.count(bundle.image_token_id), len(tokens)
    flops = prefill_flops(
        [span] * text_config.num_hidden_layers,
        prompt_length - span,
        text_config.hidden_size,
        text_config.intermediate_size,
        "swiglu",
    )
    cost: dict[str, Any] = dict.fromkeys(RECORD_FIELDS)
    prefill_ms = getattr(bundle.model, "last_prefill_ms", None)
    cost.update(equivalent_tokens=span, flops=flops, prefill_ms=None if prefill_ms is None else round(prefill_ms, 3))
    return cost


def pruning_context(model: Any, with_image: bool) -> AbstractContextManager:
    """Pruning as configured for image questions; disabled for text-only ones (plain models: no-op)."""
    if with_image or not hasattr(model, "pruning_disabled"):
        return nullcontext()
    return model.pruning_disabled()


def context_length(bundle: ModelBundle) -> int | None:
    """The model's context in tokens (``max_position_embeddings`` of its language model), if it says."""
    config = bundle.model.config
    return getattr(getattr(config, "text_config", config), "max_position_embeddings", None)


def prompt_tokens(bundle: ModelBundle, settings: GenerationSettings, question: str, with_image: bool) -> list[int]:
    """Token ids of the full prompt for one question (template, image tokens, question); the image is
    ``<im_start><image><im_end>`` when the model's config has ``mm_use_im_start_end=True``."""
    prompt = build_question_prompt(question, settings.conv_mode, with_image, uses_im_start_end(bundle.model.config))
    return tokenizer_image_token(prompt, bundle.tokenizer, bundle.image_token_id, bundle.num_image_tokens)


@dataclass(frozen=True)
class FittedPrompt:
    """A question's prompt that leaves room for ``max_new_tokens``: its tokens, the question as it was kept and
    how many question tokens were cut for it (``truncate_long_prompts``)."""

    tokens: list[int]
    question: str
    cut: int = 0


def fitted_prompt_tokens(
    bundle: ModelBundle, settings: GenerationSettings, question: str, with_image: bool
) -> FittedPrompt:
    """The prompt that leaves room for ``max_new_tokens`` in the context, the question cut for it only with
    ``truncate_long_prompts`` (else a too-long prompt is ``PromptTooLongError``)."""
    tokens = prompt_tokens(bundle, settings, question, with_image)
    limit = context_length(bundle)
    if limit is None or len(tokens) + settings.max_new_tokens <= limit:
        return FittedPrompt(tokens, question)
    if not settings.truncate_long_prompts:
        raise PromptTooLongError(
            f"prompt of {len(tokens)} tokens + --max-new-tokens {settings.max_new_tokens} exceeds the model's context "
            f"of {limit} tokens: shorten the question, lower --max-new-tokens, or pass --truncate-long-prompts"
        )
    question_ids = bundle.tokenizer(question, add_special_tokens=False).input_ids
    cut = len(tokens) + settings.max_new_tokens - limit
    while cut < len(question_ids):
        shorter = bundle.tokenizer.decode(question_ids[: len(question_ids) - cut], skip_special_tokens=True)
        tokens = prompt_tokens(bundle, settings, shorter, with_image)
        if len(tokens) + settings.max_new_tokens <= limit:
            return FittedPrompt(tokens, shorter, cut)
        cut += len(tokens) + settings.max_new_tokens - limit
    raise PromptTooLongError(
        f"the prompt does not fit the model's context of {limit} tokens with --max-new-tokens "
        f"{settings.max_new_tokens} even without its question: lower --max-new-tokens"
    )


def llava_inputs(
    bundle: ModelBundle, settings: GenerationSettings, token_lists: list[list[int]], images: list[Image.Image] | None,
    pad_id: int,
) -> dict[str, torch.Tensor]:
    """LLaVA-1.5's model inputs: the prompts' tokens (image tokens expanded) left-padded, and the images
    through ``process_images`` (padded to a square when ``image_aspect_ratio`` is ``pad``)."""
    input_ids, attention_mask = left_pad(token_lists, pad_id)
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if images is not None:
        inputs["pixel_values"] = process_images(images, bundle.image_processor, settings.image_aspect_ratio)
    return inputs


def processor_inputs(
    bundle: ModelBundle, settings: GenerationSettings, questions: list[str], images: list[Image.Image]
) -> dict[str, torch.Tensor]:
    """A family processor's model inputs (LLaVA-NeXT: anyres tiles, ``image_sizes``, ``<image>`` expanded to
    each image's token count), the prompts built with the same conversation template, left-padded."""
    prompts = [build_question_prompt(question, settings.conv_mode, True, uses_im_start_end(bundle.model.config))
               for question in questions]
    encoded = bundle.image_processor(
        images=[to_rgb(image) for image in images], text=prompts, return_tensors="pt", padding=True, padding_side="left"
    )
    return dict(encoded)


def answer_batch(
    bundle: ModelBundle, settings: GenerationSettings, questions: list[str], images: list[Image.Image] | None
) -> tuple[list[str], list[dict[str, Any]]]:
    """Answer questions that all have an image (``images``) or none (``images=None``, run unpruned).

    Returns the stripped answers and each sample's cost fields of this prefill (its pruning record, or
    the unpruned cost when nothing was pruned; ``truncated_question_tokens`` when the question was cut to
    fit the context). A prompt too long for the context is a ``PromptTooLongError`` (see
    ``fitted_prompt_tokens``).
    """
    with_image = images is not None
    fitted = [fitted_prompt_tokens(bundle, settings, question, with_image) for question in questions]
    pad_id = bundle.tokenizer.pad_token_id
    if pad_id is None:
        pad_id = bundle.tokenizer.eos_token_id
    if with_image and bundle.expands_images_itself:  # the questions as fitted: cut ones stay cut
        inputs = processor_inputs(bundle, settings, [prompt.question for prompt in fitted], images)
    else:
        inputs = llava_inputs(bundle, settings, [prompt.tokens for prompt in fitted], images, pad_id)
    inputs = {name: value.to(bundle.device) for name, value in inputs.items()}
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(bundle.dtype)
    with pruning_context(bundle.model, with_image), torch.inference_mode():
        output_ids = bundle.model.generate(**inputs, **settings.generate_kwargs(), pad_token_id=pad_id)
    prompt_length = inputs["input_ids"].shape[1]
    answers = bundle.tokenizer.batch_decode(output_ids[:, prompt_length:], skip_special_tokens=True)
    token_lists = [row[mask.bool()].tolist() for row, mask in zip(inputs["input_ids"], inputs["attention_mask"], strict=True)]
    costs = []
    for sample, tokens in enumerate(token_lists):
        record = bundle.model.sample_pruning_record(sample) if with_image and hasattr(bundle.model, "sample_pruning_record") else None
        if record is None:
            costs.append(unpruned_cost(bundle, tokens))
        else:
            costs.append({name: record.get(name) for name in RECORD_FIELDS})
            if settings.record_kept_patches:
                costs[-1][KEPT_FIELD] = bundle.model.language_model.pruning_state.record.sample_kept_stages(sample)
    for cost, prompt in zip(costs, fitted, strict=True):
        if prompt.cut:
            cost["truncated_question_tokens"] = prompt.cut
    return [answer.strip() for answer in answers], costs
