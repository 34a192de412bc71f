"""Head classification (``head_classification.json``): labels per (layer, query head) and checks.

Labels: ``positional`` (attention stays on sinks + a small recent window), ``gathering`` (reads
content anywhere in the context) and ``dead`` (near-uniform attention or negligible output).
On GQA models a KV head ("group") is *windowable* when every live query head reading it is positional,
and *removable* when all of them are dead.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from kvcompress.adapters import ModelShape, adapter_for

LABELS = ("positional", "gathering", "dead")


def validate_heads(shape: ModelShape, heads: Iterable[tuple[int, int]], kind: str = "query") -> list[tuple[int, int]]:
    """Check ``(layer, head)`` ids against a model shape; ``kind`` is ``query`` or ``kv``.

    Raises ``ValueError`` naming the bad ids and the valid ranges.
    """
    limit = shape.num_query_heads if kind == "query" else shape.num_kv_heads
    heads = [(int(layer), int(head)) for layer, head in heads]
    bad = [(layer, head) for layer, head in heads if not (0 <= layer < shape.num_layers and 0 <= head < limit)]
    if bad:
        raise ValueError(f"unknown {kind} head ids {bad}: the model has layers 0..{shape.num_layers - 1} and "
                         f"{kind} heads 0..{limit - 1}")
    return heads


CLASSIFICATION_HINT = "scripts/analyze_attention.py writes one; docs/kvcompress_results/ holds those of the shipped runs"


@dataclass
class HeadClassification:
    """Labels ``labels[layer][query_head]`` for a model of shape ``shape``, with how they were obtained."""

    shape: ModelShape
    labels: list[list[str]]
    classifier: str
    parameters: dict = field(default_factory=dict)
    scores: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.labels) != self.shape.num_layers or any(
                len(row) != self.shape.num_query_heads for row in self.labels):
            raise ValueError("labels must be a num_layers x num_query_heads table")
        unknown = {label for row in self.labels for label in row} - set(LABELS)
        if unknown:
            raise ValueError(f"unknown head labels {sorted(unknown)}; valid: {list(LABELS)}")

    def heads_labelled(self, label: str) -> list[tuple[int, int]]:
        """All ``(layer, query_head)`` with this label."""
        return [(layer, head) for layer, row in enumerate(self.labels) for head, lab in enumerate(row) if lab == label]

    def kv_groups_where(self, all_of: set[str], any_of: set[str]) -> list[tuple[int, int]]:
        """KV groups whose query heads all have labels in ``all_of`` and at least one in ``any_of``."""
        groups = []
        for layer, row in enumerate(self.labels):
            for kv in range(self.shape.num_kv_heads):
                labels = {row[head] for head in self.shape.query_heads_of(kv)}
                if labels <= all_of and labels & any_of:
                    groups.append((layer, kv))
        return groups

    def windowable_kv_groups(self) -> list[tuple[int, int]]:
        """KV groups that may keep only sinks + window: all their live query heads are positional."""
        return self.kv_groups_where({"positional", "dead"}, {"positional"})

    def counts(self) -> dict[str, int]:
        return {label: len(self.heads_labelled(label)) for label in LABELS}

    def check_model(self, model: nn.Module) -> None:
        """Raise ``ValueError`` when this classification was made for a model of another shape."""
        self.check_shape(adapter_for(model).model_shape(model))

    def check_shape(self, shape: ModelShape) -> None:
        """Raise ``ValueError`` when ``shape`` is not the shape this classification was made for."""
        if shape != self.shape:
            raise ValueError(f"head classification is for a model of shape {self.shape.as_dict()}, "
                             f"but this model has {shape.as_dict()}")

    def to_dict(self) -> dict:
        return {"shape": self.shape.as_dict(), "classifier": self.classifier, "parameters": self.parameters,
                "counts": self.counts(), "labels": self.labels, "scores": self.scores}

    @classmethod
    def from_dict(cls, data: dict) -> HeadClassification:
        return cls(ModelShape(**data["shape"]), data["labels"], data.get("classifier", "unknown"),
                   data.get("parameters", {}), data.get("scores", {}))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> HeadClassification:
        """The classification saved at ``path``; a one-line ``ValueError`` naming the file when it is not one."""
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"{path}: not a head classification ({type(error).__name__}: {error}); {CLASSIFICATION_HINT}") from None
