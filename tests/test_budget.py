"""FLOPs, equivalent tokens and FLOPs-matched keep counts (README.md, "Budgets and FLOPs")."""

import pytest

from llava.pruning.budget import (
    equivalent_tokens,
    flops_matched_keep,
    layer_flops,
    prefill_flops,
    span_tokens_per_layer,
)


@pytest.mark.parametrize(
    ("layers", "k", "expected"),
    [(32, 2, [166, 98, 30]), (32, 3, [152, 82, 11]), (40, 2, [172, 104, 37])],
)
def test_flops_matched_keep_reproduces_published_settings(layers, k, expected):
    assert [flops_matched_keep(t, layers, k) for t in (192, 128, 64)] == expected


def test_matched_keep_gives_the_target_equivalent_tokens():
    for target in (192, 128, 64):
        keep = flops_matched_keep(target, 32, 2)
        assert abs(equivalent_tokens(span_tokens_per_layer(32, 576, [(2, keep)])) - target) <= 1


def test_layer_flops_conventions():
    n, d, m = 10, 8, 20
    assert layer_flops(n, d, m, "fastv") == 4 * n * d * d + 2 * n * n * d + 2 * n * d * m
    assert layer_flops(n, d, m, "swiglu") == 4 * n * d * d + 2 * n * n * d + 3 * n * d * m
    with pytest.raises(ValueError, match="valid: fastv, swiglu"):
        layer_flops(n, d, m, "other")


def test_prefill_flops_drop_with_pruning():
    full = prefill_flops([576] * 32, 95, 4096, 11008)
    pruned = prefill_flops(span_tokens_per_layer(32, 576, [(2, 144)]), 95, 4096, 11008)
    assert 0.2 < pruned / full < 0.45


def test_unreachable_budget_is_a_clear_error():
    with pytest.raises(ValueError, match="unreachable"):
        flops_matched_keep(30, 32, 2)
    with pytest.raises(ValueError, match=r"K=32 must lie in \[1, 31\]"):
        flops_matched_keep(64, 32, 32)
