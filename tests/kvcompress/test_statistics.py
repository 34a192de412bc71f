"""Per-head statistics and the statistics-based classifier on hand-made attention maps."""

import math

import pytest
import torch

from kvcompress.adapters import ModelShape
from kvcompress.analysis.classify import StatisticsThresholds, classify_by_statistics
from kvcompress.analysis.collector import collect_head_statistics, statistics_from_sums
from kvcompress.analysis.statistics import (
    HeadContribution,
    StatisticsConfig,
    chunked_head_statistics,
    row_statistics,
)

N = 64


def hand_made_maps() -> torch.Tensor:
    """``[1, 4, N, N]`` rows: previous token, uniform, sink only, a fixed far token (content)."""
    rows = torch.arange(N)
    maps = torch.zeros(1, 4, N, N)
    maps[0, 0, rows, (rows - 1).clamp_min(0)] = 1.0
    maps[0, 1] = torch.tril(torch.ones(N, N)) / (rows + 1)[:, None]
    maps[0, 2, :, 0] = 1.0
    target = torch.where(rows >= 20, torch.full_like(rows, 20), rows)
    maps[0, 3, rows, target] = 1.0
    return maps


def test_hand_made_statistics_values():
    config = StatisticsConfig(sinks=4, local_window=8, min_row=16)
    sums = row_statistics(hand_made_maps(), torch.arange(N), config)
    rows = sums.rows
    assert rows == N - 16
    means = {name: value / rows for name, value in sums.sums.items()}
    assert means["previous_token_mass"][0] == pytest.approx(1.0)
    assert means["entropy"][0] == pytest.approx(0.0, abs=1e-9)
    assert means["local_mass"][0] == pytest.approx(1.0)
    expected_uniform = sum(math.log(i + 1) for i in range(16, N)) / rows
    assert means["entropy"][1] == pytest.approx(expected_uniform)
    assert means["normalized_entropy"][1] == pytest.approx(1.0)
    assert means["kl_to_uniform"][1] == pytest.approx(0.0, abs=1e-6)
    assert means["sink_mass"][2] == pytest.approx(1.0)
    assert means["local_mass"][2] == pytest.approx(0.0)
    # argmax histogram: previous token -> distance bin "1"; sink head -> "sink"
    labels = config.bin_labels()
    assert sums.histogram[0, labels.index("1")] == rows
    assert sums.histogram[2, labels.index("sink")] == rows


def test_hand_made_maps_give_expected_classes():
    config = StatisticsConfig(sinks=4, local_window=8, min_row=16)
    torch.manual_seed(0)
    contribution = HeadContribution(torch.randn(1, 4, N, 8), torch.randn(4, 16, 8))
    sums = row_statistics(hand_made_maps(), torch.arange(N), config, contribution)
    statistics = statistics_from_sums(ModelShape(1, 4, 4, 8), config, [sums], N)
    labels = classify_by_statistics(statistics, StatisticsThresholds()).labels[0]
    assert labels == ["positional", "dead", "positional", "gathering"]


def test_negligible_output_is_dead():
    config = StatisticsConfig(sinks=4, local_window=8, min_row=16)
    values = torch.randn(1, 4, N, 8)
    values[:, 3] *= 1e-4  # the content head writes (almost) nothing
    sums = row_statistics(hand_made_maps(), torch.arange(N), config,
                          HeadContribution(values, torch.randn(4, 16, 8)))
    labels = classify_by_statistics(statistics_from_sums(ModelShape(1, 4, 4, 8), config, [sums], N)).labels[0]
    assert labels[3] == "dead"


def test_chunked_equals_unchunked():
    torch.manual_seed(0)
    query, key = torch.randn(2, 3, 50, 8), torch.randn(2, 3, 50, 8)
    contribution = HeadContribution(torch.randn(2, 3, 50, 8), torch.randn(3, 12, 8))
    config = StatisticsConfig(min_row=3)
    whole = chunked_head_statistics(query, key, 0.35, config, chunk_rows=50, contribution=contribution)
    chunked = chunked_head_statistics(query, key, 0.35, config, chunk_rows=7, contribution=contribution)
    assert whole.rows == chunked.rows == 2 * 47
    for name, value in whole.sums.items():
        torch.testing.assert_close(chunked.sums[name], value, rtol=1e-6, atol=1e-7, msg=name)
    torch.testing.assert_close(chunked.histogram, whole.histogram)


def test_chunk_rows_must_be_positive():
    with pytest.raises(ValueError, match="chunk_rows"):
        chunked_head_statistics(torch.zeros(1, 1, 4, 2), torch.zeros(1, 1, 4, 2), 1.0, StatisticsConfig(), 0)


def test_collector_on_tiny_models_matches_eager_attention(tiny_model):
    """Statistics from the SDPA observer equal those computed from eager ``output_attentions``."""
    config = StatisticsConfig(min_row=4)
    ids = torch.randint(0, 90, (1, 48))
    statistics = collect_head_statistics(tiny_model, [ids], config, chunk_rows=16, progress=False)
    layers = tiny_model.config.num_hidden_layers
    heads = tiny_model.config.num_attention_heads
    assert statistics.means["entropy"].shape == (layers, heads)
    tiny_model.set_attn_implementation("eager")
    with torch.no_grad():
        attentions = tiny_model(ids, output_attentions=True).attentions
    tiny_model.set_attn_implementation("sdpa")
    for layer in (0, layers - 1):
        expected = row_statistics(attentions[layer], torch.arange(48), config)
        torch.testing.assert_close(torch.as_tensor(statistics.means["entropy"][layer]),
                                   expected.sums["entropy"] / expected.rows, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(torch.as_tensor(statistics.means["sink_mass"][layer]),
                                   expected.sums["sink_mass"] / expected.rows, rtol=1e-4, atol=1e-5)


def test_statistics_json_roundtrip(tmp_path, tiny_model):
    statistics = collect_head_statistics(tiny_model, [torch.randint(0, 90, (1, 24))],
                                         StatisticsConfig(min_row=2), progress=False)
    statistics.save(tmp_path / "s.json")
    loaded = type(statistics).load(tmp_path / "s.json")
    assert loaded.shape == statistics.shape and loaded.config == statistics.config
    for name, value in statistics.means.items():
        assert loaded.means[name] == pytest.approx(value)
