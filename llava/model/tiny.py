"""Tiny random models built in-process, for tests and demos (nothing is downloaded).

``build_tiny_llava`` mirrors LLaVA-1.5's shapes where they matter for pruning: a CLIP vision tower at
336 px with patch 14 (576 visual tokens, feature layer -2, "default" strategy dropping CLS) and a small
Llama decoder, plus a byte-level tokenizer with an ``<image>`` token and a CLIP image processor.
"""

from __future__ import annotations

from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaNextConfig,
    LlavaNextProcessor,
    PreTrainedTokenizerFast,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

from llava.model.language_model.pruning_config import PruningLlamaConfig
from llava.model.language_model.pruning_llama import PruningLlamaForCausalLM
from llava.model.llava_arch import PruningLlavaForConditionalGeneration
from llava.model.llava_next_arch import PruningLlavaNextForConditionalGeneration
from llava.tokenization import IMAGE_TOKEN, SPECIAL_TOKENS, llava_fast_tokenizer


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level tokenizer (one token per byte) with ``<unk> <s> </s> <pad> <image>`` specials, left padding."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    vocab.update({char: len(SPECIAL_TOKENS) + i for i, char in enumerate(sorted(alphabet))})
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = llava_fast_tokenizer(backend)
    return tokenizer


def tiny_llama_config(vocab_size: int = 512, **overrides: Any) -> LlamaConfig:
    """LLaVA-1.5-7B's depth (32 layers, so token budgets map as for 7B) at width 64, 4 heads, 2 KV heads (GQA)."""
    values = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    values.update(overrides)
    return LlamaConfig(**values)


def tiny_vision_config(**overrides: Any) -> CLIPVisionConfig:
    """CLIP ViT at 336 px, patch 14 (576 patches + CLS), 2 layers of width 32."""
    values = dict(
        image_size=336,
        patch_size=14,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        projection_dim=32,
    )
    values.update(overrides)
    return CLIPVisionConfig(**values)


def build_tiny_llava_config(text_overrides: dict | None = None, **pruning_fields: Any) -> LlavaConfig:
    """Config of the tiny LLaVA; its vocabulary matches ``build_tiny_tokenizer()``."""
    return LlavaConfig(vision_config=tiny_vision_config(), **tiny_vlm_fields(text_overrides, pruning_fields))


def tiny_vlm_fields(text_overrides: dict | None, pruning_fields: dict[str, Any]) -> dict[str, Any]:
    """What every tiny VLM config shares: the tiny Llama with the pruning fields (vocabulary of
    ``build_tiny_tokenizer()``), its image token, LLaVA's feature layer -2 without CLS and a GELU projector."""
    tokenizer = build_tiny_tokenizer()
    text = tiny_llama_config(vocab_size=len(tokenizer), **(text_overrides or {}))
    return dict(
        text_config=PruningLlamaConfig.from_llama_config(text, **pruning_fields),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )


def build_tiny_llava(
    seed: int = 0, text_overrides: dict | None = None, **pruning_fields: Any
) -> PruningLlavaForConditionalGeneration:
    """Random tiny LLaVA (eval mode) with the given pruning config fields (``text_overrides``: LM shape)."""
    config = build_tiny_llava_config(text_overrides, **pruning_fields)
    torch.manual_seed(seed)
    return PruningLlavaForConditionalGeneration(config).eval()


def build_tiny_llama(
    seed: int = 0, text_overrides: dict | None = None, **pruning_fields: Any
) -> PruningLlamaForCausalLM:
    """Random tiny Llama LM with the pruning decoder (eval mode)."""
    torch.manual_seed(seed)
    config = PruningLlamaConfig.from_llama_config(tiny_llama_config(**(text_overrides or {})), **pruning_fields)
    return PruningLlamaForCausalLM(config).eval()


def build_tiny_image_processor() -> CLIPImageProcessorPil:
    """CLIP preprocessing at 336 px (resize shortest edge, center crop, CLIP mean/std)."""
    return CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})


TINY_NEXT_TILE = 112
TINY_NEXT_PINPOINTS = [[112, 224], [224, 112], [224, 224], [112, 336], [336, 112]]
"""The tiny LLaVA-NeXT's tiles: 112 px (8 x 8 = 64 features each) on LLaVA-NeXT's anyres layouts scaled down
(1 x 2 ... 2 x 2 tiles plus the base image), so an image gives 64 base features plus 128-256 tile features
and one newline per tile row: 200-336 image tokens, varying with the image's size as on the real model."""


def build_tiny_llava_next_config(text_overrides: dict | None = None, **pruning_fields: Any) -> LlavaNextConfig:
    """Config of the tiny LLaVA-NeXT (anyres at 112 px tiles); vocabulary as ``build_tiny_tokenizer()``."""
    return LlavaNextConfig(
        vision_config=tiny_vision_config(image_size=TINY_NEXT_TILE),
        image_grid_pinpoints=TINY_NEXT_PINPOINTS,
        **tiny_vlm_fields(text_overrides, pruning_fields),
    )


def build_tiny_llava_next(
    seed: int = 0, text_overrides: dict | None = None, **pruning_fields: Any
) -> PruningLlavaNextForConditionalGeneration:
    """Random tiny LLaVA-NeXT (eval mode) with the given pruning config fields."""
    config = build_tiny_llava_next_config(text_overrides, **pruning_fields)
    torch.manual_seed(seed)
    return PruningLlavaNextForConditionalGeneration(config).eval()


def build_tiny_llava_next_processor() -> LlavaNextProcessor:
    """The tiny LLaVA-NeXT's processor: anyres tiles of 112 px and ``<image>`` expanded per image size."""
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": TINY_NEXT_TILE},
        crop_size={"height": TINY_NEXT_TILE, "width": TINY_NEXT_TILE},
        image_grid_pinpoints=TINY_NEXT_PINPOINTS,
    )
    return LlavaNextProcessor(
        image_processor=image_processor, tokenizer=build_tiny_tokenizer(), patch_size=14,
        vision_feature_select_strategy="default", image_token=IMAGE_TOKEN, num_additional_image_tokens=1,
    )
