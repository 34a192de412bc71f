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
from transformers import StoppingCriteria

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
    """An RGB image from base64 text (MMBench's ``image`` cell; LLaVA's ``load_image_from_base64``)."""
    try:
        raw = base64.b64decode(data)
    except (binascii.Error, ValueError) as exc:
        raise ImageDecodeError(f"image cell is not base64: {exc}") from exc
    return open_rgb_image(io.BytesIO(raw))


load_image_from_base64 = decode_base64_rgb
"""LLaVA's name (it returned the image in its file's mode; this one is RGB, as every LLaVA caller converts)."""


def expand2square(image: Image.Image, background_color: tuple[int, ...]) -> Image.Image:
    """Pad an image to a square canvas of ``background_color``, centring it (LLaVA-1.5's "pad")."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), background_color)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


DEFAULT_IMAGE_ASPECT_RATIO = "pad"
"""What ``process_images`` does for a model config without ``image_aspect_ratio``: llava-hf configs do not carry
the field, and LLaVA-1.5 (whose original configs say ``"pad"``) pads. LLaVA itself would not pad then."""


def image_aspect_ratio_of(model_cfg: Any) -> str | None:
    """The preprocessing ``process_images``'s third argument asks for: a mode name as given; ``None``: the
    default (``DEFAULT_IMAGE_ASPECT_RATIO``); a config: its ``image_aspect_ratio``, or the default without one."""
    if model_cfg is None:
        return DEFAULT_IMAGE_ASPECT_RATIO
    if isinstance(model_cfg, str):
        return model_cfg
    return getattr(model_cfg, "image_aspect_ratio", DEFAULT_IMAGE_ASPECT_RATIO)  # a field set to None: no padding


def pad_to_square(image: Image.Image, image_processor: Any) -> Image.Image:
    """LLaVA-1.5's ``pad``: the image centred on a square of the processor's mean colour (``int(mean * 255)``)."""
    return expand2square(image, tuple(int(channel * 255) for channel in image_processor.image_mean))


def process_images(
    images: Sequence[Image.Image], image_processor: Any, model_cfg: Any = None, image_aspect_ratio: str | None = None
) -> torch.Tensor:
    """Turn PIL images into a ``[B, 3, H, W]`` pixel tensor, as LLaVA's ``process_images(images,
    image_processor, model.config)`` does.

    ``model_cfg``: a model config (its ``image_aspect_ratio``; ``"pad"`` when it has none, see
    ``DEFAULT_IMAGE_ASPECT_RATIO``), a mode name, or None (``"pad"``); ``image_aspect_ratio=`` overrides it.
    ``"pad"`` pads each image to a square of the processor's mean colour before the processor resizes and
    crops it (LLaVA-1.5); ``"anyres"`` (LLaVA-1.6) is refused; any other value hands the images to the
    processor unchanged (resize shortest side + centre crop). Every image is first converted to RGB
    (``to_rgb``). The evaluation loaders call this same function.
    """
    mode = image_aspect_ratio if image_aspect_ratio is not None else image_aspect_ratio_of(model_cfg)
    if mode == "anyres":
        raise ValueError("image_aspect_ratio 'anyres' (LLaVA-1.6) is not supported: LLaVA-1.5 models use 'pad'")
    rgb_images = [to_rgb(image) for image in images]
    if mode == "pad":
        rgb_images = [pad_to_square(image, image_processor) for image in rgb_images]
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


class KeywordsStoppingCriteria(StoppingCriteria):
    """LLaVA's stopping criterion: a sequence is done once its generated text holds one of ``keywords``
    (e.g. the template's separator, ``conv.sep`` or ``conv.sep2``).

    ``KeywordsStoppingCriteria(keywords, tokenizer, input_ids)`` then ``model.generate(...,
    stopping_criteria=[criterion])``. A keyword is found when the generated ids end with its ids, or when
    the text of the last generated tokens (special tokens skipped) contains it. Only tokens after the prompt
    count: ``input_ids`` gives the prompt length, except when it holds ``IMAGE_TOKEN_INDEX`` placeholders,
    which the model expands to its image tokens; then the prompt is what the sequence held before the first
    token this criterion sees in a generation. Calling returns one bool per sequence (transformers' contract,
    so finished rows of a batch stop while the others go on; LLaVA returned one bool for the batch, true once
    every row was done); ``call_for_batch`` answers for the first row, as LLaVA's did.
    """

    def __init__(self, keywords: Sequence[str], tokenizer: Any, input_ids: torch.Tensor) -> None:
        self.keywords = [keywords] if isinstance(keywords, str) else list(keywords)
        if not self.keywords or not all(self.keywords):
            raise ValueError(f"keywords must be non-empty strings, got {keywords!r}")
        self.tokenizer = tokenizer
        self.keyword_ids = [torch.tensor(tokenizer(k, add_special_tokens=False).input_ids, dtype=torch.long) for k in self.keywords]
        self.max_keyword_len = max(len(ids) for ids in self.keyword_ids)
        # a token decodes to at least one byte; a character takes up to 4 (byte-level tokenizers)
        self._window = max(self.max_keyword_len, 4 * max(len(k) for k in self.keywords))
        self.start_len = input_ids.shape[1]
        self._expanded_prompt = bool((input_ids == IMAGE_TOKEN_INDEX).any())
        self._prompt_len: int | None = None

    def _generation_start(self, length: int) -> int:
        """Where the generated tokens begin in a sequence of ``length`` tokens."""
        if not self._expanded_prompt:
            return self.start_len
        if self._prompt_len is None or length <= self._prompt_len:  # the first token of a generation
            self._prompt_len = length - 1
        return self._prompt_len

    def _holds_keyword(self, generated: torch.Tensor) -> bool:
        """Whether generated ids ``[T]`` end with a keyword's ids or their recent text contains a keyword."""
        if generated.numel() == 0:
            return False
        for ids in self.keyword_ids:
            if 0 < len(ids) <= len(generated) and torch.equal(generated[-len(ids):], ids.to(generated.device)):
                return True
        text = self.tokenizer.decode(generated[-self._window:], skip_special_tokens=True)
        return any(keyword in text for keyword in self.keywords)

    def call_for_batch(self, output_ids: torch.Tensor, scores: Any = None, **kwargs: Any) -> bool:
        """Whether the first sequence of ``output_ids`` ``[B, T]`` holds a keyword."""
        return self._holds_keyword(output_ids[0, self._generation_start(output_ids.shape[1]):])

    def __call__(self, input_ids: torch.Tensor, scores: Any = None, **kwargs: Any) -> torch.BoolTensor:
        start = self._generation_start(input_ids.shape[1])
        done = [self._holds_keyword(row[start:]) for row in input_ids]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)
