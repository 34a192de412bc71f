"""VisionPrunerHead / LayerSpecificPruner: the attention residual, its weight, configuration errors."""

import pytest
import torch

from llava.pruning.learned.heads import LayerSpecificPruner, PrunerConfig, VisionPrunerHead

D_MODEL, SPAN, QUESTION = 16, 10, 5


def head(seed: int = 0, **kwargs) -> VisionPrunerHead:
    torch.manual_seed(seed)
    return VisionPrunerHead(D_MODEL, hidden_dim=8, num_heads=2, **kwargs)


def inputs(seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    vision = torch.randn(2, SPAN, D_MODEL, generator=generator)
    question = torch.randn(2, QUESTION, D_MODEL, generator=generator)
    valid = torch.ones(2, QUESTION, dtype=torch.bool)
    valid[1, -2:] = False
    attention = torch.rand(2, SPAN, generator=generator).softmax(-1)
    return vision, question, valid, attention


def test_residual_off_is_the_plain_head_and_needs_no_attention():
    vision, question, valid, attention = inputs()
    plain, with_residual = head(), head(use_attn_residual=True, attn_residual_weight=0.0)
    assert "attn_residual_weight" not in dict(plain.named_buffers()) | dict(plain.named_parameters())
    assert torch.equal(plain(vision, question, valid), with_residual(vision, question, valid, attention))
    with pytest.raises(ValueError, match="no attention residual"):
        plain(vision, question, valid, attention)
    with pytest.raises(ValueError, match="pass text_attention"):
        with_residual(vision, question, valid)


@pytest.mark.parametrize("learnable", [False, True])
def test_residual_on_adds_exactly_weight_times_attention(learnable):
    vision, question, valid, attention = inputs()
    plain = head()
    residual = head(use_attn_residual=True, attn_residual_weight=3.5, learnable_attn_weight=learnable)
    on = residual(vision, question, valid, attention)
    assert torch.equal(on, plain(vision, question, valid) + 3.5 * attention)
    assert not torch.allclose(on, plain(vision, question, valid))


def test_learnable_weight_gets_a_gradient_and_fixed_one_does_not():
    vision, question, valid, attention = inputs()
    learnable = head(use_attn_residual=True, learnable_attn_weight=True)
    fixed = head(use_attn_residual=True, learnable_attn_weight=False)
    assert isinstance(learnable.attn_residual_weight, torch.nn.Parameter)
    assert "attn_residual_weight" in dict(fixed.named_buffers())
    assert "attn_residual_weight" not in dict(fixed.named_parameters())
    for module in (learnable, fixed):
        module(vision, question, valid, attention).sigmoid().sum().backward()
    assert learnable.attn_residual_weight.grad is not None and learnable.attn_residual_weight.grad.abs() > 0
    assert fixed.attn_residual_weight.grad is None and not fixed.attn_residual_weight.requires_grad


def test_padded_question_rows_are_ignored():
    vision, question, valid, _ = inputs()
    changed = question.clone()
    changed[1, -2:] = 100.0
    module = head()
    assert torch.allclose(module(vision, question, valid), module(vision, changed, valid), atol=1e-6)


def test_layer_specific_pruner_has_one_head_per_layer_with_its_own_weight():
    config = PrunerConfig(
        d_model=D_MODEL,
        pruning_layers=[2, 4],
        hidden_dim=8,
        num_heads=2,
        use_attn_residual=True,
        attn_residual_weight=[0.5, 2.0],
    )
    pruner = LayerSpecificPruner(config)
    assert pruner.residual_weights() == {2: 0.5, 4: 2.0}
    vision, question, valid, attention = inputs()
    assert pruner(4, vision, question, valid, attention).shape == (2, SPAN)
    with pytest.raises(ValueError, match=r"no pruner head for layer 3; pruning layers: \[2, 4\]"):
        pruner(3, vision, question, valid, attention)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pruning_layers": [6, 6]}, "strictly increasing"),
        ({"pruning_layers": []}, "non-empty"),
        ({"num_heads": 3}, "divisible by num_heads"),
        ({"attn_residual_weight": [1.0]}, "one weight per pruning layer"),
    ],
)
def test_bad_pruner_config_is_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PrunerConfig(d_model=D_MODEL, **kwargs)


def test_a_fresh_head_ranks_by_the_attention_alone_and_its_mlp_still_learns():
    vision, question, valid, attention = inputs()
    fresh = head(use_attn_residual=True, attn_residual_weight=2000.0)
    logits = fresh(vision, question, valid, attention)
    assert torch.equal(logits, 2000.0 * attention)  # the zero-initialised output layer adds nothing yet
    logits.sum().backward()
    assert fresh.mlp[-1].weight.grad.abs().sum() > 0
