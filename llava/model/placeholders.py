"""LLaVA's ``IMAGE_TOKEN_INDEX`` (-200) placeholders, expanded to the model's image tokens.

LLaVA's code and its users' scripts build prompts with ``tokenizer_image_token(prompt, tokenizer,
IMAGE_TOKEN_INDEX)``: one ``-200`` per image, which LLaVA's ``prepare_inputs_labels_for_multimodal``
replaces by the image's features. A llava-hf model instead wants ``image_token_id`` repeated once per
feature. ``expand_image_placeholders`` turns the first form into the second, per sample, keeping each
sample's padding on the side it was (so a batch with different placeholder counts stays aligned).
"""

from __future__ import annotations

import torch

from llava.constants import IMAGE_TOKEN_INDEX


def has_placeholders(input_ids: torch.Tensor | None) -> bool:
    return input_ids is not None and bool((input_ids == IMAGE_TOKEN_INDEX).any())


def padding_side(attention_mask: torch.Tensor | None) -> str:
    """``left`` when some row is padded at its start (its first position masked), else ``right``."""
    if attention_mask is None:
        return "right"
    return "left" if bool((attention_mask[:, 0] == 0).any()) else "right"


def expand_image_placeholders(
    input_ids: torch.Tensor, attention_mask: torch.Tensor | None, image_token_id: int, tokens_per_image: int, pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` ``[B, T']`` with every ``-200`` in ``input_ids`` ``[B, T]`` replaced by
    ``tokens_per_image`` copies of ``image_token_id`` (mask 1). Rows are re-padded with ``pad_token_id``
    (mask 0) on the side their padding was on (``padding_side``); a missing mask means no padding."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    side = padding_side(attention_mask)
    rows = []
    for ids, mask in zip(input_ids, attention_mask, strict=True):
        real = mask.bool()
        tokens = ids[real]
        placeholder = tokens == IMAGE_TOKEN_INDEX
        repeats = torch.where(placeholder, tokens_per_image, 1)
        tokens = torch.where(placeholder, image_token_id, tokens).repeat_interleave(repeats)
        rows.append(tokens)
    width = max(len(tokens) for tokens in rows)
    out_ids = torch.full((len(rows), width), pad_token_id, dtype=input_ids.dtype, device=input_ids.device)
    out_mask = torch.zeros((len(rows), width), dtype=attention_mask.dtype, device=attention_mask.device)
    for row, tokens in enumerate(rows):
        span = slice(width - len(tokens), width) if side == "left" else slice(0, len(tokens))
        out_ids[row, span] = tokens
        out_mask[row, span] = 1
    return out_ids, out_mask
