"""A checkpoint in the original LLaVA format (``liuhaotian/llava-v1.5-7b``'s layout) loads through
``load_pretrained_model`` and gives the logits of the same weights loaded as llava-hf."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer, CLIPVisionModel, LlavaConfig, LlavaForConditionalGeneration

from llava.constants import IMAGE_TOKEN_INDEX
from llava.mm_utils import tokenizer_image_token
from llava.model.builder import load_pretrained_model
from llava.model.tiny import build_tiny_image_processor, tiny_llama_config, tiny_vision_config
from tests.conftest import pixel_values

sentencepiece = pytest.importorskip("sentencepiece")

TEXT = ["a chat between a curious human and an artificial intelligence assistant",
        "USER: what is in the image? ASSISTANT: a red circle and a blue square",
        "answer the question using a single word or phrase"] * 20


def train_sentencepiece(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXT), model_prefix=str(folder / "sp"), vocab_size=60, model_type="unigram",
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
    )
    return folder / "sp.model"


def write_original_checkpoint(reference: LlavaForConditionalGeneration, folder: Path, tower: Path, sp_model: Path) -> None:
    """``reference``'s weights as LLaVA's ``LlavaLlamaForCausalLM`` saves them (written out here by hand)."""
    folder.mkdir(parents=True, exist_ok=True)
    text = reference.config.text_config.to_dict()
    vocab = reference.config.image_token_id  # the original vocabulary has no image token
    config = {k: v for k, v in text.items() if k not in ("model_type", "architectures")}
    config.update(vocab_size=vocab, architectures=["LlavaLlamaForCausalLM"], model_type="llava_llama",
                  mm_vision_tower=str(tower), mm_projector_type="mlp2x_gelu", mm_vision_select_layer=-2,
                  mm_vision_select_feature="patch", mm_hidden_size=reference.config.vision_config.hidden_size,
                  mm_use_im_start_end=False, mm_use_im_patch_token=False, image_aspect_ratio="pad")
    (folder / "config.json").write_text(json.dumps(config))
    weights = {}
    for name, tensor in reference.state_dict().items():
        if name.startswith("model.vision_tower."):
            continue
        if name.startswith("model.language_model."):
            name = "model." + name.removeprefix("model.language_model.")
        name = name.replace("model.multi_modal_projector.linear_1.", "model.mm_projector.0.")
        name = name.replace("model.multi_modal_projector.linear_2.", "model.mm_projector.2.")
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            tensor = tensor[:vocab]
        weights[name] = tensor.contiguous()
    save_file(weights, folder / "model.safetensors")
    (folder / "tokenizer.model").write_bytes(sp_model.read_bytes())
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
         "add_bos_token": True, "add_eos_token": False, "legacy": False}))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("original_llava")
    sp_model = train_sentencepiece(root / "sp")
    vocab = sentencepiece.SentencePieceProcessor(model_file=str(sp_model)).get_piece_size()
    torch.manual_seed(0)
    config = LlavaConfig(vision_config=tiny_vision_config(), text_config=tiny_llama_config(vocab_size=vocab + 1, pad_token_id=0),
                         image_token_id=vocab, vision_feature_layer=-2, vision_feature_select_strategy="default",
                         projector_hidden_act="gelu")
    reference = LlavaForConditionalGeneration(config).eval()
    tower = root / "clip-tower"
    tower_model = CLIPVisionModel(config.vision_config)
    tower_model.load_state_dict({k.removeprefix("model.vision_tower."): v for k, v in reference.state_dict().items()
                                 if k.startswith("model.vision_tower.")})
    tower_model.save_pretrained(tower)
    build_tiny_image_processor().save_pretrained(tower)
    write_original_checkpoint(reference, root / "llava-v1.5-tiny", tower, sp_model)
    llava_hf = root / "llava-hf-tiny"  # the same weights in llava-hf layout
    reference.save_pretrained(llava_hf)
    build_tiny_image_processor().save_pretrained(llava_hf)
    tokenizer = AutoTokenizer.from_pretrained(root / "llava-v1.5-tiny")
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    tokenizer.save_pretrained(llava_hf)
    return {"reference": reference, "original": root / "llava-v1.5-tiny", "llava_hf": llava_hf, "vocab": vocab}


@torch.no_grad()
@pytest.mark.parametrize("method", [None, "fastv", "pdrop"])
def test_original_format_logits_equal_the_llava_hf_weights(checkpoints, method):
    params = {"visual_token_num": 128} if method else {}
    tokenizer, model, _, _ = load_pretrained_model(str(checkpoints["original"]), None, "llava-v1.5-tiny",
                                                   pruning_method=method, **params)
    _, hf_model, _, _ = load_pretrained_model(str(checkpoints["llava_hf"]), pruning_method=method, **params)
    vocab = checkpoints["vocab"]
    assert tokenizer.convert_tokens_to_ids("<image>") == vocab == model.config.image_token_id
    prompt = "USER: <image>\nwhat is in the image? ASSISTANT:"
    ids = tokenizer_image_token(prompt, tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")[None]
    assert int((ids == IMAGE_TOKEN_INDEX).sum()) == 1 and ids[0, 0] == tokenizer.bos_token_id
    pixels = pixel_values(seed=5)
    logits = model(input_ids=ids, images=pixels).logits[..., :vocab]  # LLaVA's call
    expanded = tokenizer_image_token(prompt, tokenizer, vocab, 576, return_tensors="pt")[None]
    assert torch.allclose(logits, hf_model(input_ids=expanded, pixel_values=pixels).logits[..., :vocab], atol=1e-5)
    if method is None:
        stock = checkpoints["reference"](input_ids=expanded, pixel_values=pixels).logits[..., :vocab]
        assert torch.allclose(logits, stock, atol=1e-5)


def test_unsupported_projector_is_a_clear_error(checkpoints, tmp_path):
    folder = tmp_path / "linear"
    folder.mkdir()
    for item in checkpoints["original"].iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "mm_projector_type": "linear"}))
    with pytest.raises(ValueError, match="mm_projector_type 'linear' is not supported"):
        load_pretrained_model(str(folder))
