"""Conversation templates, pad-to-square preprocessing and image-token expansion."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from llava.conversation import build_question_prompt, get_conversation
from llava.mm_utils import expand2square, get_model_name_from_path, process_images, tokenizer_image_token
from llava.model.tiny import build_tiny_image_processor, build_tiny_tokenizer

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


def test_vicuna_v1_prompt_is_llava_15_layout() -> None:
    prompt = build_question_prompt("What is this?", "vicuna_v1", with_image=True)
    assert prompt == f"{VICUNA_SYSTEM} USER: <image>\nWhat is this? ASSISTANT:"
    assert build_question_prompt("Hi", "vicuna_v1", with_image=False) == f"{VICUNA_SYSTEM} USER: Hi ASSISTANT:"


def test_llava_v1_uses_its_own_system_sentence_and_multi_turn_separators() -> None:
    conversation = get_conversation("llava_v1")
    assert "curious human" in conversation.system
    conversation.append_message("USER", "a")
    conversation.append_message("ASSISTANT", "b")
    conversation.append_message("USER", "c")
    conversation.append_message("ASSISTANT", None)
    assert conversation.get_prompt().endswith(" USER: a ASSISTANT: b</s>USER: c ASSISTANT:")
    assert get_conversation("llava_v1").messages == []  # templates are not mutated


def test_unknown_conv_mode_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="llava_v1.*vicuna_v1"):
        get_conversation("chatml")


def test_expand2square_centres_on_background() -> None:
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    square = expand2square(image, (1, 2, 3))
    assert square.size == (40, 40)
    assert square.getpixel((20, 5)) == (1, 2, 3)
    assert square.getpixel((20, 20)) == (255, 0, 0)
    assert square.getpixel((20, 35)) == (1, 2, 3)


def test_process_images_pad_differs_from_crop_for_wide_images() -> None:
    processor = build_tiny_image_processor()
    wide = Image.new("RGB", (300, 100), (255, 255, 255))
    padded = process_images([wide], processor, "pad")
    cropped = process_images([wide], processor, "crop")
    assert padded.shape == cropped.shape == (1, 3, 336, 336)
    # the top rows of the padded image are mean-colour padding, which normalises to about 0
    assert padded[0, :, 0, :].abs().max() < 0.02
    assert cropped[0, :, 0, :].min() > 1.0


def test_tokenizer_image_token_expands_each_placeholder() -> None:
    tokenizer = build_tiny_tokenizer()
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    ids = tokenizer_image_token("ab<image>\ncd", tokenizer, image_id, num_image_tokens=5)
    text_ids = tokenizer("ab", add_special_tokens=False).input_ids
    assert ids[: len(text_ids)] == text_ids
    assert ids.count(image_id) == 5
    assert ids[len(text_ids) : len(text_ids) + 5] == [image_id] * 5
    assert tokenizer.decode(ids[len(text_ids) + 5 :]) == "\ncd"
    tensor = tokenizer_image_token("<image>x", tokenizer, image_id, 3, return_tensors="pt")
    assert isinstance(tensor, torch.Tensor) and tensor.tolist()[:3] == [image_id] * 3


def test_model_name_from_path() -> None:
    assert get_model_name_from_path("llava-hf/llava-1.5-7b-hf/") == "llava-1.5-7b-hf"
    assert get_model_name_from_path("runs/llava-ft/checkpoint-100") == "llava-ft_checkpoint-100"
