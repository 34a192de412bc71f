"""``process_images`` and ``tokenizer_image_token`` give the pixels and ids LLaVA-1.5's own pipeline gives.

References written independently of ``llava.mm_utils``: the pixels from numpy (pad to a square of the
processor's mean colour, PIL bicubic resize to 336, scale, normalise: LLaVA-1.5's ``pad`` with the PIL
CLIP processor), the ids from raw sentencepiece (what LLaVA's slow ``LlamaTokenizer`` wraps): BOS, the
text before ``<image>``, ``IMAGE_TOKEN_INDEX``, the text after, each chunk encoded on its own.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from llava.constants import IMAGE_TOKEN_INDEX
from llava.conversation import build_question_prompt
from llava.mm_utils import process_images, tokenizer_image_token
from tests.test_original_llava_format import TEXT

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def llava_pixels_reference(image: Image.Image, side: int = 336) -> np.ndarray:
    width, height = image.size
    square = Image.new("RGB", (max(width, height),) * 2, tuple(int(m * 255) for m in CLIP_MEAN))
    square.paste(image, ((max(width, height) - width) // 2, (max(width, height) - height) // 2))
    resized = np.asarray(square.resize((side, side), Image.BICUBIC), dtype=np.float64) / 255.0
    return ((resized - np.array(CLIP_MEAN)) / np.array(CLIP_STD)).transpose(2, 0, 1)


@pytest.mark.parametrize("size", [(500, 300), (200, 410), (336, 336)])
def test_process_images_pad_equals_llava_15_pixels(size: tuple[int, int]) -> None:
    rng = np.random.default_rng(size[0])
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    processor = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                                      image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))
    pixels = process_images([image], processor, image_aspect_ratio="pad")
    assert pixels.shape == (1, 3, 336, 336)
    torch.testing.assert_close(pixels[0].double(), torch.from_numpy(llava_pixels_reference(image)), atol=1e-5, rtol=0)


def train_llama_like_sentencepiece(folder: Path) -> Path:
    """A BPE model with Llama's settings: byte fallback, no normalisation, whitespace kept, dummy prefix."""
    import sentencepiece

    folder.mkdir(parents=True)
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXT), model_prefix=str(folder / "sp"), vocab_size=320, model_type="bpe",
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=True, split_digits=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
    )
    return folder / "sp.model"


def test_tokenizer_image_token_equals_sentencepiece_chunks(tmp_path: Path) -> None:
    import sentencepiece

    sp_model = train_llama_like_sentencepiece(tmp_path / "sp")
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    (folder / "tokenizer.model").write_bytes(sp_model.read_bytes())
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
         "add_bos_token": True, "add_eos_token": False, "legacy": False}))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    processor = sentencepiece.SentencePieceProcessor(model_file=str(sp_model))

    prompt = build_question_prompt("what is in the image?\nanswer the question using a single word", "vicuna_v1", True)
    before, after = prompt.split("<image>")
    expected = [processor.bos_id(), *processor.encode(before), IMAGE_TOKEN_INDEX, *processor.encode(after)]
    ids = tokenizer_image_token(prompt, tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")
    assert ids.tolist() == expected
