"""Tiny random models for the kvcompress tests (built in-process, nothing downloaded)."""

from __future__ import annotations

import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

VOCAB = 97


def tiny_llama(layers: int = 4, heads: int = 6, kv_heads: int = 2, hidden: int = 48) -> LlamaForCausalLM:
    """GQA Llama: ``layers x heads`` query heads sharing ``kv_heads`` KV heads."""
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=VOCAB,
                         max_position_embeddings=512)
    return LlamaForCausalLM(config).eval()


def tiny_gpt_neox(layers: int = 6, heads: int = 8, hidden: int = 64) -> GPTNeoXForCausalLM:
    """Pythia-70m-shaped (6 x 8 heads, partial rotary 25 %, parallel residual) at a small width."""
    torch.manual_seed(0)
    config = GPTNeoXConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                           num_attention_heads=heads, vocab_size=VOCAB, max_position_embeddings=512,
                           rotary_pct=0.25, use_parallel_residual=True)
    return GPTNeoXForCausalLM(config).eval()


@pytest.fixture(params=["llama", "gpt_neox"])
def tiny_model(request):
    return tiny_llama() if request.param == "llama" else tiny_gpt_neox()


@pytest.fixture
def input_ids() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randint(0, VOCAB, (2, 40))
