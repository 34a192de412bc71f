"""What a pruned prefill did: kept tokens per stage and per sample, token counts, equivalent tokens.

The engine records while the prefill runs, so a record holds what the selection computed as it is: tensors on
their device (detached), the selection's stopwatch (``toolkit_common.stopwatch``); nothing is copied to the
host or synchronised there. The conversions happen when a reader asks: ``StageRecord.metadata`` (tensors as
lists), ``kept_counts``, ``selection_ms`` (CUDA: waits for the selection's end event), ``summary``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from llava.pruning.budget import equivalent_tokens
from llava.pruning.selection import MetadataView
from toolkit_common.stopwatch import Stopwatch


@dataclass
class StageRecord(MetadataView):
    """One pruning boundary: before ``layer`` the span shrank to ``kept_index.shape[1]`` slots.

    ``kept_index``: ``[B, R]`` positions in the *unpruned* input of the span tokens kept;
    ``kept_valid``: ``[B, R]`` bool when samples keep different counts (False = padding slot), else None;
    ``scores``: ``[B, S]`` the method's per-token scores over the live span (may be empty);
    all three on the device the selection ran on.
    ``device_metadata``: the selection's metadata as recorded (tensors on their device); ``metadata`` reads it
    as Python values (``llava.pruning.selection.host_values``).
    ``stopwatch``: the time spent choosing (scoring + top-k), read as ``selection_ms`` for overhead reports.
    """

    layer: int
    kept_index: torch.Tensor
    scores: torch.Tensor
    device_metadata: dict
    stopwatch: Stopwatch
    kept_valid: torch.Tensor | None = None

    @property
    def selection_ms(self) -> float:
        """Milliseconds the selection took (on CUDA the GPU time between its events, read now)."""
        return self.stopwatch.elapsed_ms

    @property
    def kept_counts(self) -> list[int]:
        """Span tokens each sample kept."""
        if self.kept_valid is None:
            return [self.kept_index.shape[1]] * self.kept_index.shape[0]
        return self.kept_valid.sum(dim=1).tolist()

    def summary(self) -> dict:
        """The boundary's layer, span tokens kept from it on and, for merging methods, how many of them are
        merged tokens (SparseVLM's cluster tokens)."""
        kept = self.kept_counts
        summary = {"layer": self.layer, "kept": kept[0] if len(set(kept)) == 1 else kept}
        metadata = self.metadata
        if "cluster_tokens" in metadata:
            summary["merged"] = metadata["cluster_tokens"]
        return summary

    def kept_positions(self, sample: int) -> torch.Tensor:
        """``[R_b]`` positions in the unpruned input of the span tokens sample ``sample`` kept."""
        row = self.kept_index[sample]
        return row if self.kept_valid is None else row[self.kept_valid[sample]]


@dataclass
class PruningRecord:
    method: str
    span: torch.Tensor  # [B, 2] (start, end) in the unpruned input, on the prefill's device
    num_layers: int
    stages: list[StageRecord] = field(default_factory=list)
    params: dict = field(default_factory=dict)  # the method's parameters (the authors' setting, e.g. presets)

    @property
    def span_length(self) -> int:
        return int((self.span[0, 1] - self.span[0, 0]).item())

    @property
    def batch_size(self) -> int:
        return self.span.shape[0]

    def sample_span_per_layer(self, sample: int) -> list[int]:
        """Span tokens each layer processed for one sample."""
        per_layer = [self.span_length] * self.num_layers
        for stage in self.stages:
            kept = stage.kept_counts[sample]
            for i in range(stage.layer, self.num_layers):
                per_layer[i] = kept
        return per_layer

    @property
    def span_per_layer(self) -> list[float]:
        """Span tokens each layer processed (mean over the batch when samples differ)."""
        rows = [self.sample_span_per_layer(b) for b in range(self.batch_size)]
        means = [sum(column) / len(column) for column in zip(*rows, strict=True)]
        return [int(m) if float(m).is_integer() else round(m, 2) for m in means]

    @property
    def equivalent_tokens(self) -> float:
        return equivalent_tokens(self.span_per_layer)

    @property
    def selection_ms(self) -> float:
        return sum(stage.selection_ms for stage in self.stages)

    def sample_kept_stages(self, sample: int) -> list[dict]:
        """Per stage ``{"layer", "kept"}`` of one sample: the layer the stage applies from and the span tokens it
        kept, as offsets in the sample's span (image patch indices for an image span), sorted."""
        start = int(self.span[sample, 0])
        return [{"layer": int(stage.layer), "kept": sorted((stage.kept_positions(sample) - start).tolist())}
                for stage in self.stages]

    def kept_mask(self, seq_len: int) -> torch.Tensor:
        """``[B, N]`` bool over the unpruned input: False for span tokens dropped by the last stage."""
        batch = self.span.shape[0]
        positions = torch.arange(seq_len, device=self.span.device).expand(batch, -1)
        in_span = (positions >= self.span[:, :1]) & (positions < self.span[:, 1:])
        keep = ~in_span
        if not self.stages:
            return keep | in_span
        last = self.stages[-1]
        kept = torch.zeros_like(keep).scatter(1, last.kept_index.to(keep.device), True)
        if last.kept_valid is not None:
            kept = torch.zeros_like(keep).scatter(
                1, last.kept_index.to(keep.device), last.kept_valid.to(keep.device)
            )
        return keep | kept

    def summary(self, sample: int | None = None) -> dict:
        """JSON-friendly summary (for answers' metadata and result tables); one sample's when given."""
        per_layer = self.span_per_layer if sample is None else self.sample_span_per_layer(sample)
        return {
            "method": self.method,
            "span_length": self.span_length,
            "kept_per_layer": per_layer,
            "equivalent_tokens": round(equivalent_tokens(per_layer), 2),
            "selection_ms": round(self.selection_ms, 3),
            "params": self.params,
            "stages": [stage.summary() for stage in self.stages],
        }
