"""Image preprocessing and multimodal tokenisation for LLaVA-style prompts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX


def expand2square(image: Image.Image, background_color: tuple[int, ...]) -> Image.Image:
    """Pad an image to a square canvas of ``background_color``, centring it (LLaVA-1.5's "pad")."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), background_color)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def process_images(
    images: Sequence[Image.Image], image_processor: Any, image_aspect_ratio: str = "pad"
) -> torch.Tensor:
    """Turn PIL images into a ``[B, 3, H, W]`` pixel tensor.

    ``image_aspect_ratio="pad"`` pads each image to a square filled with the processor's mean colour
    before the processor resizes and crops it (original LLaVA-1.5); any other value hands the images
    to the processor unchanged (resize shortest side + centre crop).
    """
    rgb_images = [image.convert("RGB") for image in images]
    if image_aspect_ratio == "pad":
        mean_colour = tuple(int(channel * 255) for channel in image_processor.image_mean)
        rgb_images = [expand2square(image, mean_colour) for image in rgb_images]
    return image_processor(images=rgb_images, return_tensors="pt")["pixel_values"]


def leading_special_token_ids(tokenizer: Any) -> list[int]:
    """The ids a tokenizer puts before any text by default (e.g. ``[bos]`` for Llama, ``[]`` for others)."""
    with_specials = list(tokenizer("a").input_ids)
    without_specials = list(tokenizer("a", add_special_tokens=False).input_ids)
    for start in range(len(with_specials) - len(without_specials) + 1):
        if with_specials[start : start + len(without_specials)] == without_specials:
            return with_specials[:start]
    return []


def tokenizer_image_token(
    prompt: str,
    tokenizer: Any,
    image_token_id: int = IMAGE_TOKEN_INDEX,
    num_image_tokens: int = 1,
    return_tensors: str | None = None,
) -> list[int] | torch.Tensor:
    """Tokenise a prompt whose ``<image>`` placeholders become ``num_image_tokens`` image-token ids each.

    The text around each placeholder is tokenised on its own (as LLaVA does), so the placeholder never
    depends on how the tokenizer would split ``<image>``; the tokenizer's leading special tokens (BOS)
    appear once, at the start. For a llava-hf model pass ``model.config.image_token_id`` and the number
    of image features (576 for LLaVA-1.5 at 336 px).
    """
    text_chunks = prompt.split(DEFAULT_IMAGE_TOKEN)
    input_ids = leading_special_token_ids(tokenizer)
    for chunk_index, chunk in enumerate(text_chunks):
        if chunk_index > 0:
            input_ids.extend([image_token_id] * num_image_tokens)
        if chunk:
            input_ids.extend(tokenizer(chunk, add_special_tokens=False).input_ids)
    if return_tensors == "pt":
        return torch.tensor(input_ids, dtype=torch.long)
    if return_tensors is not None:
        raise ValueError(f"unsupported tensor type {return_tensors!r}; use 'pt' or None")
    return input_ids


def get_model_name_from_path(model_path: str) -> str:
    """A short model name from a path or hub id (``.../checkpoint-N`` keeps its parent's name)."""
    parts = model_path.strip("/").split("/")
    if parts[-1].startswith("checkpoint-") and len(parts) > 1:
        return f"{parts[-2]}_{parts[-1]}"
    return parts[-1]
