"""Model plumbing for the statistics: run a model with observers and gather per-(layer, head) results."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from kvcompress.adapters import ModelShape, adapter_for
from kvcompress.analysis.statistics import (
    MEAN_STATISTICS,
    HeadContribution,
    StatisticsConfig,
    StatisticSums,
    chunked_head_statistics,
    means_from_sums,
)
from kvcompress.attention import kvcompress_attention, observing
from kvcompress.layout import get_layout


@dataclass
class HeadStatistics:
    """Means of every statistic as ``[layers, heads]`` arrays, plus the argmax-position histogram."""

    shape: ModelShape
    config: StatisticsConfig
    means: dict[str, np.ndarray]
    argmax_histogram: np.ndarray
    rows: int
    sequence_length: int

    def to_dict(self) -> dict:
        return {
            "shape": self.shape.as_dict(),
            "config": self.config.as_dict(),
            "rows_per_head": self.rows,
            "sequence_length": self.sequence_length,
            "bin_labels": self.config.bin_labels(),
            "means": {name: value.tolist() for name, value in self.means.items()},
            "argmax_histogram": self.argmax_histogram.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> HeadStatistics:
        config = data["config"]
        config["distance_edges"] = tuple(config["distance_edges"])
        return cls(ModelShape(**data["shape"]), StatisticsConfig(**config),
                   {name: np.asarray(value) for name, value in data["means"].items()},
                   np.asarray(data["argmax_histogram"]), data["rows_per_head"], data["sequence_length"])

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> HeadStatistics:
        return cls.from_dict(json.loads(Path(path).read_text()))


def collect_head_statistics(
    model: nn.Module,
    inputs: Iterable[torch.Tensor],
    config: StatisticsConfig | None = None,
    chunk_rows: int = 256,
    progress: bool = True,
) -> HeadStatistics:
    """Average the statistics of every (layer, original query head) over ``inputs`` (``[B, N]`` id tensors).

    The model runs with SDPA (through the ``kvcompress`` attention) and ``use_cache=False``; an observer
    recomputes attention rows of each layer in chunks from that layer's q and k.
    """
    config = config or StatisticsConfig()
    adapter = adapter_for(model)
    shape = adapter.model_shape(model)
    attentions = adapter.attention_modules(model)
    totals = [StatisticSums.zeros(shape.num_query_heads, config) for _ in attentions]

    def make_observer(layer_index: int):
        def observe(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
            layout = get_layout(module, adapter)
            query_to_kv = torch.tensor(layout.query_to_kv, device=key.device)
            contribution = HeadContribution(value.index_select(1, query_to_kv),
                                            adapter.output_weight_per_head(module).detach())
            sums = chunked_head_statistics(query, key.index_select(1, query_to_kv), module.scaling, config,
                                           chunk_rows, contribution)
            heads = torch.tensor(layout.query_heads)
            total = totals[layer_index]
            for name in MEAN_STATISTICS:
                total.sums[name][heads] += sums.sums[name]
            total.histogram[heads] += sums.histogram
            total.rows += sums.rows
        return observe

    length = 0
    with torch.no_grad(), kvcompress_attention(model), observing(attentions, make_observer):
        for input_ids in tqdm(list(inputs), desc="attention statistics", disable=not progress):
            length = max(length, input_ids.shape[-1])
            model(input_ids=input_ids.to(model.device), use_cache=False)
    return statistics_from_sums(shape, config, totals, length)


def statistics_from_sums(shape: ModelShape, config: StatisticsConfig, totals: list[StatisticSums],
                         sequence_length: int) -> HeadStatistics:
    """Turn per-layer sums (one :class:`StatisticSums` per layer) into a :class:`HeadStatistics`."""
    layer_means = [means_from_sums(total) for total in totals]
    means = {name: np.stack([m[name].numpy() for m in layer_means]) for name in MEAN_STATISTICS}
    histogram = np.stack([m["argmax_histogram"].numpy() for m in layer_means])
    return HeadStatistics(shape, config, means, histogram, totals[0].rows, sequence_length)
