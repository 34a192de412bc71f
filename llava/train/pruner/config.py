"""Training configuration of the learned pruner, read from YAML (``configs/vision_token_pruning.yaml``).

Every section is a dataclass; unknown keys and out-of-range values raise ``ValueError`` naming the
key and the valid range.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from llava.pruning.budget import geometric_keeps_for_budget
from llava.train.pruner.schedules import Ramp
from toolkit_common.typed_values import typed_field_value

TARGET_FIELDS = ("target_keep_ratio", "target_tokens", "visual_token_num")
DATA_SOURCES = ("synthetic", "shapes")


@dataclass
class MethodSettings:
    """The pruner and discriminator (``method_settings``).

    The targets, exactly one of: ``target_keep_ratio``: cumulative keep ratio after each pruning layer
    (``P_i`` target); ``target_tokens``: the same as token counts (``rho_i = K_i / S``);
    ``visual_token_num``: a budget of equivalent tokens, planned over the pruning layers as the
    evaluation plans it (``geometric_keeps_for_budget``: 64 over layers [2, 8, 16, 24] of 32 ->
    [113, 22, 4, 1]).
    """

    pruning_layers: list[int] = field(default_factory=lambda: [6, 12, 18])
    target_keep_ratio: list[float] | None = None
    target_tokens: list[int] | None = None
    visual_token_num: float | None = None
    use_attn_residual: bool = True
    attn_residual_weight: float | list[float] = 1.0
    learnable_attn_weight: bool = True
    head_hidden_dim: int = 128
    head_num_heads: int = 4
    discriminator_hidden_dim: int = 64
    use_spectral_norm: bool = True

    def __post_init__(self) -> None:
        given = [name for name in TARGET_FIELDS if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"method_settings: give exactly one of {', '.join(TARGET_FIELDS)}, got {given or 'none'}")
        if self.visual_token_num is not None:
            if self.visual_token_num <= 0:
                raise ValueError(f"method_settings.visual_token_num must be > 0, got {self.visual_token_num}")
            return
        targets = self.target_keep_ratio if self.target_keep_ratio is not None else self.target_tokens
        if len(targets) != len(self.pruning_layers):
            raise ValueError(
                f"method_settings: {len(targets)} targets for {len(self.pruning_layers)} pruning layers "
                f"{self.pruning_layers}: give one per layer"
            )
        if any(later > earlier for earlier, later in zip(targets, targets[1:], strict=False)):
            raise ValueError(f"method_settings: targets are cumulative and cannot grow, got {targets}")
        if self.target_keep_ratio is not None and not all(0.0 < r <= 1.0 for r in self.target_keep_ratio):
            raise ValueError(
                f"method_settings.target_keep_ratio values must lie in (0, 1], got {self.target_keep_ratio}"
            )
        if self.target_tokens is not None and not all(k >= 1 for k in self.target_tokens):
            raise ValueError(f"method_settings.target_tokens values must be >= 1, got {self.target_tokens}")

    def target_ratios(self, span_length: int, num_layers: int) -> list[float]:
        """Cumulative target keep ratio per pruning layer for a span of ``span_length`` tokens."""
        if self.target_keep_ratio is not None:
            return list(self.target_keep_ratio)
        tokens = self.target_tokens
        if self.visual_token_num is not None:
            tokens = geometric_keeps_for_budget("learned", self.visual_token_num, num_layers, span_length, self.pruning_layers)
        if max(tokens) > span_length:
            raise ValueError(f"method_settings.target_tokens {tokens} exceed the span of {span_length}")
        return [k / span_length for k in tokens]


@dataclass
class LossWeights:
    """Cosine ramps (``start`` -> ``end``) of the loss weights."""

    task: Ramp = field(default_factory=lambda: Ramp(1.0, 1.0))
    adversarial: Ramp = field(default_factory=lambda: Ramp(1.0, 10.0))
    sparsity: Ramp = field(default_factory=lambda: Ramp(10.0, 10.0))
    token_count: Ramp = field(default_factory=lambda: Ramp(0.0, 0.0))
    binarization: Ramp = field(default_factory=lambda: Ramp(0.0, 1.0))


@dataclass
class TrainingSettings:
    steps: int = 100
    batch_size: int = 2
    lr_pruner: float = 1e-3
    lr_discriminator: float = 1e-4
    checkpoint_every: int = 25
    schedule_steps: int | None = None
    """Steps over which temperature and loss weights ramp (default: ``steps``)."""
    dataset_size: int | None = None
    """Size of the synthetic training set (samples repeat); None: a fresh sample every time."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"training.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr_pruner", "lr_discriminator"):
            if getattr(self, name) <= 0:
                raise ValueError(f"training.{name} must be > 0, got {getattr(self, name)}")
        for name in ("schedule_steps", "dataset_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"training.{name} must be >= 1, got {getattr(self, name)}")

    @property
    def ramp_steps(self) -> int:
        return self.schedule_steps or self.steps


@dataclass
class TrainConfig:
    model_path: str = "tiny-random-llava"
    data: str = "synthetic"
    """``synthetic`` (random pixels, tests) or ``shapes`` (the shapes training split: one question per scene)."""
    output_dir: str = "checkpoints/learned_pruner"
    seed: int = 0
    device: str = "cpu"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    """Text-config overrides for the tiny model (e.g. ``num_hidden_layers``), tests only."""
    method_settings: MethodSettings = field(default_factory=lambda: MethodSettings(target_keep_ratio=[0.5, 0.25, 0.11]))
    temperature: Ramp = field(default_factory=lambda: Ramp(0.99, 0.4))
    loss_weights: LossWeights = field(default_factory=LossWeights)
    training: TrainingSettings = field(default_factory=TrainingSettings)

    def __post_init__(self) -> None:
        if self.data not in DATA_SOURCES:
            raise ValueError(f"data must be one of {', '.join(DATA_SOURCES)}, got {self.data!r}")
        if not 0 < self.temperature.end <= self.temperature.start:
            raise ValueError(f"temperature must anneal down to a positive value, got {self.temperature}")


def _build(cls: type, values: Any, where: str) -> Any:
    """Instantiate dataclass ``cls`` from a YAML mapping, recursing into dataclass-typed fields."""
    if not isinstance(values, dict):
        raise ValueError(f"{where} must be a mapping, got {values!r}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {where}; valid: {', '.join(sorted(known))}")
    nested = {
        "Ramp": Ramp,
        "MethodSettings": MethodSettings,
        "LossWeights": LossWeights,
        "TrainingSettings": TrainingSettings,
    }
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        type_name = str(known[name].type)
        if type_name in nested:
            kwargs[name] = _build(nested[type_name], value, f"{where}.{name}")
        else:
            kwargs[name] = typed_field_value(f"{where}.{name}", value, hints[name])
    try:
        return cls(**kwargs)
    except TypeError as error:
        raise ValueError(f"{where}: {error}") from error


def train_config_from_dict(values: dict[str, Any]) -> TrainConfig:
    return _build(TrainConfig, values, "config")


def apply_override(values: dict[str, Any], assignment: str) -> None:
    """Set ``section.key=value`` (the value read as YAML: ``false``, ``64``, ``[2, 8]``, ``{start: 0, end: 0}``)."""
    dotted, separator, text = assignment.partition("=")
    if not separator or not dotted:
        raise ValueError(f"override {assignment!r} must read KEY=VALUE, e.g. method_settings.use_spectral_norm=false")
    *sections, key = dotted.split(".")
    target = values
    for section in sections:
        target = target.setdefault(section, {})
        if not isinstance(target, dict):
            raise ValueError(f"override {assignment!r}: {section} is not a section")
    target[key] = yaml_value(text, f"override {assignment!r}")


def yaml_value(text: str, where: str) -> Any:
    """``text`` read as YAML; a one-line ``ValueError`` naming ``where`` and the place of a syntax error."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        place = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ValueError(f"{where}: invalid YAML{place} ({problem})") from None


def load_train_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read and validate a YAML training config, with ``section.key=value`` overrides applied first.

    An override of one budget field (``target_keep_ratio``, ``target_tokens``, ``visual_token_num``) drops
    the others the file sets."""
    values = yaml_value(Path(path).read_text(encoding="utf-8"), "the file") or {}
    if not isinstance(values, dict):
        raise ValueError(f"the file must hold a mapping of sections (model_path: ..., training: ...), got a {type(values).__name__}")
    for assignment in overrides or []:
        dotted = assignment.partition("=")[0]
        if dotted.startswith("method_settings.") and dotted.removeprefix("method_settings.") in TARGET_FIELDS:
            for name in TARGET_FIELDS:
                values.get("method_settings", {}).pop(name, None)
        apply_override(values, assignment)
    return train_config_from_dict(values)
