"""The VLM families the builder loads, picked from the checkpoint's config, and what each gives the pruner.

| family | config | image tokens per image | what the span holds |
|---|---|---|---|
| LLaVA-1.5 | ``LlavaConfig`` | fixed: (image_size / patch)^2 (576 at 336/14) | one tower's patch features |
| LLaVA-NeXT | ``LlavaNextConfig`` | varies with the image size: base + anyres tiles + one newline per tile row (2,144-2,928 at 336/14 for the 7B models' grids) | the whole anyres run, scored as one span |

A family with a fixed count plans a budget once at load; one whose count varies plans it for each prompt's
span length (``visual_token_num`` or ``retain_ratio`` of that image's tokens).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from transformers import LlavaConfig, LlavaNextConfig, PretrainedConfig

from llava.model.llava_arch import PruningLlavaForConditionalGeneration
from llava.model.llava_next_arch import PruningLlavaNextForConditionalGeneration
from llava.model.vision import image_features_per_image


def anyres_max_image_tokens(config: LlavaNextConfig) -> int:
    """Most image tokens one LLaVA-NeXT image can give: the base image's features plus, for the largest grid
    of ``image_grid_pinpoints``, its tiles' features and one newline token per feature row (an image with the
    grid's exact aspect ratio, so nothing is unpadded away)."""
    per_side = config.vision_config.image_size // config.vision_config.patch_size
    tile = config.vision_config.image_size

    def grid_tokens(height: int, width: int) -> int:
        rows, columns = height // tile * per_side, width // tile * per_side
        return rows * columns + rows

    return per_side**2 + max(grid_tokens(h, w) for h, w in config.image_grid_pinpoints)


@dataclass(frozen=True)
class VlmFamily:
    """One family: its config and pruning model classes, and its image-token count (fixed or at most)."""

    name: str
    config_class: type[PretrainedConfig]
    model_class: type
    fixed_image_tokens: Callable[[PretrainedConfig], int] | None
    max_image_tokens: Callable[[PretrainedConfig], int]
    processor_expands_images: bool = False
    """The loaders use the family's processor (text and images together: it expands ``<image>`` per image);
    else LLaVA-1.5's image processor, ``tokenizer_image_token`` and ``process_images``."""

    def image_tokens(self, config: PretrainedConfig) -> int | None:
        """Image tokens of every image when the family's count is fixed, else None."""
        return None if self.fixed_image_tokens is None else self.fixed_image_tokens(config)


FAMILIES = (
    VlmFamily("llava", LlavaConfig, PruningLlavaForConditionalGeneration, image_features_per_image, image_features_per_image),
    VlmFamily("llava_next", LlavaNextConfig, PruningLlavaNextForConditionalGeneration, None, anyres_max_image_tokens, True),
)


def family_of(config: PretrainedConfig) -> VlmFamily | None:
    """The VLM family of ``config`` (None for a text-only config)."""
    return next((family for family in FAMILIES if type(config) is family.config_class), None)


def supported_configs() -> str:
    """The config classes the builder loads, for error messages."""
    return ", ".join([family.config_class.__name__ for family in FAMILIES] + ["LlamaConfig"])
