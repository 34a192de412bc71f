"""Per-head attention statistics as pure functions over attention rows (docs/kvcompress.md, "Definitions").

For a query row ``i`` (absolute position, keys ``j = 0..i``) with attention ``p_ij``:

* entropy ``H_i = -Σ_j p_ij log p_ij``; normalised entropy ``H_i / log(i + 1)`` (rows ``i >= 1``);
* max attention ``max_j p_ij``; KL to uniform ``KL(p_i || U_{i+1}) = log(i + 1) - H_i``;
* sink mass ``Σ_{j < S} p_ij`` (``S`` = ``sinks``, default 4); previous-token mass ``p_{i,i-1}``;
* local mass ``Σ_{j >= S, i - j < W} p_ij`` (recent window ``W`` without the sinks, default 64);
* argmax relative position ``i - argmax_j p_ij``, histogrammed in log bins, with a separate bin for
  an argmax on a sink;
* output norm ``|| W_o^{(h)} o_i^{(h)} ||`` with ``o_i^{(h)} = Σ_j p_ij v_j^{(h)}`` (the head's
  contribution to the residual stream).

Sums over rows are accumulated (rows ``i >= min_row`` only) so long inputs can be processed in chunks
of query rows (default 256) without an ``N x N`` map per layer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

MEAN_STATISTICS = (
    "entropy",
    "normalized_entropy",
    "max_attention",
    "sink_mass",
    "previous_token_mass",
    "local_mass",
    "kl_to_uniform",
    "output_norm",
)


@dataclass(frozen=True)
class StatisticsConfig:
    """Parameters of the statistics (saved with every result)."""

    sinks: int = 4
    local_window: int = 64
    min_row: int = 16
    distance_edges: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

    def bin_labels(self) -> list[str]:
        """Labels of the argmax-position bins: ``sink`` then relative distances."""
        edges = (0, *self.distance_edges)
        labels = ["sink"]
        for low, high in zip(edges, edges[1:], strict=False):
            labels.append(str(low) if high == low + 1 else f"{low}-{high - 1}")
        labels.append(f">={edges[-1]}")
        return labels

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class StatisticSums:
    """Per-head sums over rows: ``sums[name]`` is ``[H]``, ``histogram`` ``[H, bins]``, ``rows`` a count."""

    sums: dict[str, torch.Tensor]
    histogram: torch.Tensor
    rows: int = 0

    @classmethod
    def zeros(cls, num_heads: int, config: StatisticsConfig) -> StatisticSums:
        return cls({name: torch.zeros(num_heads, dtype=torch.float64) for name in MEAN_STATISTICS},
                   torch.zeros(num_heads, len(config.bin_labels()), dtype=torch.float64))

    def add(self, other: StatisticSums) -> None:
        for name in MEAN_STATISTICS:
            self.sums[name] += other.sums[name]
        self.histogram += other.histogram
        self.rows += other.rows


@dataclass
class HeadContribution:
    """What the output norm needs: values ``[B, H, N, D]`` per query head and ``W_o`` split ``[H, hidden, D]``."""

    values: torch.Tensor
    output_weight: torch.Tensor = field(repr=False)


def row_statistics(
    probs: torch.Tensor,
    row_positions: torch.Tensor,
    config: StatisticsConfig,
    contribution: HeadContribution | None = None,
) -> StatisticSums:
    """Statistic sums of attention rows ``probs`` ``[B, H, R, N]`` whose query positions are ``row_positions``.

    Keys are positions ``0..N-1``; rows with ``i < config.min_row`` are ignored. Without
    ``contribution`` the output norm is left at zero.
    """
    probs = probs.float()
    batch, heads, _, length = probs.shape
    used = row_positions >= config.min_row
    if not bool(used.any()):
        return StatisticSums.zeros(heads, config)
    probs, rows = probs[:, :, used], row_positions[used].to(probs.device)
    i = rows.float()
    entropy = torch.special.entr(probs).sum(-1)  # [B, H, R]
    log_context = torch.log(i + 1)
    normalized = torch.where(i >= 1, entropy / log_context.clamp_min(1e-12), torch.zeros_like(entropy))
    # keys i, i-1, ..., i-W+1 of every row (clamped at 0; duplicates and sinks masked below)
    offsets = torch.arange(min(config.local_window, length), device=probs.device)
    band_keys = rows[:, None] - offsets[None, :]  # [R, W]
    band = probs.gather(-1, band_keys.clamp_min(0).expand(batch, heads, -1, -1))
    local = (band * (band_keys >= config.sinks)).sum(-1)
    previous = torch.where(rows >= 1, band[..., 1] if band.shape[-1] > 1 else 0.0, 0.0)
    max_attention, argmax = probs.max(-1)
    argmax_distance = rows[None, None, :] - argmax
    bins = torch.bucketize(argmax_distance, torch.tensor(config.distance_edges, device=probs.device),
                           right=True) + 1
    bins = torch.where(argmax < config.sinks, torch.zeros_like(bins), bins).cpu()
    # float64 counts and sums are kept on the CPU: MPS has no float64
    histogram = torch.zeros(heads, len(config.bin_labels()), dtype=torch.float64)
    histogram.scatter_add_(1, bins.permute(1, 0, 2).reshape(heads, -1),
                           torch.ones(heads, bins.numel() // heads, dtype=torch.float64))
    per_row = {
        "entropy": entropy,
        "normalized_entropy": normalized,
        "max_attention": max_attention,
        "sink_mass": probs[..., : config.sinks].sum(-1),
        "previous_token_mass": previous,
        "local_mass": local,
        "kl_to_uniform": log_context - entropy,
        "output_norm": torch.zeros_like(entropy),
    }
    if contribution is not None:
        # ||W_h o||^2 = o^T (W_h^T W_h) o with the per-head Gram matrix G_h = W_h^T W_h  [H, D, D]
        head_out = torch.matmul(probs, contribution.values.float())  # [B, H, R, D]
        gram = torch.matmul(contribution.output_weight.float().transpose(1, 2), contribution.output_weight.float())
        squared = (torch.matmul(head_out, gram[None]) * head_out).sum(-1)
        per_row["output_norm"] = squared.clamp_min(0).sqrt()
    sums = {name: value.cpu().double().sum(dim=(0, 2)) for name, value in per_row.items()}
    return StatisticSums(sums, histogram, rows=batch * int(used.sum()))


def chunked_head_statistics(
    query: torch.Tensor,
    key: torch.Tensor,
    scaling: float,
    config: StatisticsConfig,
    chunk_rows: int = 256,
    contribution: HeadContribution | None = None,
) -> StatisticSums:
    """Causal-attention statistics from ``query``/``key`` ``[B, H, N, D]`` (keys already per query head).

    Rows are processed ``chunk_rows`` at a time: ``P = softmax(Q_rows K^T · scaling + causal)``, so at
    most ``B·H·chunk_rows·N`` attention weights exist at once.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    heads, length = query.shape[1], query.shape[2]
    total = StatisticSums.zeros(heads, config)
    keys = torch.arange(length, device=query.device)
    for start in range(0, length, chunk_rows):
        rows = keys[start : start + chunk_rows]
        scores = torch.matmul(query[:, :, rows].float(), key.float().transpose(-1, -2)) * scaling
        scores = scores.masked_fill(keys[None, :] > rows[:, None], float("-inf"))
        total.add(row_statistics(scores.softmax(-1), rows, config, contribution))
    return total


def means_from_sums(sums: StatisticSums) -> dict[str, torch.Tensor]:
    """Per-head means ``sum / rows`` of every statistic, and the argmax histogram as fractions."""
    rows = max(sums.rows, 1)
    means = {name: value / rows for name, value in sums.sums.items()}
    means["argmax_histogram"] = sums.histogram / sums.histogram.sum(-1, keepdim=True).clamp_min(1)
    return means

