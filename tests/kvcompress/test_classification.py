"""head_classification.json: round trip, GQA windowable groups, clear errors for bad input."""

import pytest

from kvcompress.adapters import ModelShape, adapter_for
from kvcompress.classification import HeadClassification, validate_heads
from kvcompress.methods.dead_heads import DeadHeadPruner
from kvcompress.methods.positional import PositionalHeadOptimizer

from .conftest import tiny_gpt_neox, tiny_llama


def labels_for(shape: ModelShape, fill: str = "gathering") -> list[list[str]]:
    return [[fill] * shape.num_query_heads for _ in range(shape.num_layers)]


def test_roundtrip(tmp_path):
    shape = ModelShape(2, 4, 2, 8)
    labels = labels_for(shape)
    labels[1][3] = "dead"
    classification = HeadClassification(shape, labels, "statistics", {"t": 1})
    classification.save(tmp_path / "c.json")
    loaded = HeadClassification.load(tmp_path / "c.json")
    assert loaded.labels == labels and loaded.shape == shape
    assert loaded.heads_labelled("dead") == [(1, 3)]


def test_gqa_group_windowable_only_when_all_its_query_heads_are_positional():
    shape = ModelShape(1, 6, 2, 8)  # query heads 0-2 -> KV 0, 3-5 -> KV 1
    labels = labels_for(shape)
    labels[0][0:3] = ["positional", "positional", "dead"]
    labels[0][3:6] = ["positional", "gathering", "positional"]
    classification = HeadClassification(shape, labels, "test")
    assert classification.windowable_kv_groups() == [(0, 0)]


def test_unknown_labels_and_bad_table_are_rejected():
    shape = ModelShape(1, 2, 2, 8)
    with pytest.raises(ValueError, match="unknown head labels"):
        HeadClassification(shape, [["positional", "sleepy"]], "test")
    with pytest.raises(ValueError, match="num_layers x num_query_heads"):
        HeadClassification(shape, [["positional"]], "test")


def test_unknown_layer_or_head_ids_raise_before_any_change():
    model = tiny_gpt_neox()
    shape = adapter_for(model).model_shape(model)
    with pytest.raises(ValueError, match=r"unknown query head ids \[\(6, 0\)\]"):
        validate_heads(shape, [(0, 1), (6, 0)])
    before = model.gpt_neox.layers[0].attention.query_key_value.weight.clone()
    with pytest.raises(ValueError, match="unknown query head ids"):
        DeadHeadPruner([(0, 1), (0, 8)]).apply(model)
    assert model.gpt_neox.layers[0].attention.query_key_value.weight.shape == before.shape
    llama = tiny_llama()
    with pytest.raises(ValueError, match=r"unknown kv head ids \[\(0, 2\)\]"):
        PositionalHeadOptimizer([(0, 2)]).apply(llama)
    with pytest.raises(ValueError, match="unknown kv head ids"):
        PositionalHeadOptimizer([(-1, 0)]).apply(llama)


def test_classification_for_another_model_shape_is_rejected(tmp_path):
    neox = tiny_gpt_neox()
    shape = adapter_for(neox).model_shape(neox)
    labels = labels_for(shape)
    labels[0][0] = "dead"
    HeadClassification(shape, labels, "test").save(tmp_path / "neox.json")
    llama = tiny_llama()
    classification = HeadClassification.load(tmp_path / "neox.json")
    with pytest.raises(ValueError, match="head classification is for a model of shape"):
        DeadHeadPruner(classification).apply(llama)
    with pytest.raises(ValueError, match="head classification is for a model of shape"):
        PositionalHeadOptimizer(classification).apply(llama)


def test_removing_every_head_of_a_layer_is_refused():
    model = tiny_llama()
    with pytest.raises(ValueError, match="every head of layer 1"):
        DeadHeadPruner([(1, h) for h in range(6)]).apply(model)
