"""Every VLM family through the same builder with the same guarantees (tiny random model of each class):
no pruning == stock transformers, FastV == the official rule on the family's span, batch == single, generation
with cache == without, the record after ``generate`` == after ``forward``, and budgets for varying token counts."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration

from llava.model.builder import load_pretrained_model
from llava.model.families import anyres_max_image_tokens
from llava.model.tiny import build_tiny_llava_next_processor
from llava.pruning.registry import available_methods, method_class
from tests.conftest import assert_cached_generation_equals_recompute
from tests.reference.test_fastv_reference import official_fastv

IN_LLM = [name for name in available_methods() if not method_class(name).pre_llm and not name.startswith("learned")]
TINY_PARAMS = {"fastv_fine_head": {"heads": 2}}  # the tiny decoder has 4 heads (the default selects 16)
SIZES = ((200, 130), (130, 200), (300, 300))  # 234, 240 and 336 image tokens on the tiny NeXT


def next_inputs(size: tuple[int, int], text: str = "what is in <image> here?", seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(size[1], size[0], 3, generator=generator) * 255).to(torch.uint8).numpy()
    return dict(build_tiny_llava_next_processor()(images=Image.fromarray(pixels), text=text, return_tensors="pt"))


def stock_next_like(model) -> LlavaNextForConditionalGeneration:
    """Stock transformers LLaVA-NeXT with the same weights."""
    text = LlamaConfig(**{k: v for k, v in model.config.text_config.to_dict().items() if k in LlamaConfig.__dataclass_fields__})
    values = {k: v for k, v in model.config.to_dict().items() if k not in ("text_config", "vision_config", "model_type")}
    config = LlavaNextConfig(vision_config=model.config.vision_config, text_config=text, **values)
    stock = LlavaNextForConditionalGeneration(config).eval()
    stock.load_state_dict(model.state_dict())
    return stock


@pytest.fixture(scope="module")
def next_model():
    return load_pretrained_model("tiny-random-llava-next")[1]


def test_the_builder_picks_the_family_from_the_config(next_model):
    assert type(next_model).__name__ == "PruningLlavaNextForConditionalGeneration"
    assert anyres_max_image_tokens(next_model.config) == 336


@pytest.mark.parametrize("size", SIZES)
@torch.no_grad()
def test_no_pruning_equals_stock_llava_next(next_model, size):
    inputs = next_inputs(size)
    expected = stock_next_like(next_model)(**inputs).logits
    assert torch.equal(next_model(**inputs).logits, expected)


@pytest.mark.parametrize("size", SIZES)
@torch.no_grad()
def test_fastv_on_the_anyres_span_keeps_what_the_official_rule_keeps(next_model, size):
    inputs = next_inputs(size, seed=1)
    ids = inputs["input_ids"]
    is_image = (ids[0] == next_model.config.image_token_id).nonzero()[:, 0]
    start, span = int(is_image[0]), len(is_image)
    keep = span // 4
    model = load_pretrained_model("tiny-random-llava-next", pruning_method="fastv", keep=keep)[1]
    outputs = model(**inputs, output_hidden_states=True)
    (stage,) = model.language_model.last_pruning_record.stages
    embeds = captured_embeddings_next(model, inputs)
    kept, last_hidden = official_fastv(model.language_model, embeds, start, span, stage.layer, keep)
    assert stage.kept_index[0].tolist() == kept.tolist()
    torch.testing.assert_close(outputs.hidden_states[-1][0, -1], last_hidden, atol=1e-5, rtol=1e-4)


def captured_embeddings_next(model, inputs: dict) -> torch.Tensor:
    """The language model's input embeddings of one unpruned LLaVA-NeXT forward (image features merged)."""
    captured = {}

    def hook(module, args, kwargs):
        captured["embeds"] = kwargs["inputs_embeds"]

    handle = model.language_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with model.pruning_disabled():
            model(**inputs)
    finally:
        handle.remove()
    return captured["embeds"]


@pytest.mark.parametrize("method", IN_LLM)
@torch.no_grad()
def test_every_in_llm_method_batch_equals_single_and_cache_equals_recompute(method):
    model = load_pretrained_model("tiny-random-llava-next", pruning_method=method, retain_ratio=0.25,
                                  **TINY_PARAMS.get(method, {}))[1]
    texts = ["what is in <image> here?", "say <image> now, please", "<image> colour?"]
    singles = [next_inputs((200, 130), text=text, seed=seed) for seed, text in enumerate(texts)]
    expected = []
    for inputs in singles:
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        expected.append(out[0, inputs["input_ids"].shape[1]:])
    processor = build_tiny_llava_next_processor()
    images = [Image.fromarray((torch.rand(130, 200, 3, generator=torch.Generator().manual_seed(s)) * 255).to(torch.uint8).numpy())
              for s in range(3)]
    batch = dict(processor(images=images, text=texts, return_tensors="pt", padding=True))
    out = model.generate(**batch, max_new_tokens=4, do_sample=False)
    for row, tokens in enumerate(expected):
        assert out[row, batch["input_ids"].shape[1]:].tolist() == tokens.tolist(), f"sample {row}"
    assert_cached_generation_equals_recompute(model, singles[0]["input_ids"], singles[0]["pixel_values"], steps=4,
                                              image_sizes=singles[0]["image_sizes"])


@pytest.mark.parametrize(("budget", "expected"), [({"retain_ratio": 0.25}, lambda span: 0.25 * span),
                                                  ({"visual_token_num": 64}, lambda span: 64)])
@torch.no_grad()
def test_a_budget_is_planned_for_each_images_token_count(budget, expected):
    model = load_pretrained_model("tiny-random-llava-next", pruning_method="pdrop", **budget)[1]
    for size in SIZES:
        model(**next_inputs(size))
        record = model.pruning_record
        assert record["span_length"] == {(200, 130): 234, (130, 200): 240, (300, 300): 336}[size]
        assert record["equivalent_tokens"] == pytest.approx(expected(record["span_length"]), abs=1.0)


def test_retain_ratio_on_llava_1_5_is_a_share_of_576():
    model = load_pretrained_model("tiny-random-llava", pruning_method="fastv", retain_ratio=0.25)[1]
    reference = load_pretrained_model("tiny-random-llava", pruning_method="fastv", visual_token_num=144)[1]
    assert model.method.params() == reference.method.params()


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"pruning_method": "vispruner", "visual_token_num": 64}, "on LLaVA-NeXT it is not supported yet"),
    ({"pruning_method": "fastv", "retain_ratio": 1.5}, r"retain_ratio must lie in \(0, 1\]"),
    ({"pruning_method": "fastv", "retain_ratio": 0.5, "visual_token_num": 64}, "give the budget once"),
    ({"retain_ratio": 0.5}, "given without pruning_method"),
])
def test_bad_family_settings_are_one_line(kwargs, expected):
    with pytest.raises(ValueError, match=expected):
        load_pretrained_model("tiny-random-llava-next", **kwargs)


def test_a_batch_of_images_of_different_sizes_says_what_to_do(next_model):
    processor = build_tiny_llava_next_processor()
    images = [Image.new("RGB", size, (10, 20, 30)) for size in SIZES[:2]]
    batch = dict(processor(images=images, text=["a <image> b", "a <image> b"], return_tensors="pt", padding=True))
    model = load_pretrained_model("tiny-random-llava-next", pruning_method="fastv", retain_ratio=0.5)[1]
    with pytest.raises(ValueError, match="same number of prunable tokens"):
        model(**batch)


@pytest.mark.parametrize("config_class", ["LlavaOnevisionConfig", "Qwen2_5_VLConfig"])
def test_families_not_supported_yet_are_refused_in_one_line_before_any_weight(tmp_path, config_class):
    import transformers

    getattr(transformers, config_class)().save_pretrained(tmp_path)  # a config alone: no weights to read
    with pytest.raises(ValueError, match=f"unsupported architecture {config_class}: expected one of LlavaConfig, LlavaNextConfig"):
        load_pretrained_model(str(tmp_path), pruning_method="fastv", visual_token_num=64)
