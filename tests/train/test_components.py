"""Masks, schedules, losses, discriminator, token merger and YAML config of the learned pruner."""

import math

import pytest
import torch

from llava.pruning.learned.masks import gumbel_keep_probs, hard_keep_mask
from llava.pruning.learned.merger import TokenMerger
from llava.train.pruner.config import load_train_config, train_config_from_dict
from llava.train.pruner.discriminator import Discriminator, pool_text_states, sequence_fraction
from llava.train.pruner.losses import (
    binarization_loss,
    discriminator_accuracy,
    discriminator_loss,
    generator_adversarial_loss,
    sparsity_loss,
    token_count_loss,
)
from llava.train.pruner.schedules import Ramp, annealed_temperature, cosine_weight
from llava.train.pruner.training import hard_keep_ratios


def test_gumbel_keep_probs_are_soft_differentiable_and_sharpen_with_temperature():
    logits = torch.linspace(-3, 3, 1000, requires_grad=True)
    soft = gumbel_keep_probs(logits, 0.99, torch.Generator().manual_seed(0))
    assert ((soft > 0) & (soft < 1)).all()
    soft.sum().backward()
    assert (logits.grad > 0).all()
    sharp = gumbel_keep_probs(logits.detach(), 0.05, torch.Generator().manual_seed(0))
    assert binarization_loss([sharp]) < binarization_loss([soft.detach()])
    with pytest.raises(ValueError, match="temperature must be > 0"):
        gumbel_keep_probs(logits, 0.0, None)


def test_hard_mask_is_probability_above_one_half():
    logits = torch.tensor([-1.0, -1e-4, 0.0, 1e-4, 2.0])
    assert hard_keep_mask(logits).tolist() == (torch.sigmoid(logits) > 0.5).tolist()


def test_schedules_temperature_099_to_04_and_adversarial_cosine_1_to_10():
    temperature = Ramp(0.99, 0.4)
    assert annealed_temperature(temperature, 0, 100) == pytest.approx(0.99)
    assert annealed_temperature(temperature, 100, 100) == pytest.approx(0.4)
    assert annealed_temperature(temperature, 500, 100) == pytest.approx(0.4)
    assert annealed_temperature(temperature, 50, 100) == pytest.approx(math.sqrt(0.99 * 0.4))
    adversarial = Ramp(1.0, 10.0)
    assert cosine_weight(adversarial, 0, 100) == pytest.approx(1.0)
    assert cosine_weight(adversarial, 50, 100) == pytest.approx(5.5)
    assert cosine_weight(adversarial, 100, 100) == pytest.approx(10.0)
    with pytest.raises(ValueError, match="total_steps must be >= 1"):
        cosine_weight(adversarial, 0, 0)


def test_hard_keep_ratio_is_cumulative_over_stages():
    first, second = torch.tensor([[1.0, 1.0, -1.0, 2.0]]), torch.tensor([[-1.0, 1.0, 1.0, 1.0]])
    assert hard_keep_ratios([first, second]) == [0.75, 0.5]


def test_losses():
    keep = [torch.full((2, 10), 0.5), torch.full((2, 10), 0.2)]
    assert sparsity_loss(keep, [0.5, 0.2]) == pytest.approx(0.0)
    assert sparsity_loss(keep, [0.25, 0.2]) == pytest.approx(math.log(2) ** 2 / 2)
    assert sparsity_loss([torch.full((2, 10), 0.1)], [0.4]) == pytest.approx(sparsity_loss([torch.full((2, 10), 0.4)], [0.1]))
    assert binarization_loss([torch.tensor([0.0, 1.0])]) == 0
    assert binarization_loss([torch.tensor([0.5])]) == pytest.approx(1.0)
    fooled = torch.tensor([0.999])
    assert generator_adversarial_loss(fooled) < generator_adversarial_loss(torch.tensor([0.1]))
    assert discriminator_loss(torch.tensor([0.99]), torch.tensor([0.01])) < discriminator_loss(
        torch.tensor([0.5]), torch.tensor([0.5])
    )
    per_sample = [torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])]  # keeps 2 and 4 tokens, target 2
    assert token_count_loss(per_sample, [2.0]) == pytest.approx((0 + math.log(2) ** 2) / 2)
    assert sparsity_loss(per_sample, [0.75]) == pytest.approx(0.0)  # the batch mean hides what token count sees
    assert discriminator_accuracy(torch.tensor([0.9, 0.4]), torch.tensor([0.1, 0.2])) == pytest.approx(0.75)


def test_overrides_set_nested_values_and_a_budget_replaces_the_file_targets():
    config = load_train_config(
        "configs/vision_token_pruning.yaml",
        ["method_settings.visual_token_num=64", "method_settings.pruning_layers=[2, 8, 16, 24]",
         "loss_weights.adversarial={start: 0, end: 0}", "method_settings.use_spectral_norm=false"],
    )
    settings = config.method_settings
    assert settings.target_keep_ratio is None and settings.visual_token_num == 64 and not settings.use_spectral_norm
    assert config.loss_weights.adversarial == Ramp(0.0, 0.0)
    assert [round(r * 576) for r in settings.target_ratios(576, 32)] == [113, 22, 4, 1]
    with pytest.raises(ValueError, match="must read KEY=VALUE"):
        load_train_config("configs/vision_token_pruning.yaml", ["method_settings.use_spectral_norm"])
    with pytest.raises(ValueError, match="unknown key"):
        load_train_config("configs/vision_token_pruning.yaml", ["method_settings.spectral=false"])
    with pytest.raises(ValueError, match="give exactly one of target_keep_ratio, target_tokens, visual_token_num"):
        train_config_from_dict({"method_settings": {"target_tokens": [4, 2, 1], "visual_token_num": 64}})


def test_discriminator_pooling_weights_go_from_03_to_1_and_noise_only_in_training():
    valid = torch.tensor([[False, True, True, True, True, True]])
    assert torch.allclose(sequence_fraction(valid), torch.tensor([[0.0, 0.0, 0.25, 0.5, 0.75, 1.0]]))
    hidden = torch.zeros(1, 6, 4)
    hidden[0, 1], hidden[0, 5] = 1.0, 2.0
    pooled = pool_text_states(hidden, valid, None, add_noise=False)
    weights = torch.tensor([0.3, 0.475, 0.65, 0.825, 1.0])
    assert torch.allclose(pooled, torch.full((1, 4), (0.3 * 1 + 1.0 * 2) / weights.sum().item()))
    torch.manual_seed(0)
    discriminator = Discriminator(4, num_layers=2, hidden_dim=8, use_spectral_norm=True)
    states = [torch.randn(1, 6, 4), torch.randn(1, 6, 4)]
    discriminator.eval()
    assert torch.equal(discriminator(states, valid), discriminator(states, valid))
    score = discriminator(states, valid)
    assert score.shape == (1,) and 0 < score.item() < 1
    discriminator.train()
    noisy = [discriminator(states, valid, torch.Generator().manual_seed(s)) for s in (1, 2)]
    assert not torch.equal(noisy[0], noisy[1])
    with pytest.raises(ValueError, match="hidden states of 2 layers, got 1"):
        discriminator(states[:1], valid)


def test_token_merger_outputs_m_tokens_modulated_by_the_question_and_ignores_dropped_tokens():
    torch.manual_seed(0)
    merger = TokenMerger(8, num_outputs=3, num_heads=2)
    vision, question = torch.randn(2, 10, 8), torch.randn(2, 4, 8)
    valid = torch.ones(2, 4, dtype=torch.bool)
    merged = merger(vision, question, valid)
    assert merged.shape == (2, 3, 8)
    assert not torch.allclose(merged, merger(vision, question + 1.0, valid))
    keep = torch.ones(2, 10)
    keep[:, 0] = 0.0
    changed = vision.clone()
    changed[:, 0] = 50.0
    assert torch.allclose(merger(vision, question, valid, keep), merger(changed, question, valid, keep), atol=1e-5)
    with pytest.raises(ValueError, match="num_outputs"):
        TokenMerger(8, num_outputs=0)


def test_default_yaml_config_loads():
    config = load_train_config("configs/vision_token_pruning.yaml")
    assert config.model_path == "tiny-random-llava"
    assert config.method_settings.use_attn_residual and config.method_settings.pruning_layers == [6, 12, 18]
    assert config.temperature == Ramp(0.99, 0.4) and config.loss_weights.adversarial == Ramp(1.0, 10.0)
    assert config.method_settings.target_ratios(576, 32) == [0.5, 0.25, 0.11]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"method_setting": {}}, r"unknown key\(s\) \['method_setting'\] in config"),
        ({"method_settings": {"target_keep_ratio": [0.5, 0.2]}}, "2 targets for 3 pruning layers"),
        ({"method_settings": {"target_keep_ratio": [0.5, 0.6, 0.1]}}, "cannot grow"),
        ({"method_settings": {"target_keep_ratio": [1.5, 0.6, 0.1]}}, r"\(0, 1\]"),
        ({"method_settings": {"target_keep_ratio": [0.5, 0.2, 0.1], "target_tokens": [9, 8, 7]}}, "exactly one"),
        ({"training": {"steps": 0}}, "training.steps must be >= 1"),
        ({"training": {"lr_pruner": -1}}, "training.lr_pruner must be > 0"),
        ({"temperature": {"start": 0.4, "end": 0.99}}, "anneal down"),
        ({"loss_weights": {"adversarial": {"begin": 1}}}, r"config.loss_weights.adversarial"),
    ],
)
def test_bad_config_values_are_clear_errors(values, message):
    with pytest.raises(ValueError, match=message):
        train_config_from_dict(values)


def test_every_issue_run_is_a_valid_config_with_its_switch_flipped():
    from llava.train.shapes_pruner_runs import ABLATIONS, CONFIG, RUNS, run_overrides

    base = load_train_config(CONFIG)
    assert base.data == "shapes" and base.method_settings.pruning_layers == [2, 8, 16, 24]
    for run in RUNS:
        config = load_train_config(CONFIG, run_overrides(run))
        assert config.method_settings.visual_token_num == (int(run[1:]) if run.startswith("t") else 64)
        changed = {
            "residual_off": not config.method_settings.use_attn_residual,
            "residual_fixed": config.method_settings.use_attn_residual and not config.method_settings.learnable_attn_weight,
            "no_adversarial": config.loss_weights.adversarial == Ramp(0.0, 0.0),
            "no_spectral_norm": not config.method_settings.use_spectral_norm,
        }
        assert [name for name, flipped in changed.items() if flipped] == ([run] if run in ABLATIONS else [])
