"""Restarting a forward at a layer from stored layer inputs == the full forward (Llama and GPT-NeoX)."""

import pytest
import torch

from kvcompress.adapters import adapter_for
from kvcompress.layer_resume import layer_inputs, starting_at_layer
from kvcompress.methods.base import ComposedMethod
from kvcompress.methods.dead_heads import DeadHeadPruner
from kvcompress.methods.positional import PositionalHeadOptimizer


@torch.no_grad()
def test_restart_at_any_layer_gives_the_full_logits(tiny_model, input_ids):
    logits, inputs = layer_inputs(tiny_model, input_ids)
    layers = adapter_for(tiny_model).decoder(tiny_model)[0].layers
    assert len(inputs) == len(layers) and torch.equal(logits, tiny_model(input_ids, use_cache=False).logits)
    for layer in (0, 1, len(layers) - 1):
        with starting_at_layer(tiny_model, layer, inputs[layer]):
            assert torch.equal(tiny_model(input_ids, use_cache=False).logits, logits), layer
    assert adapter_for(tiny_model).decoder(tiny_model)[0].layers is layers  # restored


@torch.no_grad()
def test_restart_below_an_intervention_matches_the_intervened_full_run(tiny_model, input_ids):
    _, inputs = layer_inputs(tiny_model, input_ids)
    method = ComposedMethod([DeadHeadPruner([(2, 1)], mode="zero"), PositionalHeadOptimizer([(3, 0)], 1, 4)])
    with method.apply(tiny_model):
        full = tiny_model(input_ids, use_cache=False).logits
        with starting_at_layer(tiny_model, 2, inputs[2]):
            restarted = tiny_model(input_ids, use_cache=False).logits
    assert torch.allclose(restarted, full, atol=1e-6)
    assert not torch.allclose(full, tiny_model(input_ids, use_cache=False).logits, atol=1e-4)


def test_restart_layer_out_of_range(tiny_model, input_ids):
    with pytest.raises(ValueError, match="out of range"), starting_at_layer(tiny_model, 99, input_ids):
        pass
