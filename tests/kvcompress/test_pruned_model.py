"""HeadPrunedGPTNeoX: built from the classification in its config, save_pretrained / from_pretrained."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from kvcompress.adapters import ModelShape, adapter_for
from kvcompress.classification import HeadClassification
from kvcompress.methods.dead_heads import DeadHeadPruner
from kvcompress.models.gpt_neox_pruned import HeadPrunedGPTNeoXForCausalLM, HeadPrunedGPTNeoXModel

from .conftest import tiny_gpt_neox

DEAD = [(0, 1), (0, 6), (2, 0), (5, 7)]


def classification_for(model) -> HeadClassification:
    shape = adapter_for(model).model_shape(model)
    labels = [["gathering"] * shape.num_query_heads for _ in range(shape.num_layers)]
    for layer, head in DEAD:
        labels[layer][head] = "dead"
    return HeadClassification(shape, labels, "test")


def test_pruned_model_roundtrip(tmp_path, input_ids):
    dense = tiny_gpt_neox()
    classification = classification_for(dense)
    with torch.no_grad():
        with DeadHeadPruner(DEAD, mode="zero").apply(dense):
            expected = dense(input_ids).logits
        pruned = HeadPrunedGPTNeoXForCausalLM.from_dense(dense, classification)
        assert isinstance(pruned.gpt_neox, HeadPrunedGPTNeoXModel)
        assert pruned.gpt_neox.layers[0].attention.query_key_value.out_features == 6 * 3 * 8
        torch.testing.assert_close(pruned(input_ids).logits, expected, rtol=0, atol=1e-5)
        pruned.save_pretrained(tmp_path)
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
        assert isinstance(loaded, HeadPrunedGPTNeoXForCausalLM)
        torch.testing.assert_close(loaded(input_ids).logits, expected, rtol=0, atol=1e-5)
    assert loaded.config.classification().heads_labelled("dead") == DEAD
    assert sum(p.numel() for p in loaded.parameters()) < sum(p.numel() for p in dense.parameters())


def test_classification_of_wrong_shape_in_config_is_rejected():
    dense = tiny_gpt_neox()
    wrong = HeadClassification(ModelShape(2, 8, 8, 8), [["gathering"] * 8] * 2, "test")
    with pytest.raises(ValueError, match="head classification is for a model of shape"):
        HeadPrunedGPTNeoXForCausalLM.from_dense(dense, wrong)


def test_config_with_classification_of_another_shape_is_rejected():
    dense = tiny_gpt_neox()
    wrong = HeadClassification(ModelShape(2, 8, 8, 8), [["dead"] + ["gathering"] * 7] * 2, "test")
    settings = {k: v for k, v in dense.config.to_dict().items() if k not in ("model_type", "architectures")}
    config = HeadPrunedGPTNeoXForCausalLM.config_class(head_classification=wrong.to_dict(), **settings)
    with pytest.raises(ValueError, match="head classification is for"):
        HeadPrunedGPTNeoXForCausalLM(config)
