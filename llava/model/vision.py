"""The vision side of a LLaVA model as pruning sees it: feature counts, [CLS] attention, the token check."""

from __future__ import annotations

import torch
from transformers import LlavaConfig


def cls_attention(layer: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """``[B, S]`` [CLS] -> patch attention of a CLIP encoder ``layer`` on its input ``hidden`` ``[B, 1 + S, d]``.

    Only the CLS row is computed (q of one token against every key), mean over heads; the tower keeps SDPA.
    """
    attn = layer.self_attn
    normed = layer.layer_norm1(hidden)
    batch, tokens, _ = normed.shape
    query = attn.q_proj(normed[:, :1]).view(batch, 1, attn.num_heads, attn.head_dim).transpose(1, 2)
    keys = attn.k_proj(normed).view(batch, tokens, attn.num_heads, attn.head_dim).transpose(1, 2)
    probs = (query.float() @ keys.float().transpose(-1, -2) * attn.scale).softmax(dim=-1)  # [B, heads, 1, N]
    return probs[:, :, 0, 1:].mean(dim=1)


def image_features_per_image(config: LlavaConfig) -> int:
    """Visual tokens one image yields: (image_size / patch_size)^2 (+1 with the "full" strategy's CLS)."""
    vision = config.vision_config
    patches = (vision.image_size // vision.patch_size) ** 2
    return patches + (1 if config.vision_feature_select_strategy == "full" else 0)


def check_image_tokens(config: LlavaConfig, input_ids: torch.Tensor, pixel_values: torch.Tensor) -> None:
    """The prompt must hold one image token per visual feature (before any heavy work)."""
    per_image = image_features_per_image(config)
    found = int((input_ids == config.image_token_id).sum())
    expected = per_image * pixel_values.shape[0]
    if found != expected:
        raise ValueError(
            f"the prompt holds {found} image tokens (id {config.image_token_id}) but {pixel_values.shape[0]} "
            f"image(s) give {expected} features ({per_image} per image): expand each <image> placeholder to "
            f"{per_image} tokens (llava.mm_utils.tokenizer_image_token does this)"
        )
