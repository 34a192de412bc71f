"""Image preprocessing and multimodal tokenisation for LLaVA-style prompts."""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX

ALPHA_BACKGROUND = (255, 255, 255)  # transparent pixels are shown on white
DIRECT_MODES = ("RGB", "L", "1", "CMYK", "YCbCr")  # Pillow converts these to RGB faithfully
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
HIGH_DEPTH_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")


class ImageDecodeError(ValueError):
    """An image that cannot be shown to the model faithfully (unsupported mode, out-of-range pixels)."""


def _high_depth_to_l(image: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit integer or float greyscale image as 8-bit greyscale, scaled by its bit depth.

    16-bit modes (and ``I`` holding values above 255, as a 16-bit PNG may open) map 0..65535 to 0..255;
    ``F`` in [0, 1] maps to 0..255 and ``F``/``I`` already in 0..255 are kept. Other ranges are refused."""
    pixels = np.asarray(image, dtype=np.float64)
    low, high = (float(pixels.min()), float(pixels.max())) if pixels.size else (0.0, 0.0)
    if image.mode == "F" and low >= 0.0 and high <= 1.0:
        scale = 255.0
    elif image.mode.startswith("I;16") or (image.mode == "I" and 255 < high <= 65535 and low >= 0):
        scale = 255.0 / 65535.0
    elif low >= 0.0 and high <= 255.0:
        scale = 1.0
    else:
        raise ImageDecodeError(
            f"{image.mode} image with pixel values {low:g}..{high:g}: expected 0..1 (float), 0..255 or 0..65535"
        )
    return Image.fromarray(np.clip(np.rint(pixels * scale), 0, 255).astype(np.uint8), mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """An RGB copy of ``image`` that shows what the file shows, in every Pillow mode.

    16-bit / 32-bit / float greyscale is scaled by bit depth (Pillow's own conversion clips it to
    white); palette images resolve their palette (and transparency); transparent pixels are composited
    on white; CMYK and YCbCr use Pillow's conversion. Any other mode is an ``ImageDecodeError``."""
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in HIGH_DEPTH_MODES:
        image = _high_depth_to_l(image)
    if image.mode in ALPHA_MODES:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if image.mode in DIRECT_MODES:
        return image.convert("RGB")
    raise ImageDecodeError(f"unsupported image mode {image.mode!r} (supported: {', '.join(DIRECT_MODES + ALPHA_MODES + HIGH_DEPTH_MODES + ('P',))})")


def open_rgb_image(source: str | Path | io.BytesIO) -> Image.Image:
    """Open and fully decode an image file as RGB (``to_rgb``); a truncated, corrupt or unsupported
    file raises ``ImageDecodeError`` with a one-line reason."""
    try:
        with Image.open(source) as image:
            image.load()
            return to_rgb(image)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:  # Pillow reports broken files this way
        if isinstance(exc, FileNotFoundError):
            raise
        raise ImageDecodeError(f"cannot decode image: {exc}") from exc


def decode_base64_rgb(data: str) -> Image.Image:
    """An RGB image from base64 text (MMBench's ``image`` cell)."""
    try:
        raw = base64.b64decode(data)
    except (binascii.Error, ValueError) as exc:
        raise ImageDecodeError(f"image cell is not base64: {exc}") from exc
    return open_rgb_image(io.BytesIO(raw))


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
    rgb_images = [to_rgb(image) for image in images]
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
