"""LLaVA's loading arguments: device, dtype, device_map (a model split by accelerate), attention kernel,
8-/4-bit, and the text models the pruning decoder runs (Llama, Mistral without a window) or refuses."""

from __future__ import annotations

import pytest
import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration, MistralConfig, Qwen2Config

from llava.model.builder import load_pretrained_model
from llava.model.placement import plan_placement
from llava.model.tiny import build_tiny_image_processor, build_tiny_tokenizer, tiny_vision_config
from tests.conftest import llava_prompt, pixel_values

METHODS = {
    "fastv": {"visual_token_num": 64},
    "sparsevlm": {"visual_token_num": 64},
    "pdrop": {"visual_token_num": 64},
    "vispruner": {"visual_token_num": 64},
    "cdpruner": {"visual_token_num": 64},
}


def split_device_map(layers: int, offloaded: range) -> dict[str, str]:
    """Every module on the CPU except decoder layers ``offloaded``, whose weights accelerate keeps on disk and
    loads for each call (the hooks a multi-GPU split uses, with weights absent between calls)."""
    device_map = {
        "model.vision_tower": "cpu",
        "model.multi_modal_projector": "cpu",
        "model.language_model.embed_tokens": "cpu",
        "model.language_model.norm": "cpu",
        "model.language_model.rotary_emb": "cpu",
        "lm_head": "cpu",
    }
    for layer in range(layers):
        device_map[f"model.language_model.layers.{layer}"] = "disk" if layer in offloaded else "cpu"
    return device_map


@pytest.mark.parametrize("method", sorted(METHODS))
@torch.no_grad()
def test_a_model_split_by_device_map_prunes_and_answers_as_the_whole_model(method):
    whole = load_pretrained_model("tiny-random-llava", pruning_method=method, **METHODS[method])[1]
    # the scoring layers of every method (FastV K-1 = 1, PDrop / SparseVLM 2, 6, 15, ...) are among the offloaded ones
    device_map = split_device_map(whole.config.text_config.num_hidden_layers, range(1, 20))
    split = load_pretrained_model("tiny-random-llava", device_map=device_map, pruning_method=method, **METHODS[method])[1]
    assert split.model.language_model.layers[2].self_attn.q_proj.weight.device.type == "meta"  # weights really off
    ids = llava_prompt(whole.config.image_token_id, 6, 12, seed=3)
    pixels = pixel_values(seed=3)
    expected = whole(input_ids=ids, pixel_values=pixels).logits
    got = split(input_ids=ids, pixel_values=pixels).logits
    assert torch.allclose(got, expected, atol=1e-5)
    assert split.pruning_record["kept_per_layer"] == whole.pruning_record["kept_per_layer"]
    tokens = dict(max_new_tokens=4, do_sample=False)
    assert torch.equal(split.generate(input_ids=ids, pixel_values=pixels, **tokens),
                       whole.generate(input_ids=ids, pixel_values=pixels, **tokens))


def test_device_map_auto_loads_on_this_machine():
    model = load_pretrained_model("tiny-random-llava", device_map="auto", pruning_method="fastv", visual_token_num=64)[1]
    assert hasattr(model, "hf_device_map")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_torch_dtype_applies_to_every_kind_of_model(dtype):
    model = load_pretrained_model("tiny-random-llava", torch_dtype=str(dtype).removeprefix("torch."))[1]
    assert {p.dtype for p in model.parameters()} == {dtype}
    shipped = load_pretrained_model("playground/models/shapes-llava", torch_dtype=dtype)[1]
    assert {p.dtype for p in shipped.parameters()} == {dtype}


def test_defaults_follow_llava_cuda_float16_else_cpu_float32():
    placement = plan_placement()
    if torch.cuda.is_available():
        assert (placement.device.type, placement.dtype) == ("cuda", torch.float16)
    elif not torch.backends.mps.is_available():
        assert (placement.device.type, placement.dtype) == ("cpu", torch.float32)
    assert load_pretrained_model("tiny-random-llava")[1].device == placement.device


def test_attn_implementation_is_used():
    model = load_pretrained_model("tiny-random-llava", attn_implementation="eager")[1]
    assert model.config.text_config._attn_implementation == "eager"


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"load_8bit": True}, "needs bitsandbytes"),
    ({"load_8bit": True, "load_4bit": True}, "exclusive"),
    ({"use_flash_attn": True}, "flash_attention_2"),
    ({"attn_implementation": "fast"}, "valid: eager, sdpa"),
    ({"device_map": "everywhere"}, "valid: auto, balanced"),
    ({"torch_dtype": "int8"}, "valid: float32, bfloat16, float16"),
    ({"device": "tpu"}, "unknown device"),
])
def test_loading_arguments_that_cannot_work_are_one_line_before_any_weight(kwargs, expected, monkeypatch):
    import importlib.util

    if "load_8bit" in kwargs and importlib.util.find_spec("bitsandbytes") is not None and "load_4bit" not in kwargs:
        pytest.skip("bitsandbytes is installed here")
    with pytest.raises(ValueError, match=expected):
        load_pretrained_model("playground/models/shapes-llava", **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error a CPU-only machine gives")
def test_cuda_on_a_machine_without_it_says_so():
    with pytest.raises(ValueError, match="CUDA is not available"):
        load_pretrained_model("tiny-random-llava", device="cuda")


def save_llava_with_text(tmp_path, text_config) -> str:
    config = LlavaConfig(vision_config=tiny_vision_config(), text_config=text_config,
                         image_token_id=text_config.vocab_size - 1, vision_feature_layer=-2)
    torch.manual_seed(0)
    stock = LlavaForConditionalGeneration(config).eval()
    stock.save_pretrained(tmp_path)
    build_tiny_image_processor().save_pretrained(tmp_path)
    build_tiny_tokenizer().save_pretrained(tmp_path)
    return str(tmp_path)


def small_text(kind, **extra):
    fields = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=2048)
    return kind(**fields, **extra)


@torch.no_grad()
def test_mistral_without_a_window_runs_exactly_as_stock(tmp_path):
    path = save_llava_with_text(tmp_path, small_text(MistralConfig, sliding_window=None))
    stock = LlavaForConditionalGeneration.from_pretrained(path).eval()
    ours = load_pretrained_model(path)[1]
    ids = llava_prompt(stock.config.image_token_id, 3, 5, seed=0)
    pixels = pixel_values(seed=0)
    assert torch.allclose(ours(input_ids=ids, pixel_values=pixels).logits,
                          stock(input_ids=ids, pixel_values=pixels).logits, atol=1e-5)


@pytest.mark.parametrize(("text", "expected"), [
    (lambda: small_text(Qwen2Config), "the text model is qwen2"),
    (lambda: small_text(MistralConfig, sliding_window=256), "sliding_window=256"),
])
def test_text_models_the_decoder_does_not_run_are_refused_in_one_line(tmp_path, text, expected):
    path = save_llava_with_text(tmp_path, text())
    with pytest.raises(ValueError, match=expected):
        load_pretrained_model(path, pruning_method="fastv", visual_token_num=64)
