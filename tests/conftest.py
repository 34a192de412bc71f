"""Shared fixtures: tiny random models built in-process (nothing downloaded)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM, LlavaForConditionalGeneration

from llava.model.language_model.pruning_config import PruningLlamaConfig
from llava.model.language_model.pruning_llama import PruningLlamaForCausalLM
from llava.model.tiny import build_tiny_llava, tiny_llama_config

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
    """Set pruning config fields on a tiny LLaVA's language model in place; returns the model."""
    for key, value in fields.items():
        setattr(model.config.text_config, key, value)
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


def assert_cached_generation_equals_recompute(model, ids: torch.Tensor, pixels: torch.Tensor, steps: int) -> None:
    """Greedy generation with KV cache == recomputing the pruned model without cache, token for token.

    The recompute fixes the selection query at the prompt's last token (``prune_query_index``), as the
    cached prefill did.
    """
    with torch.no_grad():
        generated = model.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=steps, do_sample=False)
        n = ids.shape[1]
        for t in range(steps):
            logits = model(
                input_ids=generated[:, : n + t], pixel_values=pixels, use_cache=False, prune_query_index=n - 1
            ).logits
            assert torch.equal(logits[:, -1].argmax(-1), generated[:, n + t]), f"step {t}"
