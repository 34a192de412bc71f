"""One adversarial training step of the learned pruner, and the state it updates.

Step ``t`` (the frozen VLM never changes; only the pruner and the discriminator learn):

1. ``tau_t`` and the loss weights ``w_t`` from their schedules;
2. real branch: unpruned forward (no gradient); fake branch: soft-pruned forward with Gumbel noise;
3. generator (pruner) update on
   ``L_G = w_task CE + w_adv (-log D(fake)) + w_sparsity mean_i (log mean P_i - log rho_i)^2
   + w_count mean_{b,i} (log sum_j P_i(b, j) - log K_i)^2 + w_bin mean 2 min(q, 1-q)``
   with ``K_i = rho_i S`` and ``q = sigmoid(l)`` the noise-free keep probability;
4. discriminator update on ``L_D = -(log D(real) + log(1 - D(fake))) / 2`` with the fake states detached.

With the adversarial weight 0 throughout (the "task + sparsity only" ablation) neither the real branch
nor the discriminator runs.

All randomness of step ``t`` (data, Gumbel noise, discriminator noise) comes from generators seeded by
``(seed, t)``, so a run resumed from a checkpoint at step ``t`` continues exactly as an uninterrupted run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from llava.model.builder import load_pretrained_model
from llava.model.pre_llm import projected_features
from llava.model.tiny import build_tiny_llava, build_tiny_tokenizer
from llava.model.vision import image_features_per_image
from llava.pruning.learned.checkpoint import MODEL_KEY, model_record, pruner_config_dict
from llava.pruning.learned.heads import LayerSpecificPruner, PrunerConfig
from llava.pruning.learned.masks import hard_keep_mask
from llava.pruning.methods.learned import LearnedPruning
from llava.train.pruner.config import TrainConfig
from llava.train.pruner.data import PrunerBatch, training_batch
from llava.train.pruner.discriminator import Discriminator
from llava.train.pruner.losses import (
    binarization_loss,
    discriminator_accuracy,
    discriminator_loss,
    generator_adversarial_loss,
    sparsity_loss,
    task_loss,
    token_count_loss,
)
from llava.train.pruner.schedules import Ramp, annealed_temperature, cosine_weight

LOSS_NAMES = ("task", "adversarial", "sparsity", "token_count", "binarization")


@dataclass
class StageOutputs:
    """One forward of the frozen LM: ``stage_states[i]`` = hidden states at the end of stage ``i`` (input of
    the next pruning layer; the final normed states for the last stage); with the soft pruner also its
    keep logits ``l_i`` and cumulative keep probabilities ``P_i`` (``[B, S]``) per stage."""

    logits: torch.Tensor
    stage_states: list[torch.Tensor]
    stage_logits: list[torch.Tensor]
    cumulative_keep: list[torch.Tensor]


@torch.no_grad()
def multimodal_embeddings(llava, input_ids: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
    """Token embeddings with the projected image features in place of the image tokens (frozen model)."""
    embeds = llava.get_input_embeddings()(input_ids)
    features = projected_features(llava, pixel_values.to(embeds.device, embeds.dtype)).to(embeds.dtype)
    image_mask = (input_ids == llava.config.image_token_id)[..., None].expand_as(embeds)
    return embeds.masked_scatter(image_mask, features)


def stage_forward(
    llava, embeds: torch.Tensor, batch: PrunerBatch, pruning_layers: list[int], method: LearnedPruning | None
) -> StageOutputs:
    """The engine's forward over ``embeds``: unpruned (``method`` None, the real branch) or with the soft
    pruner (the fake branch); one decoder loop serves both and the hard-mask evaluation."""
    language_model = llava.language_model
    context = language_model.pruning(method) if method is not None else language_model.pruning_disabled()
    with context:
        out = language_model(
            inputs_embeds=embeds,
            attention_mask=batch.attention_mask,
            prune_span=batch.span,
            prune_query_index=batch.query_index,
            use_cache=False,
            output_hidden_states=True,
        )
    hidden = out.hidden_states  # [embeddings, output of layer 0, ..., final normed states]
    soft = language_model.pruning_state.soft_stages if method is not None else []
    return StageOutputs(
        logits=llava.lm_head(out.last_hidden_state),
        stage_states=[hidden[layer] for layer in pruning_layers[1:]] + [hidden[-1]],
        stage_logits=[selection.logits for _, selection, _ in soft],
        cumulative_keep=[cumulative for _, _, cumulative in soft],
    )


@dataclass
class TrainState:
    config: TrainConfig
    llava: Any
    tokenizer: Any
    pruner: LayerSpecificPruner
    discriminator: Discriminator
    pruner_optimizer: torch.optim.Optimizer
    discriminator_optimizer: torch.optim.Optimizer
    step: int = 0

    @property
    def span_length(self) -> int:
        return image_features_per_image(self.llava.config)

    @property
    def target_ratios(self) -> list[float]:
        return self.config.method_settings.target_ratios(self.span_length, self.llava.config.text_config.num_hidden_layers)

    @property
    def adversarial(self) -> bool:
        """Whether the adversarial loss is on at some step (else no real branch, no discriminator)."""
        return self.config.loss_weights.adversarial != Ramp(0.0, 0.0)

    def checkpoint(self) -> dict[str, Any]:
        """Everything needed to resume (see ``llava.pruning.learned.checkpoint``)."""
        return {
            "step": self.step,
            "train_config": asdict(self.config),
            "pruner_config": pruner_config_dict(self.pruner),
            "pruner": self.pruner.state_dict(),
            "discriminator": self.discriminator.state_dict(),
            "pruner_optimizer": self.pruner_optimizer.state_dict(),
            "discriminator_optimizer": self.discriminator_optimizer.state_dict(),
            MODEL_KEY: model_record(self.llava.config.text_config.hidden_size,
                                    self.llava.config.text_config.num_hidden_layers, self.span_length),
        }

    def restore(self, checkpoint: dict[str, Any]) -> None:
        if checkpoint["pruner_config"] != pruner_config_dict(self.pruner):
            raise ValueError(
                "the checkpoint's pruner architecture differs from the config: "
                f"{checkpoint['pruner_config']} != {pruner_config_dict(self.pruner)}"
            )
        self.pruner.load_state_dict(checkpoint["pruner"])
        self.discriminator.load_state_dict(checkpoint["discriminator"])
        self.pruner_optimizer.load_state_dict(checkpoint["pruner_optimizer"])
        self.discriminator_optimizer.load_state_dict(checkpoint["discriminator_optimizer"])
        self.step = checkpoint["step"]


def load_frozen_model(config: TrainConfig) -> tuple[Any, Any]:
    """``(tokenizer, llava)`` with every parameter frozen; ``model_overrides`` only apply to the tiny model."""
    if config.model_overrides:
        if config.model_path != "tiny-random-llava":
            raise ValueError("model_overrides only apply to model_path: tiny-random-llava")
        tokenizer, llava = build_tiny_tokenizer(), build_tiny_llava(seed=0, text_overrides=config.model_overrides)
    else:
        tokenizer, llava, _, _ = load_pretrained_model(config.model_path)
    llava.requires_grad_(False)
    return tokenizer, llava.to(config.device).eval()


def build_train_state(config: TrainConfig) -> TrainState:
    """Frozen model, fresh pruner and discriminator (seeded by ``config.seed``), their optimizers."""
    tokenizer, llava = load_frozen_model(config)
    settings = config.method_settings
    text_config = llava.config.text_config
    torch.manual_seed(config.seed)
    if max(settings.pruning_layers) >= text_config.num_hidden_layers or min(settings.pruning_layers) < 1:
        raise ValueError(
            f"method_settings.pruning_layers {settings.pruning_layers} must lie in [1, {text_config.num_hidden_layers - 1}] "
            f"for a model with {text_config.num_hidden_layers} layers"
        )
    pruner = LayerSpecificPruner(
        PrunerConfig(
            d_model=text_config.hidden_size,
            pruning_layers=list(settings.pruning_layers),
            hidden_dim=settings.head_hidden_dim,
            num_heads=settings.head_num_heads,
            use_attn_residual=settings.use_attn_residual,
            attn_residual_weight=settings.attn_residual_weight,
            learnable_attn_weight=settings.learnable_attn_weight,
        )
    )
    discriminator = Discriminator(
        text_config.hidden_size,
        len(settings.pruning_layers),
        hidden_dim=settings.discriminator_hidden_dim,
        use_spectral_norm=settings.use_spectral_norm,
    )
    return TrainState(
        config=config,
        llava=llava,
        tokenizer=tokenizer,
        pruner=pruner.to(config.device).train(),
        discriminator=discriminator.to(config.device).train(),
        pruner_optimizer=torch.optim.AdamW(pruner.parameters(), lr=config.training.lr_pruner),
        discriminator_optimizer=torch.optim.AdamW(discriminator.parameters(), lr=config.training.lr_discriminator),
    )


def step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    """Independent, reproducible random stream ``stream`` of step ``step``."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 8 + stream)


def text_after_image(batch: PrunerBatch) -> torch.Tensor:
    """``[B, N]`` bool: non-padding tokens after the image span (question and answer)."""
    positions = torch.arange(batch.input_ids.shape[1], device=batch.input_ids.device).expand_as(batch.input_ids)
    return batch.attention_mask.bool() & (positions >= batch.span[:, 1:])


def hard_keep_ratios(stage_logits: list[torch.Tensor]) -> list[float]:
    """Cumulative keep ratio the hard masks (``l > 0``) of these logits would give, per stage (a diagnostic:
    later stages of a real hard run see other hidden states)."""
    kept = torch.ones_like(stage_logits[0], dtype=torch.bool)
    ratios = []
    for logits in stage_logits:
        kept = kept & hard_keep_mask(logits.detach())
        ratios.append(float(kept.float().mean()))
    return ratios


def generator_losses(
    state: TrainState, batch: PrunerBatch, fake: StageOutputs, text_valid: torch.Tensor, step: int
) -> dict[str, torch.Tensor]:
    """Unweighted pruner losses of one step (see the module docstring)."""
    if state.adversarial:
        fake_scores = state.discriminator(fake.stage_states, text_valid, step_generator(state.config.seed, step, 1))
        adversarial = generator_adversarial_loss(fake_scores)
    else:
        adversarial = torch.zeros((), device=fake.logits.device)
    targets = state.target_ratios
    return {
        "task": task_loss(fake.logits, batch.labels),
        "adversarial": adversarial,
        "sparsity": sparsity_loss(fake.cumulative_keep, targets),
        "token_count": token_count_loss(fake.cumulative_keep, [ratio * state.span_length for ratio in targets]),
        "binarization": binarization_loss([torch.sigmoid(logits) for logits in fake.stage_logits]),
    }


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def discriminator_update(
    state: TrainState, real: StageOutputs, fake: StageOutputs, text_valid: torch.Tensor, step: int
) -> tuple[float, float]:
    """One discriminator step on real vs detached fake stage states; returns ``L_D`` and its accuracy."""
    noise = step_generator(state.config.seed, step, 2)
    real_scores = state.discriminator(real.stage_states, text_valid, noise)
    fake_scores = state.discriminator([s.detach() for s in fake.stage_states], text_valid, noise)
    loss = discriminator_loss(real_scores, fake_scores)
    optimizer_step(state.discriminator_optimizer, loss)
    return float(loss.detach()), discriminator_accuracy(real_scores.detach(), fake_scores.detach())


def train_step(state: TrainState) -> dict[str, Any]:
    """Run step ``state.step`` (generator then discriminator update), advance ``state.step``; return its metrics."""
    config, step = state.config, state.step
    ramp_steps = config.training.ramp_steps
    layers = list(config.method_settings.pruning_layers)
    batch = training_batch(
        config.data,
        step,
        config.training.batch_size,
        config.seed,
        state.tokenizer,
        state.llava.config.image_token_id,
        state.span_length,
        config.training.dataset_size,
    ).to(config.device)
    temperature = annealed_temperature(config.temperature, step, ramp_steps)
    weights = {name: cosine_weight(getattr(config.loss_weights, name), step, ramp_steps) for name in LOSS_NAMES}
    embeds = multimodal_embeddings(state.llava, batch.input_ids, batch.pixel_values)
    text_valid = text_after_image(batch)
    soft_pruner = LearnedPruning.from_pruner(state.pruner, temperature, step_generator(config.seed, step, 0))
    fake = stage_forward(state.llava, embeds, batch, layers, soft_pruner)
    losses = generator_losses(state, batch, fake, text_valid, step)
    total = sum(weights[name] * losses[name] for name in LOSS_NAMES)
    optimizer_step(state.pruner_optimizer, total)
    discriminator_total, discriminator_hits = None, None  # no discriminator in this run
    if state.adversarial:
        with torch.no_grad():
            real = stage_forward(state.llava, embeds, batch, layers, None)
        discriminator_total, discriminator_hits = discriminator_update(state, real, fake, text_valid, step)
    state.step += 1
    return {
        "step": step,
        "total": float(total.detach()),
        **{f"loss_{name}": float(value.detach()) for name, value in losses.items()},
        "loss_discriminator": discriminator_total,
        "discriminator_accuracy": discriminator_hits,
        "temperature": temperature,
        **{f"weight_{name}": value for name, value in weights.items()},
        "keep_ratio": {
            layer: float(keep.detach().mean()) for layer, keep in zip(layers, fake.cumulative_keep, strict=True)
        },
        "hard_keep_ratio": dict(zip(layers, hard_keep_ratios(fake.stage_logits), strict=True)),
        "residual_weight": state.pruner.residual_weights(),
    }
