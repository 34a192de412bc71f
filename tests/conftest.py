"""Shared fixtures: tiny random models built in-process (nothing downloaded)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM, LlavaForConditionalGeneration

from llava.model.language_model.pruning_config import PruningLlamaConfig
from llava.model.language_model.pruning_llama import PruningLlamaForCausalLM
from llava.model.tiny import build_tiny_llava, tiny_llama_config
from llava.shapes.model import build_processor, shapes_llava_config

SMALL_LM = {"num_hidden_layers": 6, "vocab_size": 128}


def pruned_lm(stock: LlamaForCausalLM, **fields) -> PruningLlamaForCausalLM:
    """A pruning LM with the same weights as ``stock``."""
    model = PruningLlamaForCausalLM(PruningLlamaConfig.from_llama_config(stock.config, **fields)).eval()
    model.load_state_dict(stock.state_dict())
    return model


@pytest.fixture(scope="session")
def stock_lm() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config(**SMALL_LM)).eval()


@pytest.fixture(scope="session")
def stock_lm_eager() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = tiny_llama_config(**SMALL_LM)
    config._attn_implementation = "eager"
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def tiny_llava():
    return build_tiny_llava(seed=0)


def with_fields(model, **fields):
    """Run the method that these config fields describe (``pruning_method``, ``use_fast_v``, FastV's fields,
    ``pruning_params``; none: pruning off) on a tiny LLaVA; returns the model."""
    from types import SimpleNamespace

    from llava.pruning.registry import PARAMETER_ALIASES, method_from_config

    values = {"pruning_method": None, "use_fast_v": False, "pruning_params": None, **dict.fromkeys(PARAMETER_ALIASES)}
    values.update(fields)
    model.set_pruning_method(method_from_config(SimpleNamespace(**values)))
    return model


def stock_llava_like(model) -> LlavaForConditionalGeneration:
    """Stock transformers LLaVA with the same weights."""
    from transformers import LlamaConfig, LlavaConfig

    text = LlamaConfig(
        **{k: v for k, v in model.config.text_config.to_dict().items() if k in LlamaConfig.__dataclass_fields__}
    )
    config = LlavaConfig(
        vision_config=model.config.vision_config,
        text_config=text,
        image_token_id=model.config.image_token_id,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    stock = LlavaForConditionalGeneration(config).eval()
    stock.load_state_dict(model.state_dict())
    return stock


def llava_prompt(image_token_id: int, prefix: int, suffix: int, seed: int = 0, vocab: int = 200) -> torch.Tensor:
    """``[1, prefix + 576 + suffix]`` ids with the image run after ``prefix`` text tokens."""
    generator = torch.Generator().manual_seed(seed)
    text = torch.randint(5, vocab, (prefix + suffix,), generator=generator)
    image = torch.full((576,), image_token_id)
    return torch.cat([text[:prefix], image, text[prefix:]])[None]


def pixel_values(batch: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, 336, 336, generator=torch.Generator().manual_seed(seed))


def assert_cached_generation_equals_recompute(model, ids: torch.Tensor, pixels: torch.Tensor | None, steps: int, **kwargs) -> None:
    """Greedy ``generate`` with KV cache == ``generate(use_cache=False)`` (every step a full forward that
    reuses the prompt's keep set), token for token, and the record after both is the one of the prompt."""
    inputs = {"input_ids": ids, **({"pixel_values": pixels} if pixels is not None else {}), **kwargs}
    with torch.no_grad():
        cached = model.generate(**inputs, max_new_tokens=steps, min_new_tokens=steps, do_sample=False)
        record = _record_summary(model)
        recomputed = model.generate(**inputs, max_new_tokens=steps, min_new_tokens=steps, do_sample=False, use_cache=False)
        assert torch.equal(cached, recomputed), f"{cached[:, ids.shape[1]:].tolist()} != {recomputed[:, ids.shape[1]:].tolist()}"
        assert _record_summary(model) == record
        model(**inputs)  # a forward over the prompt records the same keep set
        assert _record_summary(model) == record


def _record_summary(model):
    decoder = model.language_model if hasattr(model, "language_model") else model.model
    record = decoder.last_pruning_record
    if record is None:
        return None
    return [(stage.layer, stage.kept_index.tolist(), None if stage.kept_valid is None else stage.kept_valid.tolist()) for stage in record.stages]


@pytest.fixture(scope="session")
def random_shapes_vlm(tmp_path_factory) -> Path:
    """A random shapes VLM (8 LM layers) saved to disk with the shapes processor."""
    processor = build_processor()
    tokenizer = processor.tokenizer
    config = shapes_llava_config(len(tokenizer), tokenizer.convert_tokens_to_ids("<image>"))
    config.vision_config.num_hidden_layers = 2
    config.text_config.num_hidden_layers = 8  # FastV at K=2 reaches 192 equivalent tokens from 8 layers
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("shapes-llava")
    LlavaForConditionalGeneration(config).save_pretrained(path)
    processor.save_pretrained(path)
    return path
