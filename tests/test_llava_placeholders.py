"""LLaVA's own call: ``tokenizer_image_token(prompt, tokenizer, IMAGE_TOKEN_INDEX)`` then
``model.generate(input_ids, images=...)``, as its scripts and users write it."""

from __future__ import annotations

import pytest
import torch

from llava.constants import IMAGE_TOKEN_INDEX
from llava.model.placeholders import expand_image_placeholders
from tests.conftest import llava_prompt, pixel_values, with_fields


def test_expansion_is_per_sample_and_keeps_each_padding_side():
    ids = torch.tensor([[0, 0, 7, IMAGE_TOKEN_INDEX, 8], [5, IMAGE_TOKEN_INDEX, 6, IMAGE_TOKEN_INDEX, 9]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    out, out_mask = expand_image_placeholders(ids, mask, image_token_id=4, tokens_per_image=3, pad_token_id=0)
    assert out.shape == (2, 9)
    assert out[0].tolist() == [0, 0, 0, 0, 7, 4, 4, 4, 8] and out_mask[0].tolist() == [0] * 4 + [1] * 5
    assert out[1].tolist() == [5, 4, 4, 4, 6, 4, 4, 4, 9] and out_mask[1].tolist() == [1] * 9
    right, right_mask = expand_image_placeholders(ids[1:, :3], None, 4, 2, 0)
    assert right.tolist() == [[5, 4, 4, 6]] and right_mask.tolist() == [[1, 1, 1, 1]]


def placeholder_prompt(image_token_id: int, prefix: int, suffix: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same prompt as LLaVA writes it (one -200) and as llava-hf does (576 image tokens)."""
    expanded = llava_prompt(image_token_id, prefix, suffix, seed=seed)[0]
    compact = torch.cat([expanded[:prefix], torch.tensor([IMAGE_TOKEN_INDEX]), expanded[prefix + 576 :]])
    return compact, expanded


@torch.no_grad()
@pytest.mark.parametrize("fields", [{}, {"use_fast_v": True, "fast_v_attention_rank": 30}], ids=["unpruned", "fastv"])
def test_generate_with_images_and_placeholders_equals_llava_hf_call(tiny_llava, fields):
    model = with_fields(tiny_llava, **fields)
    compact, expanded = placeholder_prompt(model.config.image_token_id, 6, 9, seed=3)
    pixels = pixel_values(seed=3)
    reference = model.generate(input_ids=expanded[None], pixel_values=pixels, max_new_tokens=4, do_sample=False)
    llava_style = model.generate(compact[None], images=pixels, image_sizes=[(336, 336)], max_new_tokens=4, do_sample=False)
    assert torch.equal(llava_style, reference[:, expanded.numel():])  # LLaVA returns only the new tokens
    logits = model(input_ids=compact[None], images=pixels).logits
    assert torch.allclose(logits, model(input_ids=expanded[None], pixel_values=pixels).logits)


@torch.no_grad()
def test_left_padded_batch_with_placeholders_equals_each_sample_alone(tiny_llava):
    model = with_fields(tiny_llava, use_fast_v=True, fast_v_attention_rank=30)
    image_id = model.config.image_token_id
    prompts = [placeholder_prompt(image_id, p, s, seed=40 + i)[0] for i, (p, s) in enumerate([(6, 12), (2, 4), (9, 1)])]
    pixels = pixel_values(3, seed=4)
    singles = [model.generate(p[None], images=pixels[i : i + 1], max_new_tokens=3, do_sample=False)[0] for i, p in enumerate(prompts)]
    width = max(len(p) for p in prompts)
    ids = torch.full((3, width), 3)
    mask = torch.zeros(3, width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :], mask[i, width - len(p) :] = p, 1
    batched = model.generate(ids, attention_mask=mask, images=pixels, max_new_tokens=3, do_sample=False, pad_token_id=3)
    for i in range(3):
        assert torch.equal(batched[i], singles[i]), f"prompt {i}"


def test_images_and_pixel_values_together_are_an_error(tiny_llava):
    compact, _ = placeholder_prompt(tiny_llava.config.image_token_id, 2, 2, seed=0)
    with pytest.raises(ValueError, match="not both"):
        tiny_llava(input_ids=compact[None], images=pixel_values(), pixel_values=pixel_values())
